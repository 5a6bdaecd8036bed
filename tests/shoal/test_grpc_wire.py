"""shoal.grpc_wire, the sans-IO part of the gRPC client: message framing over any split of the DATA,
statuses from trailers, the checks of an answer's headers. No socket; the channel's tests drive a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.grpc_wire import (MessageReader, RpcError, StatusCode, check_response_headers, encode_message,
                             encode_timeout, status_of)


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(min_value=0, max_value=2000)))
def test_messages_split_across_frames_anyhow_come_out_whole_and_in_order(messages, cuts):
    wire = b"".join(encode_message(m) for m in messages)
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    reader, out = MessageReader(max_message=300), []
    for start, end in zip(bounds, bounds[1:]):
        out += reader.feed(wire[start:end])
    assert out == messages and reader.pending() == 0


@given(st.binary(min_size=1, max_size=300), st.integers(min_value=1))
def test_a_message_cut_short_is_pending_not_delivered(message, keep):
    framed = encode_message(message)
    keep = keep % len(framed)
    reader = MessageReader(max_message=300)
    assert reader.feed(framed[:keep]) == [] and reader.pending() == keep


@pytest.mark.parametrize("prefix,code,words", [
    (b"\x01\x00\x00\x00\x01", StatusCode.INTERNAL, "compressed message though none was offered"),
    (b"\x02\x00\x00\x00\x01", StatusCode.INTERNAL, "flag byte 2"),
    (b"\x00\x00\x00\x01\x2d", StatusCode.RESOURCE_EXHAUSTED, "message of 301 bytes; the limit is 300"),
])
def test_a_bad_prefix_is_refused_before_its_message_is_buffered(prefix, code, words):
    with pytest.raises(RpcError) as info:
        MessageReader(max_message=300).feed(prefix)       # the prefix alone: nothing of the body waited for
    assert info.value.code is code and words in info.value.details


@pytest.mark.parametrize("trailers,code,details", [
    ({b"grpc-status": b"0"}, None, None),
    ({b"grpc-status": b"7", b"grpc-message": b"only%20node1%3A%20%E2%9C%93"}, StatusCode.PERMISSION_DENIED,
     "only node1: \u2713"),
    ({b"grpc-status": b"99"}, StatusCode.UNKNOWN, ""),
    ({b"grpc-status": b"ok"}, StatusCode.UNKNOWN, ""),
    ({}, StatusCode.INTERNAL, "the server ended the call without a grpc-status"),
])
def test_the_status_in_trailers(trailers, code, details):
    outcome = status_of(trailers)
    if code is None:
        assert outcome is None
    else:
        assert (outcome.code, outcome.details) == (code, details)


@pytest.mark.parametrize("headers,code", [
    ({b":status": b"200", b"content-type": b"application/grpc"}, None),
    ({b":status": b"200", b"content-type": b"application/grpc+proto"}, None),
    ({b":status": b"200", b"content-type": b"application/grpc; charset=utf-8"}, None),
    ({b":status": b"200", b"content-type": b"application/grpc-web"}, StatusCode.UNKNOWN),
    ({b":status": b"200", b"content-type": b"application/grpcx"}, StatusCode.UNKNOWN),
    ({b":status": b"200"}, StatusCode.UNKNOWN),
    ({b":status": b"404", b"content-type": b"text/html"}, StatusCode.UNIMPLEMENTED),
    ({b":status": b"401"}, StatusCode.UNAUTHENTICATED),
    ({b":status": b"503"}, StatusCode.UNAVAILABLE),
    ({b":status": b"418"}, StatusCode.UNKNOWN),
    ({}, StatusCode.UNKNOWN),
])
def test_an_answers_headers_are_grpc_or_mapped_to_a_status(headers, code):
    if code is None:
        check_response_headers(headers)
        return
    with pytest.raises(RpcError) as info:
        check_response_headers(headers)
    assert info.value.code is code


@pytest.mark.parametrize("seconds,wire", [(7.5, b"7500m"), (0.0001, b"1m"), (0, b"1m"), (99_999.999, b"99999999m"),
                                          (100_000, b"100000S"), (1e12, b"99999999S")])
def test_a_deadline_is_at_most_eight_digits_and_a_unit(seconds, wire):
    assert encode_timeout(seconds) == wire
