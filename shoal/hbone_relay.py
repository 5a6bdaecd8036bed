"""The two-way relay between two sides of a proxied connection, and the TCP side.

Everything is asyncio *protocols* (callbacks), not streams: a relay moves
each received chunk straight to the other side's transport, with no per-byte
Python work and no copies beyond the kernel's. Backpressure: when one side
cannot take more, the other side stops reading (`pause_writing` ->
`pause_reading`).

A side (`Side`) offers write / write_eof / abort / pause_reading /
resume_reading to its peer. `TcpSide` is one TCP connection, and keeps its
own little state here (held bytes before attach, which half is done). The
HBONE side (`shoal.hbone_io.TunnelStream`) is one CONNECT stream; its tunnel
rules (half-close, reset, window backpressure, credit withheld from a slow
reader, bytes held before attach) are the sans-IO core's, `shoal.hbone`.
Half-close travels as write_eof, an abort as RST (SO_LINGER 0).
"""

from __future__ import annotations

import asyncio
import socket
import struct

from shoal import relay_lane

WRITE_HIGH_WATER = 1 << 20   # bytes buffered in a transport before its source pauses
WRITE_LOW_WATER = 256 << 10


class Side:
    """The interface one relay side offers the other."""

    peer: "Side | None" = None
    bytes_received = 0   # read from this side (and passed to the peer)
    bytes_sent = 0       # written to this side

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def _rst(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class TcpSide(relay_lane.TcpSideBase, asyncio.Protocol, Side):
    """One TCP connection. Reads are held (buffered, reading paused) until attach().

    A read bound for an HBONE tunnel takes the compiled lane when it is on (`shoal.relay_lane`) and the
    read is the plain case of one DATA frame; `_data_received_python` is the path for everything else."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self._held: list[bytes] = []
        self._held_eof = False
        self._read_done = False
        self._write_done = False
        self._paused_by_peer = False
        self.reset = False           # ended by an RST (ours or theirs)
        self.closed = asyncio.get_running_loop().create_future()

    # asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.peer is None:
            transport.pause_reading()

    def _data_received_python(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.peer is None:
            self._held.append(data)
            self.transport.pause_reading()
        else:
            self.peer.write(data)

    if not relay_lane.COMPILED:
        data_received = _data_received_python

    def eof_received(self) -> bool:
        self._read_done = True
        if self.peer is None:
            self._held_eof = True
        else:
            self.peer.write_eof()
        if self._write_done:
            return False  # both directions done: let asyncio close
        return True  # keep the write half open (half-close)

    def connection_lost(self, exc) -> None:
        clean = exc is None and self._read_done
        if not clean:
            self.reset = True
            if self.peer is not None:
                self.peer.abort()
        elif self.peer is not None and not self._write_done:
            # We closed after both halves were done, or the peer closed first
            self.peer.write_eof()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    # Side, for the peer ---------------------------------------------------------------

    def attach(self, peer: Side) -> None:
        self.peer = peer
        for data in self._held:
            peer.write(data)
        self._held.clear()
        if self.reset:  # the connection was reset before it had a peer: pass that on
            peer.abort()
        elif self._held_eof:
            peer.write_eof()
        elif self.transport is not None and not self._paused_by_peer and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        # The lane does the same in C (_relay.c write_to_app) when this side's transport is native.
        if self.transport is None or self.transport.is_closing():
            return
        self.bytes_sent += len(data)
        self.transport.write(data)

    def write_eof(self) -> None:
        if self._write_done or self.transport is None or self.transport.is_closing():
            return
        self._write_done = True
        if self._read_done:
            self.transport.close()
        elif self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def abort(self) -> None:
        self.reset = True
        if self.transport is not None and not self.transport.is_closing():
            _rst(self.transport)

    def pause_reading(self) -> None:
        self._paused_by_peer = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused_by_peer = False
        if self.transport is not None and not self.transport.is_closing() and self.peer is not None:
            self.transport.resume_reading()


# With native transports, the lane does TcpSide.write in C for this class (and only this one).
relay_lane.write_natively(TcpSide)


async def relay(a: Side, b: Side) -> None:
    """Joins two sides and waits until both are closed."""
    a.peer, b.peer = b, a
    # attach() flushes what each side held before it had a peer.
    for side, peer in ((a, b), (b, a)):
        attach = getattr(side, "attach", None)
        if attach is not None:
            attach(peer)
    await asyncio.gather(a.closed, b.closed)
