"""HTTP/1.1 messages, sans-IO: httptools parses, this module turns its callbacks into events.

`MessageReader(response=False)` reads requests (one reader per client
connection, keep-alive included); `MessageReader(response=True,
head_request=...)` reads one response. `feed(data)` returns events:
`Head`, `Body` (de-chunked payload), `End`; `feed_eof()` ends a
close-delimited response body or says the peer left mid-message.

Heads, and trailers, are limited to `MAX_HEAD` bytes (431 otherwise) however
they arrive; malformed input raises `BadRequest` with the status to answer. A
response reader ends at its response's End: what follows is not read, whether
it came in the same `feed` or later. Serialization (`request_bytes`,
`response_head_bytes`, `chunk`) drops hop-by-hop headers and frames bodies
explicitly (Content-Length, or chunked when the length is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools

from waypoint.errors import BadRequest

MAX_HEAD = 64 * 1024
# Methods whose request without a body a proxy sends on without framing headers (request_bytes adds none).
PLAIN_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length", "expect"})
REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
           304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
           418: "I'm a teapot", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


@dataclass(slots=True)
class Head:
    """A message's head, as parsed. Treated as immutable (a changed copy is made with `dataclasses.replace`)
    but not frozen: a frozen dataclass of these ten fields costs over a microsecond more to make, and two are
    made per request (issue 18). It is also the head `waypoint.routing.decide` reads (`authority`, `path`,
    `query`), so a request has one head object."""
    method: str                                  # requests
    target: str                                  # requests
    status: int                                  # responses
    reason: str                                  # responses
    headers: tuple[tuple[str, str], ...]         # names lower-cased, order kept
    version: str                                 # "1.1", "1.0"
    keep_alive: bool
    content_length: int | None
    chunked: bool
    # (bytes, headers, target, method, reason, status): the head as it came, when it came plain and whole
    # in one read (MessageReader._plain). It stands for this head only while these are this head's very
    # objects: a copy with other headers, target, method, reason or status (`dataclasses.replace`) has none.
    received: tuple | None = field(default=None, compare=False, repr=False)

    def plain_bytes(self) -> bytes | None:
        """The head's bytes as received, when a proxy may pass them on as they are: HTTP/1.1, and no
        header a proxy drops or rewrites (hop-by-hop; one Content-Length that frames what came with it
        excepted: a response's, or a bodyless request's 0). None otherwise."""
        received = self.received
        if (received is not None and received[1] is self.headers and received[2] is self.target
                and received[3] is self.method and received[4] is self.reason and received[5] == self.status):
            return received[0]
        return None

    def header(self, name: str) -> str | None:
        value = None
        for k, v in self.headers:
            if k == name:
                value = v if value is None else f"{value},{v}"
        return value

    @property
    def authority(self) -> str:
        """The Host header (HTTP/2's :authority is made the Host: waypoint.h2server), "" without one."""
        return self.header("host") or ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def body_until_close(self) -> bool:
        return self.content_length is None and not self.chunked


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    trailers: tuple[tuple[str, str], ...] = ()   # HTTP/2 trailers (gRPC status); HTTP/1.1 chunked trailers are dropped


END = End()   # an HTTP/1.1 message's end (no trailers), one for all: events are immutable


class MessageReader:
    def __init__(self, response: bool = False, head_request: bool = False) -> None:
        self.response = response
        self.head_request = head_request
        self._parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(self)
        self._events: list = []
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []   # the head's, as they came
        self._status = 0
        self._reason = b""
        self._head_bytes = 0       # bytes fed while waiting for a head to complete
        self._held = 0             # bytes of the message kept or parsed (target, reason, headers, trailers)
        self._in_message = False   # a message has begun and not ended
        self._in_head = True
        self._head: Head | None = None
        self._hop = 0              # the last head's hop-by-hop headers: 1 each, 100 more for a Content-Length
        self.done = False          # a response was read to its end
        self.messages = 0          # heads seen

    # httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._reason = b""
        self._held = 0
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        if not self.done:
            self._hold(len(url))
            self._url += url

    def on_status(self, status: bytes) -> None:
        if not self.done:  # (httptools hands a reason split across reads over in pieces)
            self._hold(len(status))
            self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            return
        self._held += len(name) + len(value)   # (_hold, inline: this runs for every header)
        if self._held > MAX_HEAD:
            self._hold(0)
        if self._in_head:  # trailers are counted, and dropped
            self._headers.append((name, value))   # decoded together when the head is complete

    def _hold(self, size: int) -> None:
        """Counts a message's head and trailers against MAX_HEAD as they are parsed. The count of bytes fed in
        feed() misses a head that arrives whole in one read, and trailers, which come after the head."""
        self._held += size
        if self._held > MAX_HEAD:
            raise BadRequest(f"message head or trailers larger than {MAX_HEAD} bytes", 431)

    def on_headers_complete(self) -> None:
        if self.done:
            return
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        headers = tuple([(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in self._headers])
        lengths, encodings = (), ()   # (made only for a message that has them: most have one length at most)
        hop = 0
        for k, v in headers:   # one pass: framing headers are hop-by-hop, and most messages have no other
            if k in HOP_BY_HOP:
                hop += 1
                if k == "content-length":
                    lengths = {*lengths, v.strip()}
                    hop += 100   # (one Content-Length alone counts 101)
                elif k == "transfer-encoding":
                    encodings = (*encodings, v)
        self._hop = hop
        chunked = bool(encodings) and "chunked" in ",".join(encodings).lower()
        if len(lengths) > 1:
            raise BadRequest("conflicting Content-Length headers")
        content_length = None
        if lengths and not chunked:
            content_length = int(next(iter(lengths)))
        method = target = reason = ""
        status = 0
        if self.response:
            status = parser.get_status_code()
            reason = self._reason.decode("latin-1")
        else:
            method = parser.get_method().decode("latin-1")
            target = self._url.decode("latin-1")
        if not self.response and content_length is None and not chunked:
            content_length = 0  # a request without framing has no body
        head = Head(method, target, status, reason, headers, parser.get_http_version(), parser.should_keep_alive(),
                    content_length, chunked)
        self._head = head
        self.messages += 1
        self._events.append(head)
        if self.response and (self.head_request or status in (204, 304) or 100 <= status < 200):
            self._finish()

    def _plain(self, data: bytes, events: list) -> None:
        """Gives a head that came whole in `data`, with all of its message and nothing else (no empty line
        before or after), the bytes it came in, when they need no change to be passed on: a request
        without a body and without hop-by-hop headers, or whose one hop-by-hop header is a
        `Content-Length: 0` (as bench.loadgen and many clients send on a GET: it says "no body" to the
        endpoint as it did to us); a response framed by its one Content-Length and without other
        hop-by-hop headers. (httptools refuses bare CR or LF and folded lines, which a
        server might read otherwise than it did: tests/waypoint/test_http1.py holds it to that.)"""
        if len(events) < 2 or self._in_message or not isinstance(events[0], Head) or data[0] == 13:
            return
        head = events[0]
        if head.version != "1.1":
            return
        if self.response:
            if (self._hop != 101 or self.head_request or head.status < 200 or head.status in (204, 304)
                    or sum(len(e.data) for e in events[1:-1]) != head.content_length):
                return
            size = len(data) - head.content_length
        else:
            if len(events) != 2 or not (head.content_length == 0 if self._hop == 101
                                        else not self._hop and head.method in PLAIN_METHODS):
                return
            size = len(data)
        if data.find(b"\r\n\r\n") != size - 4:
            return
        # (the reader made this head a moment ago, and no one else holds it yet)
        head.received = (bytes(data[:size]) if size != len(data) else bytes(data),
                         head.headers, head.target, head.method, head.reason, head.status)

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self._events.append(Body(bytes(body)))

    def on_message_complete(self) -> None:
        self._in_head = True
        self._in_message = False
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        self._events.append(END)
        if self.response:
            self.done = True

    # the interface ----------------------------------------------------------------------

    def again(self, head_request: bool = False) -> bool:
        """Re-arms a response reader for the next response on its kept-alive connection (one reader and
        httptools parser per connection, not per answer); False when it cannot be: its last response did
        not end where httptools ended it (an answer to HEAD, or a 1xx, or bytes after the End that began
        another message), so its parser's state is not at a message's start."""
        if not (self.response and self.done and not self._in_message and self._head is not None
                and self._head.status >= 200 and not self.head_request):
            return False
        self.head_request = head_request
        self.done = False
        self._head = None
        return True

    def feed(self, data: bytes) -> list:
        if self.done:
            return []
        fresh = not self._in_message   # `data` starts a message, if it starts one
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError, ValueError) as e:
            if not self.done:  # (a response that ended earlier in `data` stands; what follows is not read)
                raise self._refusal(e) from None
        if self._in_head and self._head_bytes > MAX_HEAD:
            raise BadRequest(f"request head larger than {MAX_HEAD} bytes", 431)
        events, self._events = self._events, []
        if fresh:
            self._plain(data, events)
        return events

    @staticmethod
    def _refusal(e: Exception) -> BadRequest:
        if isinstance(e, httptools.HttpParserUpgrade):
            return BadRequest("protocol upgrades (WebSocket, h2c) are not supported by this waypoint", 501)
        if isinstance(e.__context__, BadRequest):
            return e.__context__
        return BadRequest(f"malformed HTTP/1.1: {e}")

    def feed_eof(self) -> list:
        """The peer closed. Ends a close-delimited response; elsewhere mid-message is an error."""
        if self.done:
            return []
        if self.response and self._head is not None and self._head.body_until_close:
            self._finish()
            events, self._events = self._events, []
            return events
        if self._in_message:  # (told by the parser: bytes fed since the last message need not have begun one)
            raise BadRequest("the connection closed in the middle of a message")
        return []


# --- serialization ---------------------------------------------------------------------

def _lines(headers) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)


