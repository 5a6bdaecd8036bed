"""HBONE over asyncio: the thin driver around the sans-IO core `shoal.hbone`.

`HboneSession` is one HBONE connection (TLS underneath, done by asyncio),
client or server side; `TunnelStream` is one of its CONNECT streams as a
relay side (`shoal.hbone_relay`), so `relay(TcpSide, TunnelStream)` carries
an app's TCP connection through a tunnel.

Every tunnel rule lives in the core: half-close each way, reset each way,
the bytes waiting for window and EOF after them, credit withheld from a slow
reader, what arrives before the relay is attached. This driver only maps:
- the core's events to the transports: DataReceived -> write (then
  consumed()), StreamEnded -> write_eof, StreamReset -> abort (an RST with
  SO_LINGER 0 for TCP), ReadingPaused / ReadingResumed -> pause_reading /
  resume_reading of the app's side, StreamClosed -> the stream's `closed`;
- the transports' calls back to the core: a relay side's write, write_eof,
  abort, pause_reading and resume_reading become send(), end(), reset(),
  pause_receiving() and resume_receiving(); the TLS transport's
  pause_writing / resume_writing become transport_paused() / resumed().

Shutting down: `go_away()` is a drain's graceful GOAWAY (the streams open
run to their end, then the connection closes); `close()` ends it now. A
GOAWAY from the peer sets `closing`, so a pool opens its next stream on a
new connection. A stream the peer reset before its handler ran gets no
handler (HTTP/2 rapid reset must not cost an upstream connection each).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Awaitable, Callable, Iterable

import h2.errors

from shoal import hbone, log, native_io, relay_lane
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
    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code     # the HTTP/2 code of the peer's RST_STREAM, when that is what broke it

    @property
    def refused(self) -> bool:
        """REFUSED_STREAM: the peer did not process the CONNECT at all (RFC 9113 8.7), so another
        connection may safely be asked instead (a peer that sent GOAWAY refuses streams it did not see)."""
        return self.error_code == h2.errors.ErrorCodes.REFUSED_STREAM


class TunnelStream(relay_lane.StreamBase, Side):
    """One CONNECT stream of an HboneSession, as a relay side: calls go to the core, whose events come back.

    (StreamBase marks it as one the compiled lane of `TcpSide` may write DATA frames to directly.)"""

    def __init__(self, session: "HboneSession", stream_id: int, authority: str) -> None:
        self.session = session
        self.stream_id = stream_id
        self.authority = authority
        self.peer = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.reset = False           # ended by a reset, ours or the peer's
        self.closed = asyncio.get_running_loop().create_future()

    def attach(self, peer: Side) -> None:
        self.peer = peer
        if self.reset:  # reset before the relay started
            peer.abort()
            return
        try:
            events = self.session.conn.attach(self.stream_id)
        except hbone.StreamNotOpen:
            return
        self.session.handle(events)

    def write(self, data: bytes) -> None:
        try:
            events = self.session.conn.send(self.stream_id, data)
        except hbone.StreamNotOpen:
            return  # reset or half-closed already: late bytes have nowhere to go
        self.bytes_sent += len(data)
        self.session.handle(events)

    def write_eof(self) -> None:
        try:
            events = self.session.conn.end(self.stream_id)
        except hbone.StreamNotOpen:
            return  # a second EOF, or the tunnel is over
        self.session.handle(events)

    def abort(self) -> None:
        events = self.session.conn.reset(self.stream_id)
        if events:
            self.reset = True
            self.session.handle(events)

    def pause_reading(self) -> None:
        self.session.conn.pause_receiving(self.stream_id)

    def resume_reading(self) -> None:
        self.session.conn.resume_receiving(self.stream_id)
        self.session.flush()


RequestHandler = Callable[["HboneSession", TunnelStream], Awaitable[None]]


class HboneSession(relay_lane.SessionBase, asyncio.Protocol):
    """One HBONE connection (TLS underneath, handled by asyncio), client or server side.

    With the compiled lane on (`shoal.relay_lane`, lean HTTP/2 only), `data_received` carries plain DATA
    frames of attached tunnels in C and hands the rest, in order, to `_data_received_python`."""

    def __init__(self, client: bool, settings: hbone.Settings = hbone.Settings(), *,
                 on_request: RequestHandler | None = None, name: str = "", lean: bool = True,
                 lane: bool | None = None) -> None:
        connection = hbone.HboneClient if client else hbone.HboneServer
        self.conn = connection(settings, lean=lean, hold_until_attached=True)
        self.client = client
        self.on_request = on_request
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, TunnelStream] = {}
        self._waiting: dict[int, asyncio.Future] = {}
        self.closing = False     # GOAWAY seen or sent: no new streams
        self.draining = False    # our graceful GOAWAY is out: close once its streams are over
        self.lost = asyncio.get_running_loop().create_future()
        self.last_active = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self.peer_address: tuple | None = None
        self.ssl_object = None
        # The compiled lane (lean HTTP/2 only): on when built unless SHOAL_RELAY=python; `lane` overrides it.
        if lean and (relay_lane.sessions_take_lane if lane is None else lane):
            if not relay_lane.COMPILED:
                raise relay_lane.RelayLaneError("the compiled relay lane was asked for but is not in use here "
                                                f"(SHOAL_RELAY={relay_lane.NAME}, or not built)")
            self._enable_lane(client)

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

    def _data_received_python(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except hbone.ProtocolViolation as e:
            logger.warning("hbone peer broke the protocol", peer=self.peer_address, error=str(e))
            self.handle(e.events)
            self._teardown(TunnelBroken(f"peer broke HTTP/2: {e}"))
            if self.transport is not None:
                self.transport.close()
            return
        self.last_active = time.monotonic()
        self.handle(events)

    if not relay_lane.COMPILED:
        data_received = _data_received_python

    def connection_lost(self, exc) -> None:
        self._teardown(TunnelBroken(f"HBONE connection lost: {exc or 'closed by peer'}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.handle(self.conn.transport_paused())

    def resume_writing(self) -> None:
        self.handle(self.conn.transport_resumed())

    # the driver ---------------------------------------------------------------------------

    def handle(self, events: Iterable[hbone.Event]) -> None:
        """Carries out what the core's events ask of the transports, then writes what the core queued."""
        streams = self.streams
        for ev in events:
            cls = ev.__class__
            if cls is hbone.DataReceived:
                stream = streams.get(ev.stream_id)
                if stream is not None and stream.peer is not None:
                    stream.bytes_received += len(ev.data)
                    stream.peer.write(ev.data)
                self.conn.consumed(ev.stream_id, ev.flow_controlled_length)
            elif cls is hbone.ReadingPaused or cls is hbone.ReadingResumed:
                stream = streams.get(ev.stream_id)
                if stream is not None and stream.peer is not None:
                    if cls is hbone.ReadingPaused:
                        stream.peer.pause_reading()
                    else:
                        stream.peer.resume_reading()
            elif cls is hbone.StreamEnded:
                stream = streams.get(ev.stream_id)
                if stream is not None and stream.peer is not None:
                    stream.peer.write_eof()
            elif cls is hbone.StreamReset:
                self._resolve(ev.stream_id, TunnelBroken(f"tunnel reset by the peer (HTTP/2 error {ev.error_code})",
                                                         ev.error_code))
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.reset = True
                    if stream.peer is not None:
                        stream.peer.abort()
            elif cls is hbone.StreamClosed:
                stream = streams.pop(ev.stream_id, None)
                if stream is not None and not stream.closed.done():
                    stream.closed.set_result(None)
                self.last_active = time.monotonic()
            elif cls is hbone.ConnectRequested:
                self._on_connect_requested(ev)
            elif cls is hbone.ConnectAccepted:
                self._resolve(ev.stream_id, None)
            elif cls is hbone.ConnectRefused:
                self._resolve(ev.stream_id, TunnelRefused(ev.status, ev.reason))
            elif cls is hbone.ConnectionClosed:
                self.closing = True
            # WindowOpened and SettingsReceived ask nothing of a transport: the core acted on them.
        self.flush()
        if self.draining and not self.streams and self.conn.drained_of_new_streams:
            self.close()

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
        self.handle(self.conn.abandon_streams())
        # A stream the core had already forgotten (its end was in a batch cut short) ends here too.
        for stream in list(self.streams.values()):
            self.handle([hbone.StreamReset(stream.stream_id, h2.errors.ErrorCodes.CONNECT_ERROR),
                         hbone.StreamClosed(stream.stream_id)])

    def _on_connect_requested(self, ev: hbone.ConnectRequested) -> None:
        stream = TunnelStream(self, ev.stream_id, ev.authority)
        self.streams[ev.stream_id] = stream
        if self.on_request is None:
            self.refuse(stream, 503, "this endpoint accepts no tunnels")
            return
        task = asyncio.get_running_loop().create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: TunnelStream) -> None:
        if stream.reset:
            return  # reset by the peer before its handler ran (rapid reset): no work, no upstream connection
        await self.on_request(self, stream)

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
        try:
            self.handle(self.conn.refuse(stream.stream_id, status, reason))
        except hbone.StreamNotOpen:  # accepted already: too late for a status, so a reset says it
            stream.abort()

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
        return stream

    def go_away(self) -> None:
        """A graceful GOAWAY (a drain): the peer opens no new streams here, those it has run to their end,
        and the connection closes once they are over (or when close() is called, at a deadline)."""
        self.closing = self.draining = True
        if self.transport is not None and not self.transport.is_closing():
            self.conn.go_away("draining")
            self.handle(())

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.conn.close()
            self.flush()
            self.transport.close()


async def accept_session(conn: socket.socket, context, on_request: RequestHandler, *,
                         handshake_timeout: float) -> HboneSession:
    """The server side of one HBONE connection on an accepted socket: the TLS handshake, then the session.

    The session is made here and handed to the transport's maker, not taken from what it returns: with
    TLS, uvloop's `connect_accepted_socket` returns its own SSL protocol, not ours. The transport is the
    native one when in use (`shoal.native_io`), else the loop's."""
    session = HboneSession(False, on_request=on_request)
    await native_io.open_tls(lambda: session, conn, context, server_side=True, handshake_timeout=handshake_timeout)
    return session


async def serve_until_lost(session: HboneSession, sessions: set) -> None:
    """Keeps `session` in `sessions` (what a drain looks at) until its connection is gone; a cancelled
    caller (a drain's deadline, a pod removed) closes it."""
    sessions.add(session)
    try:
        await session.lost
    except asyncio.CancelledError:
        session.close()
        raise
    finally:
        sessions.discard(session)
