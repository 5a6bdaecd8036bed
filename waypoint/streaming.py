"""Request bodies that are still arriving: the waypoint decides on the headers, then streams the body.

A request is routed and authorized as soon as its head is read. Its body, if
it has one, is a source the proxy reads only once it knows where the request
goes (`read()`), so a refused request is answered without reading it, and a
body of any size crosses the waypoint in pieces. When the route needs the
body more than once (a retry, a mirror), `collect(limit)` reads it whole, up
to a limit (`BodyTooLarge` past it: the proxy answers 413).

Two sources, one interface (`read`, `collect`, `discard`, `complete`,
`received`, `taken`, `length`):
- `BodyStream`: an HTTP/2 stream's DATA, fed by `waypoint.h2server`. The
  client's flow-control credit is returned only as the body is read
  (`on_consumed`), so a slow endpoint slows the client instead of growing a
  buffer: what waits here is at most a stream window.
- `Http1Body`: the body of an HTTP/1.1 request, read from the client's
  connection through its `MessageReader` as the proxy asks for it (the
  connection's own backpressure holds the client meanwhile). `Expect:
  100-continue` is answered at the first read, never for a refused request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from waypoint import http1
from waypoint.channel import Channel, ChannelReset
from waypoint.errors import BadRequest, DownstreamGone, WaypointError


class BodyTooLarge(WaypointError):
    """A body that must be kept whole (to be sent again) is larger than the waypoint keeps."""

    response_flag = "DPE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes, the most this waypoint keeps for a route "
                         f"that retries or mirrors; send it on a route without retries and mirrors, or smaller")
        self.limit = limit


class BodySource:
    """What both sources share: counting, `collect` and the end state."""

    length: int | None = None      # the declared Content-Length, when there is one
    received = 0                   # bytes that arrived from the client
    taken = 0                      # bytes handed out by read()
    complete = False               # the client's body ended (read to its end, or fully arrived)

    @property
    def broken(self) -> Exception | None:
        """Why the client's body broke off (it left, reset its stream, or sent a malformed body), if it did."""
        return None

    async def read(self) -> bytes:
        raise NotImplementedError

    async def collect(self, limit: int) -> bytes:
        """The whole body, or BodyTooLarge as soon as it is known to pass `limit`."""
        if self.length is not None and self.length > limit:
            raise BodyTooLarge(limit)
        out = bytearray()
        while True:
            data = await self.read()
            if not data:
                return bytes(out)
            out += data
            if len(out) > limit:
                raise BodyTooLarge(limit)


class BodyStream(BodySource):
    def __init__(self, on_consumed: Callable[[int], None] = lambda n: None, length: int | None = None) -> None:
        self.on_consumed = on_consumed
        self.length = length
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._error: Exception | None = None
        self._ready = asyncio.Event()
        self.received = 0
        self.taken = 0

    @property
    def complete(self) -> bool:
        return self._ended and self._error is None

    @property
    def broken(self) -> Exception | None:
        return self._error

    @property
    def waiting(self) -> int:
        """Flow-control credit held by chunks not read yet (what the client may not resend)."""
        return sum(credit for _, credit in self._chunks)

    def feed(self, data: bytes, credit: int) -> None:
        self.received += len(data)
        self._chunks.append((data, credit))
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._ready.set()

    async def read(self) -> bytes:
        """The next chunk; b"" at the end; raises what `fail` was given."""
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                data, credit = self._chunks.popleft()
                if credit:
                    self.on_consumed(credit)
                if data:
                    self.taken += len(data)
                    return data
                continue
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()

    def discard(self) -> None:
        """Drops what was not read, giving its credit back (the call ended without it)."""
        while self._chunks:
            _, credit = self._chunks.popleft()
            if credit:
                self.on_consumed(credit)
        self._ended = True


class Http1Body(BodySource):
    """One HTTP/1.1 request's body, read from the client connection on demand. Events the reader yields
    after the body's End (a pipelined next request) stay in `queue` for the connection's loop."""

    def __init__(self, client: Channel, reader: http1.MessageReader, queue: list, head: http1.Head) -> None:
        self.client = client
        self.reader = reader
        self.queue = queue
        self.length = head.content_length if not head.chunked else None
        self.received = 0
        self.taken = 0
        self._ended = False
        self.error: Exception | None = None
        self._continue = (head.header("expect") or "").lower() == "100-continue" and head.version == "1.1"

    @property
    def complete(self) -> bool:
        """All of the body was read. Its End may not have been asked for yet (the answer came while the
        pump waited to send the last piece): when it is the next event, it is taken now, so the next
        request's events are all that is left in the queue."""
        if not self._ended and self.queue and isinstance(self.queue[0], http1.End):
            self.queue.pop(0)
            self._ended = True
        return self._ended

    @property
    def broken(self) -> Exception | None:
        return self.error

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. DownstreamGone when the client left or sent a broken
        body (then the connection carries nothing more)."""
        if self.error is not None:
            raise self.error
        if self._continue:
            # The request is going somewhere: now the client may send what it held back.
            self._continue = False
            self.client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            while self.queue and not self._ended:
                event = self.queue.pop(0)
                if isinstance(event, http1.Body):
                    self.received += len(event.data)
                    self.taken += len(event.data)
                    return event.data
                if isinstance(event, http1.End):
                    self._ended = True
                    return b""
            if self._ended:
                return b""
            try:
                data = await self.client.read()
                self.queue.extend(self.reader.feed(data) if data else self.reader.feed_eof())
                if not data:
                    raise BadRequest("the connection closed in the middle of a request body")
            except (BadRequest, ChannelReset) as e:
                self.error = DownstreamGone(f"the client's request body broke off: {e}")
                raise self.error from None

    def discard(self) -> None:
        """Nothing to give back: what was not read stays unread, and the connection is not reused."""
