"""A client's side of an HTTP/2 connection, generated: valid frames first, then their fields mutated.

`Conversation` keeps what a real client would (its HPACK encoder, the
streams it opened) so that most frames make sense to the server and reach
deep into it; then some fields are set to edge values (length, flags,
stream id, type, settings, window increments), header blocks are corrupted
or split over CONTINUATION, and whole frames are dropped, repeated, swapped
or flooded (rapid reset is HEADERS and RST_STREAM, many times).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

import hpack

from scripts.fuzzing.generate import chance, edgy, junk, mutate_bytes, size

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

TYPICAL_SETTINGS = ((1, 4096), (1, 0), (2, 0), (3, 100), (3, 1), (4, 65535), (4, 1 << 20), (4, 0), (5, 16384),
                    (5, 1 << 20), (6, 8192), (8, 1), (9, 1))

# Digits Python's str.isdigit() takes but int() may not: where "is it a number" checks go wrong.
ODD_DIGITS = ("²", "٣", "３", "𝟘", "¹", "߁", "\u0660")


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes
    length: int | None = None   # the length field, when it lies about the payload

    def encode(self) -> bytes:
        length = len(self.payload) if self.length is None else self.length
        return struct.pack(">I", length & 0xFFFFFF)[1:] + struct.pack(">BBI", self.kind & 0xFF, self.flags & 0xFF,
                                                                        self.stream_id & 0xFFFFFFFF) + self.payload


def odd_text(rng, text):
    """`text` with a character replaced, dropped or repeated, or a digit swapped for an odd one."""
    if isinstance(text, bytes):
        return mutate_bytes(rng, text)
    if not text:
        return rng.choice(("", " ", "\x00", "é", "\u2028"))
    at = rng.randrange(len(text))
    roll = rng.randrange(5)
    if roll == 0:
        return text[:at] + rng.choice(ODD_DIGITS) + text[at + 1:]
    if roll == 1:
        return text[:at] + text[at + 1:]
    if roll == 2:
        return text[:at] + chr(rng.randrange(0x20, 0x7F)) + text[at:]
    if roll == 3:
        return text + text[at:] * rng.randrange(1, 4)
    return text[:at] + chr(rng.randrange(0x80, 0x800)) + text[at + 1:]


def mutate_headers(rng, headers: list[tuple[str, str]]) -> list:
    """A header list as a sloppy or hostile client might send it (names upper-cased, pseudo-headers
    repeated or late, connection-specific fields, values that are not text, one huge value)."""
    out: list = list(headers)
    for _ in range(rng.randrange(1, 3)):
        roll = rng.randrange(10)
        at = rng.randrange(len(out) + 1)
        if roll == 0 and out:
            del out[min(at, len(out) - 1)]
        elif roll == 1 and out:
            name, value = out[min(at, len(out) - 1)]
            out[min(at, len(out) - 1)] = (name, odd_text(rng, value))
        elif roll == 2 and out:
            out.append(out[min(at, len(out) - 1)])   # a pseudo-header twice, or after a regular one
        elif roll == 3:
            out.insert(at, rng.choice((("connection", "keep-alive"), ("te", "gzip"), ("transfer-encoding", "chunked"),
                                       ("upgrade", "h2c"), ("keep-alive", "1"), ("proxy-connection", "x"))))
        elif roll == 4:
            out.insert(at, (rng.choice(("X-Upper", "", ":unknown", ":protocol", ":path", ":status", "a b")), "v"))
        elif roll == 5:
            out.insert(at, (b"x-raw", rng.randbytes(rng.randrange(1, 9))))   # not UTF-8, not latin-1 text
        elif roll == 6:
            out.insert(at, ("x-big", "a" * size(rng, 100, 70000)))
        elif roll == 7:
            out.insert(at, ("x-nul", "a\x00b\r\nc"))
        elif roll == 8 and out:
            name, value = out[min(at, len(out) - 1)]
            out[min(at, len(out) - 1)] = (odd_text(rng, name), value)
        else:
            out.extend(("x-many", str(i)) for i in range(rng.randrange(200)))
    return out


class Conversation:
    """One client connection being generated. `request(rng)` gives the headers of a new request.

    `noise` scales every deliberate fault: at 0 the conversation is one a
    correct client could send (so the server's deep paths run), at 1 about
    one frame in ten is wrong somewhere."""

    def __init__(self, rng, request: Callable[["Conversation"], list], *, end_on_headers: float, max_frame: int,
                 max_streams: int, noise: float = 1.0) -> None:
        self.rng = rng
        self.request = request
        self.end_on_headers = end_on_headers    # how often a HEADERS frame also ends its stream
        self.max_frame = max_frame              # the server's frame size limit (DATA sizes go around it)
        self.max_streams = max_streams          # the server's concurrency limit, which a correct client keeps
        self.noise = noise
        self.encoder = hpack.Encoder()
        self.next_id = 1
        self.opened: list[int] = []

    def odd(self, p: float) -> bool:
        """Whether to do something wrong that a correct client does with probability 0."""
        return self.rng.random() < p * self.noise

    # one frame of each kind -----------------------------------------------------------------

    def stream(self, new: bool = False) -> int:
        """A stream id: usually one opened, sometimes 0, even, too high or reused."""
        rng = self.rng
        if new:
            if len(self.opened) >= self.max_streams and not self.odd(1):
                return self.opened[-1]     # a correct client waits for a slot; reuse one (an error h2 sees)
            if not self.odd(0.1) or not self.opened:
                sid = self.next_id
                self.next_id += 2 * (rng.randrange(1, 1000) if chance(rng, 0.05) else 1)
                self.opened.append(sid)
                return sid
            return rng.choice((rng.choice(self.opened), 0, 2, self.next_id + 1, 0x7FFFFFFF, 0x80000001))
        if self.opened and not self.odd(0.1):
            return rng.choice(self.opened[-4:])
        return rng.choice((0, 1, 2, 3, self.next_id, edgy(rng, 31, 1)))

    def settings(self, ack: bool = False) -> Frame:
        """SETTINGS (or its ACK), now and then with an edge value or a bad length."""
        rng = self.rng
        if ack:
            return Frame(SETTINGS, ACK, 0, junk(rng, 12) if self.odd(0.05) else b"")
        pairs = b""
        for _ in range(rng.randrange(0, 6)):
            code, value = rng.choice(TYPICAL_SETTINGS)
            if self.odd(0.2):
                code, value = edgy(rng, 16, code), edgy(rng, 32, value)
            pairs += struct.pack(">HI", code, value)
        if self.odd(0.05):
            pairs += junk(rng, 5)     # not a multiple of 6
        return Frame(SETTINGS, 0, 1 if self.odd(0.03) else 0, pairs)

    def header_block(self, headers: list) -> bytes:
        try:
            block = self.encoder.encode(headers, huffman=chance(self.rng, 0.5))
        except (hpack.HPACKError, UnicodeError, TypeError):
            block = b""
        if self.odd(0.05):
            block = mutate_bytes(self.rng, block)
        return block

    def headers(self, trailers: bool = False) -> list[Frame]:
        """HEADERS opening a stream (or trailers on one), the block maybe split over CONTINUATION frames."""
        rng = self.rng
        sid = self.stream(new=not trailers)
        headers = self.request(self) if not trailers else [("grpc-status", "0"), ("x-trailer", "t")]
        if self.odd(0.15):
            headers = mutate_headers(rng, headers)
        block = self.header_block(headers)
        flags = END_STREAM if trailers or chance(rng, self.end_on_headers) else 0
        prefix = b""
        if chance(rng, 0.08):
            flags |= PRIORITY_FLAG
            dependency = edgy(rng, 32, 0) if self.odd(0.5) else 0
            prefix = struct.pack(">IB", dependency, edgy(rng, 8, 15))
        pad = b""
        if chance(rng, 0.08):
            flags |= PADDED
            pad_length = edgy(rng, 8, rng.randrange(16))
            prefix = bytes([pad_length]) + prefix
            pad = b"" if self.odd(0.1) else bytes(pad_length)   # short padding: a lie
        if chance(rng, 0.85):
            return [Frame(HEADERS, flags | END_HEADERS, sid, prefix + block + pad)]
        cut = rng.randrange(len(block) + 1)
        frames = [Frame(HEADERS, flags, sid, prefix + block[:cut] + pad)]
        rest = block[cut:]
        while True:
            take = rng.randrange(1, max(2, len(rest) + 1))
            frames.append(Frame(CONTINUATION, 0, sid + 2 if self.odd(0.05) else sid, rest[:take]))
            rest = rest[take:]
            if not rest:
                break
        if not self.odd(0.1):
            frames[-1].flags |= END_HEADERS
        return frames

    def data(self) -> Frame:
        rng = self.rng
        length = size(rng, 200, self.max_frame + 100) if self.noise else rng.randrange(600)
        flags = END_STREAM if chance(rng, 0.3) else 0
        payload = rng.randbytes(length)
        if chance(rng, 0.05):
            flags |= PADDED
            pad_length = edgy(rng, 8, 4)
            payload = bytes([pad_length]) + payload + (b"" if self.odd(0.1) else bytes(pad_length))
        return Frame(DATA, flags, self.stream(), payload)

    def frame(self) -> list[Frame]:
        """One frame of any kind, weighted towards what carries a conversation forward."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.25 or not self.opened and not self.odd(0.2):
            if len(self.opened) >= self.max_streams and not self.odd(1):
                return [self.data()]
            return self.headers()
        if roll < 0.55:
            return [self.data()]
        if roll < 0.62:
            increment = edgy(rng, 32, 65535) if self.odd(0.5) else rng.randrange(1, 1 << 20)
            return [Frame(WINDOW_UPDATE, 0, 0 if chance(rng, 0.5) else self.stream(),
                          junk(rng, 6) if self.odd(0.05) else struct.pack(">I", increment))]
        if roll < 0.68:
            code = edgy(rng, 32, 8) if self.odd(0.5) else rng.choice((0, 8, 2))
            return [Frame(RST_STREAM, 0, self.stream(), junk(rng, 6) if self.odd(0.05) else struct.pack(">I", code))]
        if roll < 0.73:
            return [self.settings(ack=chance(rng, 0.3))]
        if roll < 0.77:
            return [Frame(PING, ACK if chance(rng, 0.2) else 0, 1 if self.odd(0.05) else 0,
                          rng.randbytes(rng.randrange(16) if self.odd(0.05) else 8))]
        if roll < 0.80:
            dependency = edgy(rng, 32, 0) if self.odd(0.5) else 0
            return [Frame(PRIORITY, 0, self.stream(), junk(rng, 7) if self.odd(0.1) else
                          struct.pack(">IB", dependency, edgy(rng, 8, 15)))]
        if roll < 0.82 and self.odd(0.5):
            return [Frame(GOAWAY, 0, 0, struct.pack(">II", edgy(rng, 31, 0), edgy(rng, 32, 0)) + junk(rng, 16))]
        if roll < 0.84 and self.odd(1):
            return [Frame(PUSH_PROMISE, END_HEADERS, self.stream(),
                          struct.pack(">I", self.next_id + 1) + self.header_block(self.request(self)))]
        if roll < 0.86 and self.odd(1):
            return [Frame(CONTINUATION, rng.choice((0, END_HEADERS)), self.stream(), junk(rng, 20))]
        if roll < 0.89:
            return self.headers(trailers=True)
        if roll < 0.92:
            return [Frame(rng.randrange(10, 256), rng.randrange(256), self.stream(), junk(rng, 40))]
        if roll < 0.95 and self.noise:
            return self.rapid_reset()
        return [Frame(DATA, END_STREAM, self.stream(), b"")]

    def rapid_reset(self) -> list[Frame]:
        """Streams opened and cancelled at once, many times (CVE-2023-44487)."""
        out: list[Frame] = []
        headers = self.request(self)
        block = self.header_block(headers)
        again = self.header_block(headers)   # the same headers again: all indexed now, so it can repeat as is
        for n in range(size(self.rng, 8, 300)):
            sid = self.stream(new=True)
            out.append(Frame(HEADERS, END_HEADERS, sid, block if n == 0 else again))
            out.append(Frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
        return out

    # a whole connection -------------------------------------------------------------------

    def frames(self, count: int) -> list[Frame]:
        """SETTINGS, then `count` frames (the preface is the caller's)."""
        out = [self.settings()]
        for _ in range(count):
            out += self.frame()
        if chance(self.rng, 0.1):
            out.append(Frame(GOAWAY, 0, 0, struct.pack(">II", self.next_id, 0)))
        return out

    def mutate_fields(self, frames: list[Frame], rate: float = 0.05) -> None:
        """Sets a field of a few frames to something else: length, flags, stream id or type."""
        rng = self.rng
        for frame in frames:
            if not self.odd(rate):
                continue
            roll = rng.randrange(5)
            if roll == 0:
                frame.length = edgy(rng, 24, len(frame.payload) + rng.choice((-1, 1)))
            elif roll == 1:
                frame.flags = rng.randrange(256)
            elif roll == 2:
                frame.stream_id = edgy(rng, 32, frame.stream_id ^ 1)
            elif roll == 3:
                frame.kind = rng.randrange(11)
            else:
                frame.payload = mutate_bytes(rng, frame.payload)


def noise(rng) -> float:
    """How wrong one generated conversation is: a third clean, the rest a little or very."""
    return rng.choice((0.0, 0.0, 0.2, 0.5, 1.0, 1.0))


def preface(talk: Conversation) -> bytes:
    return mutate_bytes(talk.rng, PREFACE) if talk.odd(0.02) else PREFACE
