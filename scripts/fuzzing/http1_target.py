"""Fuzz target: the waypoint's HTTP/1.1 reader, `waypoint.http1.MessageReader` (sans-IO, on httptools).

An input is one client connection's bytes (one to four pipelined requests)
or one upstream response: a valid head (request line or status line,
headers, framing) and a body framed as the head says, then mutated: odd
methods, targets and versions, Content-Length repeated, signed, huge or
beside Transfer-Encoding, chunk sizes and extensions, trailers (a flood of
them now and then), bare LF line ends, folded and nameless headers, bytes
flipped, lines dropped or repeated. It is fed whole and, to a second
reader, in random chunks, and then the peer closes (`feed_eof`).

What must hold:
- `feed` and `feed_eof` raise nothing but `BadRequest`, with a 4xx or 5xx;
- events come as Head, Body..., End, per message; a body framed by
  Content-Length has that many bytes at its End; a response reader stops at
  its first End;
- the split changes nothing: both readers give the same events (bodies
  joined) and the same refusal, unless the refusal is the head limit (431),
  which depends on how much arrived at once;
- bounds: what the reader holds of a message (target, headers, trailers)
  stays within `MAX_HEAD`, and it keeps no events between calls.
"""

from __future__ import annotations

from waypoint import http1
from waypoint.errors import BadRequest

from scripts.fuzzing import Broken, Unbounded, measure_growth
from scripts.fuzzing.generate import chance, chunked, mutate_bytes, mutate_pieces, size

NAME = "http1"
EXPECTED = (BadRequest,)

METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
ODD_METHODS = ("get", "G ET", "", "GET\x00", "CONNECT", "TRACE", "PRI", "M" * 40, "\xc4\xd6")
TARGETS = ("/", "/a?b=1", "/productpage", "/api/v1/ratings/0?x=%20", "http://reviews:9080/a/b?x=1", "http://reviews")
ODD_TARGETS = ("*", "reviews:443", "/%00", "/a b", "//", "http://", "http://[::1", "https://a:99999/", "/\x7f", "/é", "")
VERSIONS = ("HTTP/1.1", "HTTP/1.1", "HTTP/1.0")
ODD_VERSIONS = ("HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "http/1.1", "HTTP/11", "", "HTTP/1.1 x", "HTTP/9.9")
STATUSES = (200, 201, 204, 301, 304, 404, 500, 503)
ODD_STATUSES = (100, 101, 103, 199, 0, 99, 600, 999, 1000, "2OO", "-1", "")
ODD_LENGTHS = (" 5", "+5", "-1", "5 5", "0x5", "99999999999999999999", "", "5,5", "٥", "05")
ODD_ENCODINGS = ("gzip", "gzip, chunked", "chunked, gzip", "identity", "Chunked", "chunked, chunked", "xchunked",
                 "chunked;q=1")


def start_line(rng, response: bool, odd) -> str:
    if response:
        status = rng.choice(ODD_STATUSES) if odd(0.1) else rng.choice(STATUSES)
        reason = rng.choice(("OK", "", "Not Found", "x" * 300, "\x00", "é")) if odd(0.2) else "OK"
        version = rng.choice(ODD_VERSIONS) if odd(0.05) else rng.choice(VERSIONS)
        return f"{version} {status} {reason}"
    method = rng.choice(ODD_METHODS) if odd(0.1) else rng.choice(METHODS)
    target = rng.choice(ODD_TARGETS) if odd(0.1) else rng.choice(TARGETS)
    if chance(rng, 0.03):
        target += "/x" * size(rng, 50, 40000)
    version = rng.choice(ODD_VERSIONS) if odd(0.05) else rng.choice(VERSIONS)
    return f"{method} {target} {version}"


def chunked_body(rng, data: bytes, odd) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        step = rng.randrange(1, len(data) - at + 1)
        size_text = b"%x" % step
        if odd(0.1):
            size_text = rng.choice((b"-1", b"ffffffffffffffffffff", b"g", b"", b" 1", b"0x1", size_text.upper(),
                                    b"00" + size_text))
        extension = rng.choice((b";a=b", b";a", b'; a="b c"')) if chance(rng, 0.1) else b""
        out.append(size_text + extension + b"\r\n" + data[at:at + step] + b"\r\n")
        at += step
    out.append(b"0\r\n")
    if chance(rng, 0.2):
        trailer = b"x-trailer: %d\r\n" % rng.randrange(100)
        out += [trailer] * (size(rng, 3, 3000) if chance(rng, 0.3) else 1)
    out.append(b"\r\n")
    return out


def message(rng, response: bool, wrong: float) -> bytes:
    """One request or response: head and body, each part valid unless `wrong` says otherwise."""
    def odd(p: float) -> bool:
        return rng.random() < p * wrong

    lines = [start_line(rng, response, odd).encode("utf-8", "surrogateescape")]
    if not response:
        lines.append(b"Host: " + rng.choice((b"reviews:9080", b"productpage", b"a", b"")))
    lines += [rng.choice((b"User-Agent: fuzz", b"Accept: */*", b"X-Request-Id: 1", b"Content-Type: text/plain",
                          b"Connection: keep-alive", b"Connection: close", b"Expect: 100-continue",
                          b"TE: trailers", b"Content-Type: application/grpc"))
              for _ in range(rng.randrange(4))]
    body = rng.randbytes(size(rng, 30, 70000))
    framing = rng.random()
    body_lines: list[bytes] = []
    if framing < 0.35:
        length = str(len(body))
        lines.append(b"Content-Length: " + (rng.choice(ODD_LENGTHS) if odd(0.1) else length).encode())
        if odd(0.1):
            lines.append(b"Content-Length: " + (length if chance(rng, 0.5) else str(len(body) + 1)).encode())
        body_lines = [body[:len(body) + (rng.randrange(-5, 5) if odd(0.1) else 0)]]
    elif framing < 0.65:
        encoding = rng.choice(ODD_ENCODINGS) if odd(0.1) else "chunked"
        lines.append(b"Transfer-Encoding: " + encoding.encode())
        if odd(0.05):
            lines.append(b"Content-Length: %d" % len(body))
        body_lines = chunked_body(rng, body, odd)
    elif framing < 0.75 and response:
        body_lines = [body]          # close-delimited
    if odd(0.05):
        lines.append(rng.choice((b"Upgrade: websocket", b"Connection: Upgrade", b"X-Folded: a\r\n b", b"NoColon",
                                 b": nameless", b"Host : spaced", b"X-Nul: a\x00b", b"X-High: \xff\xfe",
                                 b"X-Big: " + b"a" * size(rng, 100, 70000))))
    if odd(0.03):
        lines += [b"X-Many: %d" % n for n in range(size(rng, 100, 3000))]
    if odd(0.1):
        lines = mutate_pieces(rng, lines, flood=3000)
    newline = rng.choice((b"\n", b"\r")) if odd(0.05) else b"\r\n"
    raw = newline.join(lines) + newline + newline + b"".join(body_lines)
    if odd(0.1):
        raw = mutate_bytes(rng, raw)
    return raw


def held(reader: http1.MessageReader) -> int:
    """The bytes of the message the reader holds on to."""
    return len(reader._url) + sum(len(k) + len(v) for k, v in reader._headers) + len(reader._reason)


class Read:
    """One reader over a sequence of chunks: the events, the refusal if any, checked as they come."""

    def __init__(self, response: bool, head_request: bool) -> None:
        self.reader = http1.MessageReader(response=response, head_request=head_request)
        self.events: list = []
        self.refused: BadRequest | None = None
        self.in_message = False
        self.length: int | None = None
        self.body = 0

    def feed(self, chunk: bytes | None) -> None:
        if self.refused is not None:
            return
        try:
            events = self.reader.feed(chunk) if chunk is not None else self.reader.feed_eof()
        except BadRequest as e:
            if not 400 <= e.status < 600 or not str(e):
                raise Broken(f"BadRequest without a 4xx/5xx status and a message: {e.status} {e!r}") from None
            self.refused = e
            return
        for ev in events:
            self.check(ev)
        self.events += events
        reader = self.reader
        if reader._events:
            raise Unbounded(f"the reader kept {len(reader._events)} events after handing them over")
        if held(reader) > http1.MAX_HEAD:
            raise Unbounded(f"the reader holds {held(reader)} bytes of one message's head, more than "
                            f"MAX_HEAD ({http1.MAX_HEAD})")

    def check(self, ev) -> None:
        if isinstance(ev, http1.Head):
            if self.in_message:
                raise Broken("a Head before the End of the message before it")
            if self.reader.response and self.reader.messages > 1:
                raise Broken("a response reader read a second message")
            self.in_message, self.body = True, 0
            self.length = ev.content_length
            if self.reader.response and (self.reader.head_request or ev.status in (204, 304) or ev.status < 200):
                self.length = 0
        elif isinstance(ev, http1.Body):
            if not self.in_message:
                raise Broken("a Body outside a message")
            self.body += len(ev.data)
        elif isinstance(ev, http1.End):
            if not self.in_message:
                raise Broken("an End outside a message")
            if self.length is not None and self.body != self.length:
                raise Broken(f"{self.body} body bytes where Content-Length said {self.length}")
            self.in_message = False
        else:
            raise Broken(f"an event of an unknown kind: {ev!r}")


def joined(events: list) -> list:
    out: list = []
    for ev in events:
        if isinstance(ev, http1.Body) and out and isinstance(out[-1], http1.Body):
            out[-1] = http1.Body(out[-1].data + ev.data)
        elif not (isinstance(ev, http1.Body) and not ev.data):
            out.append(ev)
    return out


def run_one(rng) -> str:
    response = chance(rng, 0.3)
    head_request = response and chance(rng, 0.1)
    wrong = rng.choice((0.0, 0.0, 0.3, 1.0))
    count = 1 if response else rng.choice((1, 1, 1, 2, 4))
    data = b"".join(message(rng, response, wrong) for _ in range(count))
    eof = chance(rng, 0.5)
    whole, pieces = Read(response, head_request), Read(response, head_request)
    whole.feed(data)
    for piece in chunked(rng, data):
        pieces.feed(piece)
    if eof:
        whole.feed(None)
        pieces.feed(None)
    limits = {getattr(whole.refused, "status", None), getattr(pieces.refused, "status", None)}
    if 431 not in limits:
        if (whole.refused is None) != (pieces.refused is None) or (
                whole.refused is not None and whole.refused.status != pieces.refused.status):
            raise Broken(f"the split changed the outcome: whole {whole.refused!r}, in pieces {pieces.refused!r}")
        if whole.refused is None and joined(whole.events) != joined(pieces.events):
            raise Broken("the split changed the events")
    return "refused" if whole.refused or pieces.refused else "accepted"


# --- soak: one keep-alive connection, many requests ---------------------------------------

def soak(cycles: int) -> dict:
    """`cycles` requests (with and without bodies, chunked with trailers) on one reader, as one keep-alive
    connection brings them; returns the memory the second half left behind."""
    reader = http1.MessageReader()
    requests = (b"GET /a?b=%d HTTP/1.1\r\nHost: reviews\r\nX-Id: %d\r\n\r\n",
                b"POST /p/%d HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nX-Id: %d\r\n\r\nhello",
                b"PUT /q/%d HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nX-Id: %d\r\n\r\n"
                b"3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n")

    def cycle(n: int) -> None:
        raw = requests[n % 3] % (n, n)
        events = []
        for at in range(0, len(raw), 40):
            events += reader.feed(raw[at:at + 40])
        if not isinstance(events[-1], http1.End):
            raise Broken(f"request {n} did not end: {events}")

    return measure_growth(cycle, cycles, lambda: {"held_bytes": held(reader)})
