"""The native transports hand their reads to the compiled lane in C (NativeApi.set_reader): the read's buffer
is lent, no bytes object is made, unless the protocol's data_received is not the lane's or the read takes
the Python path. Whole tunnels through it are tested in test_hbone_io.py (native and loop transports)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from shoal import native_io, relay_lane
from shoal.hbone_relay import TcpSide
from support.polling import eventually_async

pytestmark = pytest.mark.skipif(not relay_lane.NATIVE, reason="the native transports are not in use here "
                                f"(SHOAL_RELAY={relay_lane.NAME}; scripts/setup.sh builds them)")


def run(coro):
    return uvloop.run(asyncio.wait_for(coro, 30))


async def native_side(protocol_factory):
    """(the protocol on a native TCP transport, reading, and the plain socket at the other end). A TcpSide
    waits for its tunnel before it reads; these are read from at once."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        far = socket.create_connection(listener.getsockname())
        near, _ = listener.accept()
    far.setblocking(False)
    transport, protocol = await native_io.open_tcp(protocol_factory, near, accepted=True)
    assert isinstance(transport, native_io._native.Transport)
    transport.resume_reading()
    return protocol, far


class OwnReader(TcpSide):
    """A TcpSide whose data_received is its own: the lane must not read for it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.reads.append(data)


def test_a_protocol_that_overrides_data_received_gets_every_read_itself():
    async def main():
        side, far = await native_side(OwnReader)
        far.sendall(b"first")
        await eventually_async(lambda: b"".join(side.reads) == b"first", timeout=10)
        far.sendall(b"second")
        await eventually_async(lambda: b"".join(side.reads) == b"firstsecond", timeout=10)
        side.transport.close()
        far.close()
    run(main())


def test_a_read_the_lane_declines_reaches_the_python_path_as_bytes_of_its_own():
    """A TcpSide not joined to a tunnel yet holds what it reads (TcpSide._data_received_python): the held
    bytes are a copy, intact after the transport's buffer has carried later reads."""
    async def main():
        side, far = await native_side(TcpSide)
        far.sendall(b"early bytes")
        await eventually_async(lambda: side._held == [b"early bytes"], timeout=10)
        assert type(side._held[0]) is bytes and not side.transport.is_reading()
        other, other_far = await native_side(TcpSide)
        other_far.sendall(b"x" * 4096)
        await eventually_async(lambda: other._held == [b"x" * 4096], timeout=10)
        assert side._held == [b"early bytes"] and side.bytes_received == len(b"early bytes")
        for s in (side, other):
            s.transport.close()
        far.close()
        other_far.close()
    run(main())


class Reentrant(TcpSide):
    """Declined by the lane (no tunnel): its Python path starts another transport's read from within."""

    def __init__(self) -> None:
        super().__init__()
        self.other = None
        self.other_reads_during: list[bytes] | None = None

    def _data_received_python(self, data: bytes) -> None:
        super()._data_received_python(data)
        self.other.transport.resume_reading()   # for TCP: the reader registered, no read yet
        self.other.transport._on_readable()     # as the loop would call it
        self.other_reads_during = list(self.other.reads)


def test_a_read_begun_while_the_lanes_buffer_is_lent_waits_for_the_loops_next_pass():
    """The transports share one read buffer, lent to the lane for its call: a read of another transport
    begun from within it must not land in that buffer then; it is made on the loop's next pass."""
    async def main():
        side, far = await native_side(Reentrant)
        other, other_far = await native_side(OwnReader)
        other.transport.pause_reading()
        other_far.sendall(b"the other's bytes")
        side.other = other
        far.sendall(b"this side's bytes")
        await eventually_async(lambda: side.other_reads_during is not None, timeout=10)
        assert side.other_reads_during == [] and side._held == [b"this side's bytes"]
        await eventually_async(lambda: b"".join(other.reads) == b"the other's bytes", timeout=10)
        for s in (side, other):
            s.transport.close()
        far.close()
        other_far.close()
    run(main())
