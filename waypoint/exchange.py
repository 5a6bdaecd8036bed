"""One request to one endpoint, and its response: over HTTP/1.1 or HTTP/2 (h2c, prior knowledge).

`open_exchange(upstreams, upstream, request, headers, h2)` connects (HBONE or
TCP, through `Upstreams`), sends the request and reads the response head;
the returned exchange yields the body as `http1.Body` events and ends with
`http1.End` (carrying HTTP/2 trailers, where gRPC puts its status).

HTTP/1.1 connections to endpoints are kept alive and reused (`Http1Pool`,
per endpoint and identity): a fresh HBONE stream per request would cost the
destination ztunnel a new connection to the app every time. A reused
connection that the endpoint closed while idle fails before any byte of
answer; the request is then sent once more on a fresh connection (the
endpoint never saw it). HTTP/2 gets a fresh connection (HBONE stream) per
request.
"""

from __future__ import annotations

import asyncio
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from waypoint import http1
from waypoint.channel import Channel
from waypoint.errors import BadRequest, UpstreamFailed
from waypoint.routing import Upstream
from waypoint.upstream import Upstreams

# Connection-specific headers HTTP/2 forbids (RFC 9113 8.2.2); `te: trailers` alone is allowed.
H2_FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
                          "content-length"})


class Http1Pool:
    """Idle keep-alive connections to endpoints. State changes are synchronous (no awaits inside)."""

    def __init__(self, max_idle_per_endpoint: int = 16, idle_seconds: float = 60.0,
                 clock=time.monotonic) -> None:
        self.max_idle = max_idle_per_endpoint
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.idle: dict[tuple, list[Channel]] = {}
        self._since: dict[Channel, float] = {}
        self.reused = 0

    @staticmethod
    def key(upstream: Upstream) -> tuple:
        return (upstream.address, upstream.hbone, upstream.identity)

    def take(self, upstream: Upstream) -> Channel | None:
        channels = self.idle.get(self.key(upstream))
        while channels:
            channel = channels.pop()
            self._since.pop(channel, None)
            if channel.idle_usable:
                self.reused += 1
                return channel
            channel.reset()
        return None

    def give(self, upstream: Upstream, channel: Channel) -> bool:
        channels = self.idle.setdefault(self.key(upstream), [])
        channels[:] = [c for c in channels if c.idle_usable]
        if not channel.idle_usable or len(channels) >= self.max_idle:
            return False
        channels.append(channel)
        self._since[channel] = self.clock()
        return True

    def sweep(self) -> int:
        """Closes connections idle longer than idle_seconds (their endpoint may be long gone)."""
        now, closed = self.clock(), 0
        for key, channels in list(self.idle.items()):
            keep = []
            for channel in channels:
                if channel.idle_usable and now - self._since.get(channel, now) < self.idle_seconds:
                    keep.append(channel)
                else:
                    self._since.pop(channel, None)
                    channel.end()
                    closed += 1
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        return closed

    def close(self) -> None:
        for channels in self.idle.values():
            for channel in channels:
                channel.reset()
        self.idle.clear()
        self._since.clear()


class StaleConnection(UpstreamFailed):
    """A reused keep-alive connection was closed by the endpoint before it answered."""

    def __init__(self) -> None:
        super().__init__("the endpoint closed a kept-alive connection before answering", "reset", "UC")


class Http1Exchange:
    def __init__(self, channel: Channel, reader: http1.MessageReader, pool: Http1Pool | None = None,
                 upstream: Upstream | None = None, reused: bool = False) -> None:
        self.channel = channel
        self.reader = reader
        self.pending: list = []
        self.head: http1.Head | None = None
        self.pool = pool
        self.upstream = upstream
        self.reused = reused
        self.pooled = False

    async def start(self, wire: bytes) -> http1.Head:
        self._received_before = self.channel.bytes_received
        self.channel.send(wire)
        while True:
            try:
                data = await self.channel.read()
            except UpstreamFailed:
                if self.reused and self.channel.bytes_received == self._received_before:
                    raise StaleConnection() from None
                raise
            events = self.reader.feed(data) if data else self.reader.feed_eof()
            self.pending.extend(events)
            if self.pending and isinstance(self.pending[0], http1.Head):
                self.head = self.pending.pop(0)
                return self.head
            if not data:
                if self.reused and self.channel.bytes_received == self._received_before:
                    raise StaleConnection()
                raise UpstreamFailed("the endpoint closed the connection before responding", "reset", "UC")

    async def events(self) -> list:
        """The next body events (at least one); End last."""
        if self.pending:
            out, self.pending = self.pending, []
            return out
        data = await self.channel.read()
        out = self.reader.feed(data) if data else self.reader.feed_eof()
        if not data and not out:
            raise UpstreamFailed("the endpoint closed the connection in the middle of the body", "reset", "UC")
        return out

    def finish(self) -> bool:
        """After the End event: back to the pool when both sides keep the connection alive; True if so."""
        head = self.head
        if (self.pool is not None and head is not None and head.keep_alive and self.reader.done
                and not head.body_until_close and self.pool.give(self.upstream, self.channel)):
            self.pooled = True
            return True
        self.channel.end()
        return False

    def reset(self) -> None:
        self.channel.reset()


