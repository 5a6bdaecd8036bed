"""DNS messages (RFC 1035, with RFC 6891's OPT record), sans-IO: bytes in, values out, and back.

What the ztunnel's DNS proxy needs, no more:
- `parse_query(data)` reads a query: the header, exactly one question, and
  the additional records (an OPT record there gives the client's UDP payload
  size). Anything else, or anything malformed, raises `MalformedQuery`,
  which carries the answer to send (FORMERR, or NOTIMP for an opcode other
  than QUERY) when the header could be read;
- `build_response(query, rcode, addresses, ...)` answers it with A or AAAA
  records (names compressed to the question), authoritative, truncated
  (TC, no answers) when it would not fit the client's UDP size, so the
  client asks again over TCP;
- `TcpFramer` splits a TCP stream into messages (RFC 1035 4.2.2's two-byte
  length) and `frame(message)` prefixes one.
Answers the proxy forwards are relayed as they come, never re-encoded.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from shoal.errors import ShoalError

HEADER = struct.Struct("!HHHHHH")
TYPE_A, TYPE_AAAA, TYPE_OPT = 1, 28, 41
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
CLASSIC_UDP_SIZE = 512            # without EDNS (RFC 1035 4.2.1)
OUR_UDP_SIZE = 1232               # what we advertise and accept at most (the DNS flag day's figure)
MAX_MESSAGE = 65535
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_MAX_NAME = 255


class MalformedQuery(ShoalError):
    """A query that cannot be answered as asked. `reply` is what to send back (None: nothing can be,
    the header itself is short)."""

    def __init__(self, message: str, reply: bytes | None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Question:
    name: str                     # lower case, no trailing dot ("" is the root)
    qtype: int
    qclass: int


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    question: Question
    question_wire: bytes          # the question as the client sent it (its letter case is echoed back)
    udp_size: int = CLASSIC_UDP_SIZE
    edns: bool = False

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & _RD)


def _error_reply(data: bytes, rcode: int) -> bytes | None:
    if len(data) < HEADER.size:
        return None
    query_id, flags = struct.unpack_from("!HH", data)
    opcode_and_rd = flags & 0x7900            # the opcode and RD, echoed
    return HEADER.pack(query_id, _QR | opcode_and_rd | _RA | rcode, 0, 0, 0, 0)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """(name, the offset after it) at `offset`; compression pointers are followed, never in a loop."""
    labels: list[str] = []
    end = None
    seen: set[int] = set()
    length = 0
    while True:
        if offset >= len(data):
            raise ValueError("name runs past the end of the message")
        size = data[offset]
        if size & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise ValueError("compression pointer runs past the end of the message")
            target = ((size & 0x3F) << 8) | data[offset + 1]
            if target in seen or target >= offset:
                raise ValueError("compression pointer loops or points forward")
            seen.add(target)
            end = offset + 2 if end is None else end
            offset = target
            continue
        if size & 0xC0:
            raise ValueError(f"label type 0x{size & 0xC0:02x} is not supported")
        offset += 1
        if size == 0:
            break
        label = data[offset:offset + size]
        if len(label) != size:
            raise ValueError("label runs past the end of the message")
        length += size + 1
        if length > _MAX_NAME:
            raise ValueError("name is longer than 255 octets")
        labels.append(label.decode("ascii", "replace").lower())
        offset += size
    return ".".join(labels), end if end is not None else offset


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"label {label!r} must be 1 to 63 octets")
        out += bytes([len(raw)]) + raw
    out.append(0)
    if len(out) > _MAX_NAME:
        raise ValueError("name is longer than 255 octets")
    return bytes(out)


def parse_query(data: bytes) -> Query:
    if len(data) < HEADER.size:
        raise MalformedQuery(f"message of {len(data)} bytes is shorter than a DNS header", None)
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & _QR:
        raise MalformedQuery("message is a response, not a query", None)   # never answer an answer
    if (flags >> 11) & 0xF != 0:
        raise MalformedQuery(f"opcode {(flags >> 11) & 0xF} is not QUERY", _error_reply(data, NOTIMP))
    if qdcount != 1 or ancount or nscount:
        raise MalformedQuery(f"a query holds one question and no answers (has {qdcount} questions, "
                             f"{ancount} answers, {nscount} authority records)", _error_reply(data, FORMERR))
    try:
        name, offset = read_name(data, HEADER.size)
        if offset + 4 > len(data):
            raise ValueError("question is cut short")
        qtype, qclass = struct.unpack_from("!HH", data, offset)
        question_end = offset + 4
        udp_size, edns = CLASSIC_UDP_SIZE, False
        offset = question_end
        for _ in range(arcount):
            _, offset = read_name(data, offset)
            if offset + 10 > len(data):
                raise ValueError("additional record is cut short")
            rtype, rclass, _, rdlength = struct.unpack_from("!HHIH", data, offset)
            offset += 10 + rdlength
            if offset > len(data):
                raise ValueError("additional record's data runs past the end of the message")
            if rtype == TYPE_OPT:
                if edns:
                    raise ValueError("more than one OPT record")
                edns, udp_size = True, min(max(rclass, CLASSIC_UDP_SIZE), OUR_UDP_SIZE)
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes after the last record")
    except ValueError as e:
        raise MalformedQuery(f"malformed query: {e}", _error_reply(data, FORMERR)) from None
    return Query(query_id, flags, Question(name, qtype, qclass), data[HEADER.size:question_end], udp_size, edns)


def _opt_record() -> bytes:
    return b"\x00" + struct.pack("!HHIH", TYPE_OPT, OUR_UDP_SIZE, 0, 0)


def build_response(query: Query, rcode: int = NOERROR, addresses: tuple[str, ...] = (), *, ttl: int = 30,
                   authoritative: bool = True, max_size: int = MAX_MESSAGE) -> bytes:
    """The answer to `query`: one A or AAAA record per address (of the question's type; others are
    left out). Larger than `max_size` (the client's UDP size, over UDP): TC set and no answers."""
    records = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        rtype = TYPE_A if ip.version == 4 else TYPE_AAAA
        if rtype == query.question.qtype:
            records.append(struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(ip.packed)) + ip.packed)
    flags = _QR | (query.flags & _RD) | _RA | (_AA if authoritative else 0) | rcode
    additional = [_opt_record()] if query.edns else []
    body = query.question_wire + b"".join(records) + b"".join(additional)
    if HEADER.size + len(body) > max_size:
        flags |= _TC
        records = []
        body = query.question_wire + b"".join(additional)
    header = HEADER.pack(query.id, flags, 1, len(records), 0, len(additional))
    return header + body


