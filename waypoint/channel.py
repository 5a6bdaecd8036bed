"""A byte channel over one relay side (an HBONE stream or a TCP connection), for code that reads.

`shoal.hbone_io` moves bytes between two `Side`s with callbacks. The HTTP
proxy needs to *read* (parse, decide, then write), so a `Channel` is a Side
that buffers what its peer delivers and offers `await read()`; `send()`,
`end()` and `reset()` act on the peer. Backpressure both ways: past
`HIGH_WATER` buffered bytes the peer is paused (for an HBONE stream: no more
flow-control credit), and `drain()` waits while the peer cannot take more.
"""

from __future__ import annotations

import asyncio

from shoal.hbone_relay import Side

from waypoint.errors import UpstreamFailed

HIGH_WATER = 1 << 20


class ChannelReset(UpstreamFailed):
    def __init__(self, message: str = "the connection was reset by the peer") -> None:
        super().__init__(message, kind="reset", flag="UC")


class Channel(Side):
    def __init__(self, other: Side) -> None:
        self.peer = other
        # An HBONE stream's plain case (one DATA frame, both send windows open) is sent in C by the relay
        # lane (shoal/_relay.c); None when the peer is not a tunnel stream or the lane is off.
        self._send_plain = getattr(other, "_write_plain", None)
        self.bytes_received = 0
        self.bytes_sent = 0
        self._buffer = bytearray()
        self._eof = False
        self.was_reset = False
        # One future at a time for the reader, made only when it must wait: cheaper per message than an
        # asyncio.Event (no loop check, no waiter list) on a path taken for every request and response.
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.Future | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused_peer = False
        self.closed = self._loop.create_future()
        # An upstream HTTP/1.1 connection's response reader, kept for its next answer (waypoint.exchange).
        self.response_reader = None
        attach = getattr(other, "attach", None)
        if attach is not None:
            attach(self)   # flushes whatever the other side held before it had a peer

    # Side: called by the other side ---------------------------------------------------

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def write(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self._buffer += data
        self._wake_reader()
        if len(self._buffer) > HIGH_WATER and not self._paused_peer:
            self._paused_peer = True
            self.peer.pause_reading()

    def write_eof(self) -> None:
        self._eof = True
        self._wake_reader()
        self._done()

    def abort(self) -> None:
        self.was_reset = True
        self._wake_reader()
        self._writable.set()
        self._done()

    def pause_reading(self) -> None:
        self._writable.clear()

    def resume_reading(self) -> None:
        self._writable.set()

    def _done(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # for the proxy ----------------------------------------------------------------------

    async def read(self) -> bytes:
        """What arrived (at least one byte), or b"" at the end; ChannelReset if reset."""
        while not self._buffer and not self._eof and not self.was_reset:
            if self._reader is not None:
                raise RuntimeError("a Channel has one reader at a time; another read() is waiting on it")
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            if self._paused_peer:
                self._paused_peer = False
                self.peer.resume_reading()
            return data
        if self.was_reset:
            raise ChannelReset()
        return b""

    def unread(self, data: bytes) -> None:
        """Puts bytes back in front (after sniffing the protocol)."""
        if data:
            self._buffer[:0] = data
            self._wake_reader()

    @property
    def idle_usable(self) -> bool:
        """Still open both ways with nothing unread: can carry another request."""
        return not self._eof and not self.was_reset and not self._buffer

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def send(self, data: bytes) -> None:
        if data and not self.was_reset:
            self.bytes_sent += len(data)
            if self._send_plain is None or not self._send_plain(data):
                self.peer.write(data)

    @property
    def writable(self) -> bool:
        """The peer takes more now: `drain()` would not wait (asked first where a message is relayed, so
        that no coroutine is made per message for a drain that has nothing to wait for)."""
        return self._writable.is_set()

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def end(self) -> None:
        if not self.was_reset:
            self.peer.write_eof()

    def reset(self) -> None:
        if not self.was_reset:
            self.was_reset = True
            self.peer.abort()
            self._wake_reader()
            self._done()