class H2Exchange:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.stream_id = 0
        self.pending: list = []
        self.head: http1.Head | None = None
        self._window = asyncio.Event()
        self._trailers: tuple = ()
        self._ended = False

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.channel.send(data)

    async def start(self, method: str, target: str, authority: str, headers, body: bytes) -> http1.Head:
        conn = self.conn
        conn.initiate_connection()
        self.stream_id = conn.get_next_available_stream_id()
        pseudo = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", target.encode()),
                  (b":authority", authority.encode())]
        fields = [(k.encode(), v.encode()) for k, v in headers
                  if k not in H2_FORBIDDEN and not k.startswith(":") and (k != "te" or v.strip() == "trailers")]
        conn.send_headers(self.stream_id, pseudo + fields, end_stream=not body)
        self._flush()
        if body:
            await self._send_body(body)
        while self.head is None:
            await self._receive()
        return self.head

    async def _send_body(self, body: bytes) -> None:
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(self.stream_id), self.conn.max_outbound_frame_size,
                       len(view))
            if room <= 0:
                await self._receive()
                continue
            self.conn.send_data(self.stream_id, bytes(view[:room]), end_stream=room == len(view))
            view = view[room:]
            self._flush()

    async def _receive(self) -> None:
        data = await self.channel.read()
        if not data:
            raise UpstreamFailed("the endpoint closed the HTTP/2 connection before the response ended", "reset", "UC")
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            raise UpstreamFailed(f"the endpoint broke HTTP/2: {e}", "reset", "UPE") from None
        for ev in events:
            if getattr(ev, "stream_id", self.stream_id) != self.stream_id:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers]
                status = int(next(v for k, v in headers if k == ":status"))
                fields = tuple((k, v) for k, v in headers if not k.startswith(":"))
                length = next((int(v) for k, v in fields if k == "content-length"), None)
                self.head = http1.Head("", "", status, "", fields, "2", True, length, False)
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                continue
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.data:
                    self.pending.append(http1.Body(ev.data))
            elif isinstance(ev, h2.events.TrailersReceived):
                self._trailers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                self._ended = True
                self.pending.append(http1.End(self._trailers))
            elif isinstance(ev, h2.events.StreamReset):
                raise UpstreamFailed(f"the endpoint reset the HTTP/2 stream (error {ev.error_code})", "reset", "UR")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                if not self._ended:
                    raise UpstreamFailed("the endpoint closed the HTTP/2 connection (GOAWAY)", "reset", "UC")
        self._flush()

    async def events(self) -> list:
        while not self.pending:
            await self._receive()
        out, self.pending = self.pending, []
        return out

    def finish(self) -> bool:
        try:
            self.conn.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self.channel.end()
        return False

    def reset(self) -> None:
        self.channel.reset()


async def open_exchange(upstreams: Upstreams, upstream: Upstream, head: http1.Head, body: bytes,
                        headers: list[tuple[str, str]], authority: str, *, use_h2: bool,
                        pool: Http1Pool | None = None):
    """Connects (or reuses a kept-alive HTTP/1.1 connection), sends the request, waits for the
    response head. Returns the exchange (`.head` set)."""
    if not use_h2 and pool is not None:
        channel = pool.take(upstream)
        if channel is not None:
            try:
                return await _http1(channel, upstream, head, body, headers, authority, pool, reused=True)
            except StaleConnection:
                pass   # closed while idle: the endpoint never saw the request; once more, on a fresh connection
    channel = await upstreams.open(upstream)
    if use_h2:
        try:
            exchange = H2Exchange(channel)
            await exchange.start(head.method, head.target, authority, headers, body)
            return exchange
        except BaseException:
            channel.reset()
            raise
    return await _http1(channel, upstream, head, body, headers, authority, pool, reused=False)


async def _http1(channel: Channel, upstream: Upstream, head: http1.Head, body: bytes, headers, authority: str,
                 pool: Http1Pool | None, *, reused: bool) -> Http1Exchange:
    exchange = Http1Exchange(channel, http1.MessageReader(response=True, head_request=head.method == "HEAD"),
                             pool, upstream, reused)
    wire_headers = [(k, v) for k, v in headers if k != "host"] + [("host", authority)]
    try:
        await exchange.start(http1.request_bytes(head.method, head.target, wire_headers, body,
                                                 close=pool is None))
        return exchange
    except BadRequest as e:
        channel.reset()
        raise UpstreamFailed(f"the endpoint answered with malformed HTTP: {e}", "reset", "UPE") from None
    except BaseException:
        channel.reset()
        raise
