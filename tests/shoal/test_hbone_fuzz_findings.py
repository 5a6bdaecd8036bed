"""What `python -m scripts.fuzz --target hbone` found in the HBONE server core, kept as regressions.

Each case is the smallest input found for a bug the fuzzer found (fixed since): a header value that
is not UTF-8, an authority port with a digit int() refuses, a WindowOpened after a stream's StreamClosed.
All are fixed; each test keeps its fix.
"""

from __future__ import annotations

import struct

import hpack
import pytest

from shoal import hbone

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def connect(headers: list, flags: int = 0x4) -> bytes:
    """The client's preface and SETTINGS, then HEADERS (END_HEADERS) opening stream 1 with `headers`."""
    return PREFACE + frame(0x4, 0, 0, b"") + frame(0x1, flags, 1, hpack.Encoder().encode(headers))


def server() -> hbone.HboneServer:
    side = hbone.HboneServer()
    side.initiate()
    return side


def refuses_cleanly(data: bytes) -> list:
    """What the server makes of `data`; a ProtocolViolation counts as a clean refusal, anything else fails."""
    try:
        return server().receive_data(data)
    except hbone.ProtocolViolation:
        return []


def test_a_header_value_that_is_not_utf8_is_refused_as_a_protocol_violation():
    refuses_cleanly(connect([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"x-raw", b"\xff")]))


@pytest.mark.parametrize("authority", ["10.0.0.1:8²", "10.0.0.1:¹"])
def test_an_authority_with_a_digit_int_refuses_is_a_bad_authority(authority):
    with pytest.raises(hbone.BadAuthority):
        hbone.parse_authority(authority)
    events = refuses_cleanly(connect([(":method", "CONNECT"), (":authority", authority)]))
    assert not any(isinstance(e, hbone.ConnectRequested) for e in events)


def test_nothing_comes_after_a_streams_stream_closed():
    # A CONNECT ended (empty DATA, END_STREAM) before it was answered is reset by the server; the client's
    # WINDOW_UPDATE for it was already on its way.
    data = (connect([(":method", "CONNECT"), (":authority", "10.0.0.1:80")]) + frame(0x0, 0x1, 1, b"")
            + frame(0x8, 0, 1, struct.pack(">I", 1000)))
    events = server().receive_data(data)
    closed = events.index(hbone.StreamClosed(1))
    assert [e for e in events[closed + 1:] if getattr(e, "stream_id", None) == 1] == []


def test_a_header_value_that_is_not_utf8_ends_the_connection_with_a_goaway():
    side = server()
    side.data_to_send()
    with pytest.raises(hbone.ProtocolViolation):
        side.receive_data(connect([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"x-raw", b"\xff")]))
    sent, kinds = side.data_to_send(), []
    while sent:
        kinds.append(sent[3])
        sent = sent[9 + int.from_bytes(sent[:3], "big"):]
    assert 0x7 in kinds    # GOAWAY, as after h2's own protocol errors
