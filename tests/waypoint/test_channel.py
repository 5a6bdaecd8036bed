"""waypoint.channel.Channel: the reader waits for bytes, the end, or a reset, and one reader waits at a time."""

import asyncio

import pytest

from shoal.hbone_relay import Side

from waypoint.channel import Channel, ChannelReset


class Peer(Side):
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_a_waiting_reader_gets_bytes_then_the_end():
    async def go():
        channel = Channel(Peer())
        reading = asyncio.ensure_future(channel.read())
        await asyncio.sleep(0)
        assert not reading.done()
        channel.write(b"abc")
        channel.write(b"def")   # both arrive before the reader runs: one read takes both
        assert await reading == b"abcdef"
        later = asyncio.ensure_future(channel.read())
        await asyncio.sleep(0)
        channel.write_eof()
        assert await later == b""
    asyncio.run(go())


def test_a_reset_wakes_the_reader_with_an_error_and_a_timed_out_read_can_be_retried():
    async def go():
        channel = Channel(Peer())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(channel.read(), 0.01)
        reading = asyncio.ensure_future(channel.read())   # the timed-out wait left no reader behind
        await asyncio.sleep(0)
        channel.abort()
        with pytest.raises(ChannelReset):
            await reading
    asyncio.run(go())


def test_a_second_reader_is_refused_not_left_hanging():
    async def go():
        channel = Channel(Peer())
        first = asyncio.ensure_future(channel.read())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one reader at a time"):
            await channel.read()
        channel.write(b"x")
        assert await first == b"x"
    asyncio.run(go())