def response_code(message: bytes) -> int:
    return struct.unpack_from("!H", message, 2)[0] & 0xF


def truncated(message: bytes) -> bool:
    return bool(struct.unpack_from("!H", message, 2)[0] & _TC)


def answer_addresses(message: bytes) -> list[str]:
    """The A and AAAA addresses of a response (for tests and diagnostics)."""
    _, _, qdcount, ancount, _, _ = HEADER.unpack_from(message)
    offset = HEADER.size
    for _ in range(qdcount):
        _, offset = read_name(message, offset)
        offset += 4
    found = []
    for _ in range(ancount):
        _, offset = read_name(message, offset)
        rtype, _, _, rdlength = struct.unpack_from("!HHIH", message, offset)
        offset += 10
        if rtype in (TYPE_A, TYPE_AAAA):
            found.append(str(ipaddress.ip_address(message[offset:offset + rdlength])))
        offset += rdlength
    return found


def build_query(name: str, qtype: int, query_id: int = 0, *, udp_size: int | None = None) -> bytes:
    """A query with recursion desired (a client's; for tests and the proxy's own checks)."""
    additional = 0 if udp_size is None else 1
    message = HEADER.pack(query_id, _RD, 1, 0, 0, additional) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)
    if udp_size is not None:
        message += b"\x00" + struct.pack("!HHIH", TYPE_OPT, udp_size, 0, 0)
    return message


def frame(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a DNS message is at most {MAX_MESSAGE} bytes, not {len(message)}")
    return struct.pack("!H", len(message)) + message


class TcpFramer:
    """Bytes of a DNS-over-TCP stream in, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 2:
            size = struct.unpack_from("!H", self._buffer)[0]
            if len(self._buffer) < 2 + size:
                break
            messages.append(bytes(self._buffer[2:2 + size]))
            del self._buffer[:2 + size]
        return messages

    @property
    def pending(self) -> int:
        return len(self._buffer)