def end_to_end(headers) -> list[tuple[str, str]]:
    """Headers a proxy forwards: without hop-by-hop ones (and those the Connection header names)."""
    named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


def request_bytes(method: str, target: str, headers, body: bytes, *, close: bool = True) -> bytes:
    """A whole request, its body framed by Content-Length."""
    length = len(body) if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS") else None
    return request_head_bytes(method, target, headers, content_length=length, chunked=False, close=close) + body


def request_head_bytes(method: str, target: str, headers, *, content_length: int | None, chunked: bool,
                       close: bool = True) -> bytes:
    """A request head; the body that follows is framed by content_length, or chunked (`chunk`, `LAST_CHUNK`)."""
    head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), _lines(headers)]
    if chunked:
        head.append(b"transfer-encoding: chunked\r\n")
    elif content_length is not None:
        head.append(f"content-length: {content_length}\r\n".encode())
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head)


def response_head_bytes(status: int, headers, *, content_length: int | None, close: bool, reason: str = "") -> bytes:
    """A response head; content_length None means the body follows chunked."""
    out = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Unknown')}\r\n".encode("latin-1"), _lines(headers)]
    if content_length is not None:
        out.append(f"content-length: {content_length}\r\n".encode())
    elif status not in (204, 304) and not 100 <= status < 200:
        out.append(b"transfer-encoding: chunked\r\n")
    if close:
        out.append(b"connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


def local_response(status: int, body: str, headers=(), *, close: bool = False) -> bytes:
    """A response the waypoint answers itself (refusals, faults)."""
    data = body.encode()
    return response_head_bytes(status, [("content-type", "text/plain"), *headers], content_length=len(data),
                               close=close) + data
