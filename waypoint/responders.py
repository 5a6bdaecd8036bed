"""Writing a response to the client: HTTP/1.1 on the client's stream, or one HTTP/2 stream.

The proxy talks to a responder and does not care which:
- `local(status, text, headers)`: an answer made here (refusal, fault, timeout);
  to a gRPC client, a trailers-only response with the grpc-status Envoy maps
  the HTTP status to;
- `head(..., end)`, `await data(...)`, `end(trailers)`: a relayed response
  (`end=True` on the head: nothing follows, as in gRPC's Trailers-Only);
  an HTTP/1.1 responder (`plain_heads`) also takes `plain_head(bytes, status)`
  in place of `head`: an HTTP/1.1 head that needs no change, as it came;
- `reset()`: nothing more can be said (the head is out and the upstream broke).
"""

from __future__ import annotations

from typing import Callable

from waypoint import http1
from waypoint.channel import Channel
from waypoint.errors import DownstreamGone

# Envoy's HTTP -> gRPC status mapping for answers made by the proxy.
GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_status_for(http_status: int) -> int:
    return GRPC_STATUS.get(http_status, 2)


class Http1Responder:
    plain_heads = True    # takes an upstream's HTTP/1.1 head as it came (plain_head)

    def __init__(self, client: Channel, method: str, keep: bool,
                 closing: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.method = method
        self.keep = keep
        self.closing = closing   # asked when the head goes out: must this answer close the connection?
        self.bytes_sent = 0
        self._chunked = False
        self._head = b""

    def local(self, status: int, text: str, headers=()) -> None:
        self.keep = self.keep and not self.closing()
        data = http1.local_response(status, text + "\n", list(headers), close=not self.keep)
        self.bytes_sent += len(data)
        self.client.send(data)

    def head(self, status: int, reason: str, headers, content_length: int | None, end: bool = False) -> None:
        bodyless = self.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        self._chunked = not bodyless and content_length is None
        self.keep = self.keep and status >= 200 and not self.closing()
        # Held until the first piece of body (or the end): one write, one HBONE DATA frame for a small answer.
        self._head = http1.response_head_bytes(status, headers, content_length=None if self._chunked
                                               else content_length, close=not self.keep, reason=reason)
        self.bytes_sent += len(self._head)

    def plain_head(self, head: bytes, status: int) -> None:
        """A relayed head that needs no change (`http1.Head.plain_bytes`: framed by its Content-Length, no
        hop-by-hop header), passed on as it came; `connection: close` added when this answer ends the
        connection."""
        self._chunked = False
        self.keep = self.keep and not self.closing()
        self._head = head if self.keep else head[:-2] + b"connection: close\r\n\r\n"
        self.bytes_sent += len(self._head)

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    async def data(self, data: bytes) -> None:
        if self.client.was_reset:
            raise DownstreamGone("the client reset its connection during the response")
        out = http1.chunk(data) if self._chunked else data
        self.bytes_sent += len(out)
        self.client.send(self._take_head() + out)
        if not self.client.writable:
            await self.client.drain()

    def end(self, trailers=()) -> None:
        tail = http1.LAST_CHUNK if self._chunked else b""
        self.bytes_sent += len(tail)
        self.client.send(self._take_head() + tail)

    def reset(self) -> None:
        self.keep = False
        self.client.reset()
