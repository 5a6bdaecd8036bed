"""HBONE over asyncio: the thin driver around `shoal.hbone`.

`HboneSession` is one HBONE connection (TLS underneath, done by asyncio),
client or server side; `TunnelStream` is one of its CONNECT streams as a
relay side (`shoal.hbone_relay`), so `relay(TcpSide, TunnelStream)` carries
an app's TCP connection through a tunnel. For a stream, "stop reading" means
"stop returning flow-control credit to the peer": a slow reader runs the
sender out of window instead of growing buffers. Half-close travels as
write_eof <-> END_STREAM; an abort as RST (SO_LINGER 0) <-> RST_STREAM.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Awaitable, Callable

from shoal import hbone, log
from shoal.hbone_relay import WRITE_HIGH_WATER, WRITE_LOW_WATER, Side

logger = log.get("shoal.hbone")


class RelayError(hbone.HboneError):
    """A tunnel could not be opened or broke; the message says what to check."""

    response_flag = "UF"


class TunnelRefused(RelayError):
    def __init__(self, status: int, reason: str):
        super().__init__(f"the destination's ztunnel refused the tunnel with {status}"
                         + (f": {reason}" if reason else ""))
        self.status = status
        self.reason = reason
        self.response_flag = "UAEX" if status in (401, 403) else "UF"


class TunnelBroken(RelayError):
    pass


class TunnelStream(Side):
    """One CONNECT stream of an HboneSession, as a relay side."""

    def __init__(self, session: "HboneSession", stream_id: int, authority: str) -> None:
        self.session = session
        self.stream_id = stream_id
        self.authority = authority
        self.peer = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self._out: bytearray = bytearray()    # accepted from the peer, waiting for window
        self._eof_pending = False
        self._held: list[tuple[bytes, int]] = []  # received before attach (not yet credited)
        self._held_eof = False
        self._unacked = 0
        self._paused = False
        self._window_blocked = False
        self.remote_ended = False
        self.local_ended = False
        self.reset = False
        self.closed = asyncio.get_running_loop().create_future()

    # from the session ---------------------------------------------------------------

    def _on_data(self, data: bytes, credit: int) -> None:
        self.bytes_received += len(data)
        if self.peer is None:
            self._held.append((data, credit))
            return
        self.peer.write(data)
        if self._paused:
            self._unacked += credit
        else:
            self.session.conn.consumed(self.stream_id, credit)

    def _on_end(self) -> None:
        self.remote_ended = True
        if self.peer is None:
            self._held_eof = True
        else:
            self.peer.write_eof()
        self._maybe_done()

    def _on_reset(self) -> None:
        self.reset = True
        if self.peer is not None:
            self.peer.abort()
        self._finish()

    def _on_window(self) -> None:
        if self._out:
            taken = self._send(bytes(self._out))
            del self._out[:taken]
        if not self._out:
            if self._eof_pending:
                self._eof_pending = False
                self._end_now()
            if self._window_blocked:
                self._window_blocked = False
                if self.peer is not None and not self.session.writing_paused:
                    self.peer.resume_reading()

    def _send(self, data) -> int:
        try:
            return self.session.conn.send(self.stream_id, data)
        except hbone.StreamNotOpen:
            return len(data)  # the stream is gone; drop (a reset is on its way)

    def _end_now(self) -> None:
        try:
            self.session.conn.end(self.stream_id)
        except hbone.StreamNotOpen:
            pass
        self.local_ended = True
        self.session.flush()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.local_ended and self.remote_ended:
            self._finish()

    def _finish(self) -> None:
        self.session.streams.pop(self.stream_id, None)
        if not self.closed.done():
            self.closed.set_result(None)
        self.session._stream_finished()

    # Side -------------------------------------------------------------------------------

    def attach(self, peer: Side) -> None:
        self.peer = peer
        for data, credit in self._held:
            peer.write(data)
            self.session.conn.consumed(self.stream_id, credit)
        self._held.clear()
        if self.reset:  # reset by the peer before the relay started
            peer.abort()
        elif self._held_eof:
            peer.write_eof()
        self.session.flush()

    def write(self, data: bytes) -> None:
        if self.reset or self.local_ended:
            return
        self.bytes_sent += len(data)
        if self._out:
            self._out += data
        else:
            taken = self._send(data)
            if taken < len(data):
                self._out += memoryview(data)[taken:]
        if self._out and not self._window_blocked:
            self._window_blocked = True
            if self.peer is not None:
                self.peer.pause_reading()
        self.session.flush()

    def write_eof(self) -> None:
        if self.local_ended or self.reset:
            return
        if self._out:
            self._eof_pending = True
        else:
            self._end_now()

    def abort(self) -> None:
        if self.reset:
            return
        self.reset = True
        self.session.conn.reset(self.stream_id)
        self.session.flush()
        self._finish()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        if self._unacked:
            self.session.conn.consumed(self.stream_id, self._unacked)
            self._unacked = 0
            self.session.flush()


RequestHandler = Callable[["HboneSession", TunnelStream], Awaitable[None]]


class HboneSession(asyncio.Protocol):
    """One HBONE connection (TLS underneath, handled by asyncio), client or server side."""

    def __init__(self, client: bool, settings: hbone.Settings = hbone.Settings(), *,
                 on_request: RequestHandler | None = None, name: str = "") -> None:
        self.conn = hbone.HboneClient(settings) if client else hbone.HboneServer(settings)
        self.client = client
        self.on_request = on_request
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, TunnelStream] = {}
        self._waiting: dict[int, asyncio.Future] = {}
        self.writing_paused = False
        self.closing = False     # GOAWAY seen or sent: no new streams
        self.lost = asyncio.get_running_loop().create_future()
        self.last_active = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self.peer_address: tuple | None = None
        self.ssl_object = None

    # asyncio -------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(4 * WRITE_HIGH_WATER, WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # small request/response messages must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.peer_address = transport.get_extra_info("peername")
        self.ssl_object = transport.get_extra_info("ssl_object")
        self.conn.initiate()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except hbone.ProtocolViolation as e:
            logger.warning("hbone peer broke the protocol", peer=self.peer_address, error=str(e))
            self.flush()
            self._teardown(TunnelBroken(f"peer broke HTTP/2: {e}"))
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            cls = ev.__class__
            if cls is hbone.DataReceived:
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    stream._on_data(ev.data, ev.flow_controlled_length)
                else:
                    self.conn.consumed(ev.stream_id, ev.flow_controlled_length)
            elif cls is hbone.WindowOpened:
                if ev.stream_id:
                    stream = self.streams.get(ev.stream_id)
                    if stream is not None:
                        stream._on_window()
                else:
                    for stream in list(self.streams.values()):
                        stream._on_window()
            elif cls is hbone.StreamEnded:
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    stream._on_end()
            elif cls is hbone.StreamReset:
                self._resolve(ev.stream_id, TunnelBroken(f"tunnel reset by the peer (HTTP/2 error {ev.error_code})"))
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    stream._on_reset()
            elif cls is hbone.ConnectRequested:
                self._on_connect_requested(ev)
            elif cls is hbone.ConnectAccepted:
                self._resolve(ev.stream_id, None)
            elif cls is hbone.ConnectRefused:
                self._resolve(ev.stream_id, TunnelRefused(ev.status, ev.reason))
                self.streams.pop(ev.stream_id, None)
            elif cls is hbone.ConnectionClosed:
                self.closing = True
                for sid in [s for s in self.streams if s > ev.last_stream_id and self.client]:
                    self.streams[sid]._on_reset()
        self.last_active = time.monotonic()
        self.flush()

    def connection_lost(self, exc) -> None:
        self._teardown(TunnelBroken(f"HBONE connection lost: {exc or 'closed by peer'}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True
        for stream in self.streams.values():
            if stream.peer is not None:
                stream.peer.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        for stream in self.streams.values():
            if stream.peer is not None and not stream._window_blocked:
                stream.peer.resume_reading()

    # the driver ---------------------------------------------------------------------------

    def flush(self) -> None:
        chunks = self.conn.chunks_to_send()
        if chunks and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)

    def _resolve(self, stream_id: int, error: Exception | None) -> None:
        waiter = self._waiting.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _teardown(self, error: Exception) -> None:
        self.closing = True
        for sid in list(self._waiting):
            self._resolve(sid, error)
        for stream in list(self.streams.values()):
            stream._on_reset()

    def _stream_finished(self) -> None:
        self.last_active = time.monotonic()

    def _on_connect_requested(self, ev: hbone.ConnectRequested) -> None:
        stream = TunnelStream(self, ev.stream_id, ev.authority)
        self.streams[ev.stream_id] = stream
        if self.on_request is None:
            self.conn.refuse(ev.stream_id, 503, "this endpoint accepts no tunnels")
            self.streams.pop(ev.stream_id, None)
            return
        task = asyncio.get_running_loop().create_task(self.on_request(self, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # commands for handlers and clients -------------------------------------------------

    def accept(self, stream: TunnelStream) -> None:
        if stream.reset:
            raise TunnelBroken("the client reset the tunnel before it was accepted")
        try:
            self.conn.accept(stream.stream_id)
        except hbone.HboneError as e:
            raise TunnelBroken(f"cannot accept the tunnel: {e}") from None
        self.flush()

    def refuse(self, stream: TunnelStream, status: int, reason: str) -> None:
        self.conn.refuse(stream.stream_id, status, reason)
        self.streams.pop(stream.stream_id, None)
        if not stream.closed.done():
            stream.closed.set_result(None)
        self.flush()

    @property
    def available(self) -> bool:
        """Can another stream be opened on this connection now?"""
        return (not self.closing and self.transport is not None and not self.transport.is_closing()
                and self.conn.open_streams < self.conn.peer_max_concurrent_streams)

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    async def open(self, authority: str, timeout: float = 10.0) -> TunnelStream:
        """Opens a CONNECT stream and waits for the 200; raises RelayError subclasses."""
        if not self.available:
            raise hbone.StreamLimitReached("no stream available on this HBONE connection")
        sid = self.conn.open(authority)
        stream = TunnelStream(self, sid, authority)
        self.streams[sid] = stream
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[sid] = waiter
        self.flush()
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(sid, None)
            stream.abort()
            self.closing = True  # an unanswered CONNECT: take no more streams here (a pool opens a new one)
            raise RelayError(f"no answer to CONNECT {authority} within {timeout:.0f}s; "
                             "check that the destination's ztunnel is running") from None
        except RelayError:
            self.streams.pop(sid, None)
            raise
        return stream

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.conn.close()
            self.flush()
            self.transport.close()
