"""HTTP/2 to endpoints: one multiplexed connection per endpoint, many requests on it.

An `H2Upstream` is one h2c connection (prior knowledge) over one channel (an
HBONE stream, or TCP): a reader task turns what arrives into per-stream
events; each request is an `H2StreamExchange` (the same interface as the
HTTP/1.1 exchange: `head`, `events()`, `finish()`, `reset()`). `H2Pool`
keeps the connections per (endpoint, identity), and opens another when one
has no stream left (the peer's SETTINGS_MAX_CONCURRENT_STREAMS) or is going
away. A connection that dies before a request got any answer was stale: the
request is sent once more on a fresh connection.

Request DATA waits for flow-control window (connection and stream).
Response DATA is acknowledged (WINDOW_UPDATE) only once the proxy has passed
it on to the client and asks for more (`events()`): a client that stops
reading stops the endpoint, and what the waypoint holds for one stream is at
most its window (`STREAM_WINDOW`, `CONNECTION_WINDOW` for the connection).
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from waypoint import http1
from waypoint.channel import Channel
from waypoint.errors import UpstreamFailed
from waypoint.routing import Upstream
from waypoint.upstream import Upstreams

STREAM_WINDOW = 256 << 10
CONNECTION_WINDOW = 4 << 20

# Connection-specific headers HTTP/2 forbids (RFC 9113 8.2.2); `te: trailers` alone is allowed.
H2_FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
                          "content-length", "expect"})


class StaleH2(UpstreamFailed):
    def __init__(self, why: str) -> None:
        super().__init__(f"the HTTP/2 connection to the endpoint ended before it answered: {why}", "reset", "UC")


class H2StreamExchange:
    def __init__(self, upstream: "H2Upstream", stream_id: int) -> None:
        self.upstream = upstream
        self.channel = upstream.channel
        self.stream_id = stream_id
        self.head: http1.Head | None = None
        self.pending: list = []
        self.error: Exception | None = None
        self.trailers: tuple = ()
        self.done = False
        self.pump: asyncio.Task | None = None    # sends a streamed request body
        self.held = 0        # flow-control credit of DATA waiting in `pending`
        self.given = 0       # credit of DATA handed out by events(), acknowledged at the next call
        self._wake = asyncio.Event()

    def _notify(self) -> None:
        self._wake.set()

    async def _wait(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    async def wait_head(self) -> http1.Head:
        while self.head is None:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.head

    async def events(self) -> list:
        """The next events. Asking for more means what was handed out before has gone on to the client:
        only now is its DATA acknowledged, so the endpoint sends no faster than the client reads."""
        self._return_credit()
        while not self.pending:
            if self.error is not None:
                raise self.error
            await self._wait()
        out, self.pending = self.pending, []
        self.given, self.held = self.held, 0
        return out

    def _return_credit(self) -> None:
        credit, self.given = self.given, 0
        self.upstream.acknowledge(self.stream_id, credit)

    def finish(self) -> bool:
        """The response ended: the connection stays in the pool for other requests."""
        if self.pump is not None:
            self.pump.cancel()   # an endpoint that answered before the request ended wants no more of it
        self.upstream.forget(self.stream_id)
        self._release_all()
        return True

    def reset(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        self.upstream.reset_stream(self.stream_id)
        self._release_all()

    def _release_all(self) -> None:
        """The stream is over for us: the connection's credit it held goes back (nobody will read it)."""
        credit, self.given, self.held = self.given + self.held, 0, 0
        self.pending = [e for e in self.pending if not isinstance(e, http1.Body)]
        self.upstream.acknowledge(self.stream_id, credit)


