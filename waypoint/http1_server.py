"""HTTP/1.1 from clients: one client connection (one HBONE stream from a ztunnel), its requests in turn.

Requests are read one at a time (keep-alive). Each is handed to
`Proxy.exchange` as soon as its head is read, its body (if any) as a
`waypoint.streaming.Http1Body` that reads the connection as the proxy passes
the body on. A request answered before its body was read to the end (a
refusal, or an endpoint that answered early) ends the connection: the rest
of the body would otherwise be read as the next request. A client that
pipelines (sends the next request before the answer to the previous one)
gets its first answer with `connection: close`, and the connection ends
there: answering in order is possible but not worth its risks in a proxy
that retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from shoal import log

from waypoint import http1
from waypoint.channel import Channel, ChannelReset
from waypoint.errors import BadRequest
from waypoint.proxy import Proxy, Request
from waypoint.responders import Http1Responder
from waypoint.routing import Peer
from waypoint.streaming import Http1Body

logger = log.get("waypoint.http1")

LINGER_SECONDS = 5.0   # reading and dropping an unread request body before a reset


class IdleLimit:
    """The keep-alive idle limit of one client connection: the serving task is cancelled when it has waited
    `seconds` for the next request. One timer per connection, re-armed only when it fires: an
    `asyncio.timeout` around each wait armed and cancelled a timer on every request."""

    def __init__(self, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.seconds = seconds
        self.since: float | None = None   # when the current wait began; None while a request is served
        self.expired = False
        self._timer = self.loop.call_later(seconds, self._check)

    def waiting(self) -> None:
        self.since = self.loop.time()

    def serving(self) -> None:
        self.since = None

    def _check(self) -> None:
        now = self.loop.time()
        if self.since is not None and now - self.since >= self.seconds:
            self.expired = True
            self.task.cancel()
            return
        self._timer = self.loop.call_at((self.since if self.since is not None else now) + self.seconds,
                                        self._check)

    def close(self) -> None:
        self._timer.cancel()


async def serve_http1(proxy: Proxy, client: Channel, peer: Peer, source_address: tuple[str, int]) -> None:
    """Serves one client connection: its requests, one at a time (keep-alive), until it ends."""
    reader = http1.MessageReader()
    queue: list = []
    idle = IdleLimit(proxy.idle_timeout)
    answering = Answering(client, queue)
    closing = answering.closing   # (one bound method for the connection: no closure made per request)
    try:
        while True:
            try:
                idle.waiting()
                head = await _next_head(client, reader, queue)
                idle.serving()
            except asyncio.CancelledError:
                if not idle.expired:
                    raise
                asyncio.current_task().uncancel()   # the idle limit's own cancellation: end, as a timeout would
                client.end()
                return
            except BadRequest as e:
                client.send(http1.local_response(e.status, f"{e}\n", close=True))
                client.end()
                logger.info("bad request from a client", src=source_address[0], error=str(e))
                return
            if head is None:
                client.end()
                return
            body = answering.body = (Http1Body(client, reader, queue, head) if head.chunked or head.content_length
                                     else None)
            responder = Http1Responder(client, head.method, head.keep_alive and not proxy.draining, closing)
            await proxy.exchange(Request(origin_form(head), b"", peer.destination[1], body), peer, responder,
                                 source_address)
            if body is not None and not body.complete:
                # Answered without reading the whole body (refused, or the endpoint answered early):
                # what is left of it would be read as the next request.
                await _linger(client)
                return
            if not responder.keep:
                client.end()
                return
    except ChannelReset:
        return
    except asyncio.CancelledError:
        client.reset()
        raise
    finally:
        idle.close()


async def _next_head(client: Channel, reader: http1.MessageReader, queue: list) -> http1.Head | None:
    """The next request's head; None when the client closed between requests."""
    while True:
        while queue:
            event = queue.pop(0)
            if isinstance(event, http1.Head):
                if not (event.chunked or event.content_length) and queue and isinstance(queue[0], http1.End):
                    queue.pop(0)    # no body: its End came with the head
                return event
            # (a body's events are its Http1Body's to read: none are left here)
        data = await client.read()
        if not data:
            reader.feed_eof()
            return None
        queue.extend(reader.feed(data))


async def _linger(client: Channel) -> None:
    """Ends the connection after an answer given before the request's body was read, as a careful
    HTTP/1.1 server does: our side is closed at once, and what the client still sends is read and
    dropped for a while, so that its stack does not reset the connection (and lose the answer) over
    unread bytes; then it is reset."""
    client.end()
    loop = asyncio.get_running_loop()
    until = loop.time() + LINGER_SECONDS
    try:
        while loop.time() < until:
            if not await asyncio.wait_for(client.read(), until - loop.time()):
                return
    except (asyncio.TimeoutError, ChannelReset):
        pass
    client.reset()


class Answering:
    """The request a client connection is answering, for its responder to ask, when the answer's head goes
    out, whether this answer must close the connection: its body still unread, or the client already sent
    the next request (pipelining: it gets this answer with `connection: close`)."""

    __slots__ = ("client", "pending", "body")

    def __init__(self, client: Channel, pending: list) -> None:
        self.client = client
        self.pending = pending          # the connection's parsed events not taken yet (a pipelined request's)
        self.body: Http1Body | None = None

    def closing(self) -> bool:
        body = self.body
        return (body is not None and not body.complete) or bool(self.pending) or self.client.buffered > 0


def origin_form(head: http1.Head) -> http1.Head:
    """An absolute-form request-target (`GET http://host/path`, as sent to a forward proxy) in the form
    servers expect: the path, with the authority as the Host."""
    target = head.target
    if target[:1] == "/" or not target.lower().startswith(("http://", "https://")):
        return head   # (origin-form, the common case, told without lower-casing the target)
    rest = target.split("://", 1)[1]
    authority, slash, path = rest.partition("/")
    headers = tuple((k, v) for k, v in head.headers if k != "host") + (("host", authority),)
    return replace(head, target=slash + path if slash else "/", headers=headers)
