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
endpoint never saw it). HTTP/2 requests share one multiplexed connection per
endpoint (`waypoint.h2upstream`).
"""

from __future__ import annotations

import asyncio
import time

from waypoint import http1
from waypoint.channel import Channel
from waypoint.errors import BadRequest, UpstreamFailed, WaypointError
from waypoint.h2upstream import H2Pool
from waypoint.routing import Upstream
from waypoint.streaming import BodySource
from waypoint.upstream import Upstreams

MIRROR_LINGER = 5.0   # seconds a one-off HTTP/2 connection stays open after its request


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
        self.pump: asyncio.Task | None = None     # sends a streamed request body

    async def start(self, wire: bytes, body: BodySource | None = None) -> http1.Head:
        """Sends the request (`wire`: all of it, or the head of a `body` streamed after it, chunked when
        its length is unknown) and reads the response head, which may come before the body is all sent."""
        self._received_before = self.channel.bytes_received
        self.channel.send(wire)
        if body is not None:
            self.pump = asyncio.get_running_loop().create_task(self._send_body(body, chunked=body.length is None))
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

    async def _send_body(self, body: BodySource, chunked: bool) -> None:
        try:
            while True:
                data = await body.read()
                if not data:
                    if chunked:
                        self.channel.send(http1.LAST_CHUNK)
                    return
                self.channel.send(http1.chunk(data) if chunked else data)
                await self.channel.drain()    # the endpoint (or its connection) takes no more: read no more
        except WaypointError:
            self.channel.reset()   # the client's body broke off: so does the request it was going into

    @property
    def request_sent(self) -> bool:
        pump = self.pump
        return pump is None or (pump.done() and not pump.cancelled() and not self.channel.was_reset)

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
        if not self.request_sent:
            # Answered before the request's body was all sent: the endpoint waits for the rest, or reads
            # it as a next request. The connection carries nothing more.
            self.reset()
            return False
        if (self.pool is not None and head is not None and head.keep_alive and self.reader.done
                and not head.body_until_close and self.pool.give(self.upstream, self.channel)):
            self.pooled = True
            return True
        self.channel.end()
        return False

    def reset(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        self.channel.reset()


async def open_exchange(upstreams: Upstreams, upstream: Upstream, head: http1.Head, body,
                        headers: list[tuple[str, str]], authority: str, *, use_h2: bool,
                        pool: Http1Pool | None = None, h2_pool: H2Pool | None = None, wire_head: bytes = b""):
    """Connects (or reuses a kept-alive HTTP/1.1 connection, or a stream on a pooled HTTP/2 one),
    sends the request, waits for the response head. Returns the exchange (`.head` set).
    `body` is bytes, or a `BodySource` still arriving, streamed as it comes. `wire_head`: an HTTP/1.1
    request without a body, as it goes on the wire (then `headers` are not read)."""
    if use_h2:
        pool_h2 = h2_pool or H2Pool()
        try:
            return await pool_h2.exchange(upstreams, upstream, head, body, headers, authority)
        finally:
            if h2_pool is None:   # a one-off (a mirror): no connection outlives it
                asyncio.get_running_loop().call_later(MIRROR_LINGER, pool_h2.close)
    if pool is not None:
        channel = pool.take(upstream)
        if channel is not None:
            try:
                return await _http1(channel, upstream, head, body, headers, authority, pool, reused=True,
                                    wire_head=wire_head)
            except StaleConnection:
                # Closed while idle: the endpoint never saw the request; once more, on a fresh connection,
                # unless a streamed body was partly read already (it cannot be read again).
                if isinstance(body, BodySource) and body.taken:
                    raise UpstreamFailed("the endpoint closed a kept-alive connection while the request's body "
                                         "was being sent", "reset", "UC") from None
    channel = await upstreams.open(upstream)
    return await _http1(channel, upstream, head, body, headers, authority, pool, reused=False, wire_head=wire_head)


async def _http1(channel: Channel, upstream: Upstream, head: http1.Head, body, headers, authority: str,
                 pool: Http1Pool | None, *, reused: bool, wire_head: bytes = b"") -> Http1Exchange:
    head_request = head.method == "HEAD"
    reader = channel.response_reader
    if reader is None or not reader.again(head_request):
        reader = channel.response_reader = http1.MessageReader(response=True, head_request=head_request)
    exchange = Http1Exchange(channel, reader, pool, upstream, reused)
    try:
        if wire_head:
            await exchange.start(wire_head)
            return exchange
        wire_headers = [(k, v) for k, v in headers if k != "host"] + [("host", authority)]
        if isinstance(body, BodySource):
            await exchange.start(http1.request_head_bytes(head.method, head.target, wire_headers,
                                                          content_length=body.length, chunked=body.length is None,
                                                          close=pool is None), body)
        else:
            await exchange.start(http1.request_bytes(head.method, head.target, wire_headers, body,
                                                     close=pool is None))
        return exchange
    except BadRequest as e:
        exchange.reset()
        raise UpstreamFailed(f"the endpoint answered with malformed HTTP: {e}", "reset", "UPE") from None
    except BaseException:
        exchange.reset()
        raise