class H2Upstream:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, H2StreamExchange] = {}
        self.dead: Exception | None = None
        self.going_away = False
        self.answered = False        # some response came on it: it was alive
        self._window = asyncio.Event()
        self.conn.initiate_connection()
        # Windows wider than HTTP/2's 64 KiB default, so one slow reader does not stall the connection:
        # what an endpoint may have sent ahead is at most STREAM_WINDOW per stream, CONNECTION_WINDOW in all.
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - self.conn.inbound_flow_control_window)
        self._flush()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def available(self) -> bool:
        return (self.dead is None and not self.going_away
                and self.conn.open_outbound_streams < self.conn.remote_settings.max_concurrent_streams)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.channel.send(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.channel.read()
                if not data:
                    raise UpstreamFailed("the endpoint closed the HTTP/2 connection", "reset", "UC")
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    raise UpstreamFailed(f"the endpoint broke HTTP/2: {e}", "reset", "UPE") from None
                for event in events:
                    self._dispatch(event)
                self._flush()
        except asyncio.CancelledError:
            self._fail(UpstreamFailed("the waypoint closed the connection", "reset", "UC"))
            raise
        except Exception as e:  # noqa: BLE001 - every stream of the connection learns why it ended
            self._fail(e if isinstance(e, UpstreamFailed) else UpstreamFailed(str(e), "reset", "UC"))

    def _dispatch(self, ev) -> None:
        if isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window.set()
            return
        if isinstance(ev, h2.events.ConnectionTerminated):
            self.going_away = True
            for sid, stream in list(self.streams.items()):
                if sid > (ev.last_stream_id or 0):
                    stream.error = StaleH2("GOAWAY")
                    stream._notify()
            return
        stream = self.streams.get(getattr(ev, "stream_id", 0))
        if stream is None:
            if isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            return
        if isinstance(ev, h2.events.ResponseReceived):
            self.answered = True
            headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers]
            status = int(next(v for k, v in headers if k == ":status"))
            fields = tuple((k, v) for k, v in headers if not k.startswith(":"))
            length = next((int(v) for k, v in fields if k == "content-length"), None)
            stream.head = http1.Head("", "", status, "", fields, "2", True, length, False)
        elif isinstance(ev, h2.events.DataReceived):
            stream.held += ev.flow_controlled_length      # acknowledged as the client takes it (events())
            if ev.data:
                stream.pending.append(http1.Body(ev.data))
        elif isinstance(ev, h2.events.TrailersReceived):
            stream.trailers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            stream.pending.append(http1.End(stream.trailers))
            stream.done = True
        elif isinstance(ev, h2.events.StreamReset):
            stream.error = (StaleH2(f"stream refused (error {ev.error_code})")
                            if ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and stream.head is None
                            else UpstreamFailed(f"the endpoint reset the HTTP/2 stream (error {ev.error_code})",
                                                "reset", "UR"))
            self.streams.pop(ev.stream_id, None)
            stream._release_all()
        else:
            return
        stream._notify()

    def _fail(self, error: Exception) -> None:
        if self.dead is not None:
            return
        self.dead = error
        for stream in self.streams.values():
            if stream.error is None:
                stream.error = error if self.answered or stream.head is not None else StaleH2(str(error))
            stream._notify()
        self._window.set()
        self.channel.reset()

    async def request(self, method: str, target: str, authority: str, headers, body) -> H2StreamExchange:
        """Sends a request (body: bytes, or a BodyStream that is streamed as it arrives); waits for the head."""
        if not self.available:
            raise StaleH2("no stream available")
        sid = self.conn.get_next_available_stream_id()
        stream = self.streams[sid] = H2StreamExchange(self, sid)
        pseudo = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", target.encode()),
                  (b":authority", authority.encode())]
        fields = [(k.encode(), v.encode()) for k, v in headers
                  if k not in H2_FORBIDDEN and not k.startswith(":") and (k != "te" or v.strip() == "trailers")]
        streamed = not isinstance(body, (bytes, bytearray))
        try:
            self.conn.send_headers(sid, pseudo + fields, end_stream=not streamed and not body)
            self._flush()
            if streamed:
                stream.pump = asyncio.get_running_loop().create_task(self._pump(stream, body))
            elif body:
                await self._send(sid, body, end=True)
            await stream.wait_head()
            return stream
        except h2.exceptions.ProtocolError as e:
            self.forget(sid)
            raise UpstreamFailed(f"cannot send on the HTTP/2 connection: {e}", "reset", "UC") from None
        except BaseException:
            stream.reset()
            raise

    async def _send(self, sid: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while view or end:
            if self.dead is not None:
                raise self.dead
            if not view:
                self.conn.end_stream(sid)
                self._flush()
                return
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(view))
            if room <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            last = room == len(view)
            self.conn.send_data(sid, bytes(view[:room]), end_stream=end and last)
            view = view[room:]
            self._flush()
            if end and last:
                return

    async def _pump(self, stream: H2StreamExchange, body) -> None:
        try:
            while True:
                data = await body.read()
                await self._send(stream.stream_id, data, end=not data)
                if not data:
                    return
        except asyncio.CancelledError:
            raise
        except h2.exceptions.ProtocolError:
            return   # the endpoint already ended the stream (a gRPC server may answer before the client ends)
        except Exception:  # noqa: BLE001 - the client went away, or the connection died: cancel the call upstream
            self.reset_stream(stream.stream_id)

    def acknowledge(self, stream_id: int, credit: int) -> None:
        """Flow-control credit back to the endpoint (the stream's, while it is open, and the connection's)."""
        if not credit or self.dead is not None:
            return
        try:
            self.conn.acknowledge_received_data(credit, stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._flush()

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    def reset_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and not stream.done and self.dead is None:
            try:
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass

    def close(self) -> None:
        if self.dead is None:
            try:
                self.conn.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
        self.reader.cancel()
        self.channel.end()


class H2Pool:
    def __init__(self) -> None:
        self.connections: dict[tuple, list[H2Upstream]] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}
        self.opened = 0

    @staticmethod
    def key(upstream: Upstream) -> tuple:
        return (upstream.address, upstream.hbone, upstream.identity)

    def _usable(self, key) -> H2Upstream | None:
        live = [c for c in self.connections.get(key, []) if c.dead is None and not (c.going_away and not c.streams)]
        self.connections[key] = live
        return next((c for c in live if c.available), None)

    async def connection(self, upstreams: Upstreams, upstream: Upstream, fresh: bool = False) -> H2Upstream:
        key = self.key(upstream)
        if not fresh:
            found = self._usable(key)
            if found is not None:
                return found
        async with self._locks.setdefault(key, asyncio.Lock()):
            found = None if fresh else self._usable(key)
            if found is None:
                found = H2Upstream(await upstreams.open(upstream))
                self.opened += 1
                self.connections.setdefault(key, []).append(found)
            return found

    async def exchange(self, upstreams: Upstreams, upstream: Upstream, head: http1.Head, body, headers,
                       authority: str) -> H2StreamExchange:
        connection = await self.connection(upstreams, upstream)
        try:
            return await connection.request(head.method, head.target, authority, headers, body)
        except StaleH2:
            if not isinstance(body, (bytes, bytearray)):
                raise   # a streamed body may be partly consumed: never sent twice
            connection = await self.connection(upstreams, upstream, fresh=True)
            return await connection.request(head.method, head.target, authority, headers, body)

    def close(self) -> None:
        for conns in self.connections.values():
            for c in conns:
                c.close()
        self.connections.clear()
