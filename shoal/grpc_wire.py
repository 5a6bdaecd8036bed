"""gRPC's wire format over HTTP/2, without I/O: status codes, message framing, headers.

What `shoal.grpc_channel` (the proxies' client of the control plane) sends
and reads, from the gRPC over HTTP/2 protocol description:

- a call is one HTTP/2 stream: a POST to `/<package>.<Service>/<Method>`
  with `content-type: application/grpc`, `te: trailers` and, when the call
  has a deadline, `grpc-timeout`;
- each message is a 5-byte prefix (a compressed flag, then the length as a
  32-bit big-endian integer) and the serialized protobuf;
- the call's outcome is `grpc-status` (and `grpc-message`, percent-encoded)
  in the trailers, or in the only HEADERS frame of a "trailers-only" answer.

No compression is offered (no `grpc-accept-encoding`), so a compressed
message is a protocol error. Everything here raises `RpcError` with a status
code the callers act on (UNAVAILABLE: retry; UNAUTHENTICATED,
PERMISSION_DENIED: fix the token; ...).
"""

from __future__ import annotations

import enum
import struct
from urllib.parse import unquote

from shoal.errors import ShoalError

PREFIX = struct.Struct(">BI")
CONTENT_TYPE = "application/grpc"


class StatusCode(enum.IntEnum):
    """gRPC's status codes (the numbers are the protocol's)."""
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(ShoalError):
    """A call ended with a status other than OK; `code` says which, `details` what the peer said."""

    response_flag = "UAEX"

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# HTTP statuses of an answer that is not gRPC, mapped as the gRPC spec's table does.
_HTTP_TO_GRPC = {400: StatusCode.INTERNAL, 401: StatusCode.UNAUTHENTICATED, 403: StatusCode.PERMISSION_DENIED,
                 404: StatusCode.UNIMPLEMENTED, 429: StatusCode.UNAVAILABLE, 502: StatusCode.UNAVAILABLE,
                 503: StatusCode.UNAVAILABLE, 504: StatusCode.UNAVAILABLE}


def request_headers(path: str, authority: str, metadata: tuple[tuple[str, str], ...],
                    timeout: float | None) -> list[tuple[bytes, bytes]]:
    headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", path.encode()),
               (b":authority", authority.encode()), (b"content-type", CONTENT_TYPE.encode()),
               (b"te", b"trailers"), (b"user-agent", b"shoal-grpc")]
    if timeout is not None:
        headers.append((b"grpc-timeout", encode_timeout(timeout)))
    for key, value in metadata:
        if key.startswith(":") or key.lower() != key:
            raise ValueError(f"metadata key {key!r} must be lower case and not a pseudo-header")
        headers.append((key.encode(), value.encode()))
    return headers


def encode_timeout(seconds: float) -> bytes:
    """`grpc-timeout`: at most 8 digits and a unit; milliseconds unless that needs more digits."""
    millis = max(1, int(seconds * 1000 + 0.999))
    if millis < 100_000_000:
        return b"%dm" % millis
    return b"%dS" % min(int(seconds + 0.999), 99_999_999)


def encode_message(payload: bytes) -> bytes:
    return PREFIX.pack(0, len(payload)) + payload


class MessageReader:
    """Splits a stream's DATA into messages; refuses compressed or oversized ones before buffering them."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= PREFIX.size:
            flag, length = PREFIX.unpack_from(self._buffer)
            if flag not in (0, 1):
                raise RpcError(StatusCode.INTERNAL, f"the server sent a message with flag byte {flag}: "
                               "not gRPC framing")
            if flag == 1:
                raise RpcError(StatusCode.INTERNAL, "the server sent a compressed message though none was "
                               "offered")
            if length > self.max_message:
                raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"the server sent a message of {length} bytes; "
                               f"the limit is {self.max_message} (ChannelSettings.max_receive_message)")
            if len(self._buffer) < PREFIX.size + length:
                break
            out.append(bytes(self._buffer[PREFIX.size:PREFIX.size + length]))
            del self._buffer[:PREFIX.size + length]
        return out

    def pending(self) -> int:
        """Bytes of a message begun and not finished."""
        return len(self._buffer)


def check_response_headers(headers: dict[bytes, bytes]) -> None:
    """The first HEADERS of an answer: HTTP 200 and a gRPC content type, else the mapped status."""
    status = headers.get(b":status", b"")
    if status != b"200":
        code = _HTTP_TO_GRPC.get(int(status) if status.isdigit() else 0, StatusCode.UNKNOWN)
        raise RpcError(code, f"the server answered HTTP {status.decode(errors='replace') or '(none)'}, not gRPC")
    content_type = headers.get(b"content-type", b"")
    if content_type.split(b";")[0].split(b"+")[0].strip() != CONTENT_TYPE.encode():   # application/grpc[+proto]
        raise RpcError(StatusCode.UNKNOWN, f"the server answered content-type "
                       f"{content_type.decode(errors='replace') or '(none)'}, not {CONTENT_TYPE}")


def status_of(trailers: dict[bytes, bytes]) -> RpcError | None:
    """None for OK; otherwise the error the trailers (or a trailers-only answer) carry."""
    raw = trailers.get(b"grpc-status")
    if raw is None:
        return RpcError(StatusCode.INTERNAL, "the server ended the call without a grpc-status")
    try:
        code = StatusCode(int(raw))
    except ValueError:
        code = StatusCode.UNKNOWN
    if code is StatusCode.OK:
        return None
    return RpcError(code, unquote(trailers.get(b"grpc-message", b"").decode("utf-8", errors="replace")))
