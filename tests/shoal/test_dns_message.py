"""The DNS message core: queries parsed, answers built, TCP framing; Hypothesis over names and bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from shoal import dns_message as dm

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
NAMES = st.lists(LABEL, min_size=1, max_size=6).map(".".join)


@given(NAMES, st.sampled_from([dm.TYPE_A, dm.TYPE_AAAA, 16, 33]), st.integers(0, 0xFFFF),
       st.one_of(st.none(), st.integers(0, 0xFFFF)))
def test_a_query_round_trips(name, qtype, query_id, udp_size):
    query = dm.parse_query(dm.build_query(name, qtype, query_id, udp_size=udp_size))
    assert (query.id, query.question, query.recursion_desired, query.edns) == (
        query_id, dm.Question(name, qtype, dm.CLASS_IN), True, udp_size is not None)
    expected_size = dm.CLASSIC_UDP_SIZE if udp_size is None else min(max(udp_size, 512), dm.OUR_UDP_SIZE)
    assert query.udp_size == expected_size


def test_names_are_read_in_lower_case_and_the_question_echoed_as_sent():
    wire = dm.build_query("Web.Shop", dm.TYPE_A, 7)
    query = dm.parse_query(wire)
    reply = dm.build_response(query, dm.NOERROR, ("198.18.16.10",))
    assert query.question.name == "web.shop"
    assert b"\x03Web\x04Shop\x00" in reply
    assert dm.answer_addresses(reply) == ["198.18.16.10"]


@given(st.lists(st.ip_addresses(), max_size=40), st.sampled_from([dm.TYPE_A, dm.TYPE_AAAA]))
def test_answers_carry_the_addresses_of_the_asked_family_or_are_truncated(addresses, qtype):
    query = dm.parse_query(dm.build_query("svc.ns.svc.cluster.local", qtype, 99))
    texts = tuple(str(a) for a in addresses)
    reply = dm.build_response(query, dm.NOERROR, texts, max_size=dm.CLASSIC_UDP_SIZE)
    version = 4 if qtype == dm.TYPE_A else 6
    wanted = [t for t, a in zip(texts, addresses) if a.version == version]
    assert len(reply) <= dm.CLASSIC_UDP_SIZE
    assert struct.unpack_from("!H", reply)[0] == 99 and dm.response_code(reply) == dm.NOERROR
    if dm.truncated(reply):
        assert dm.answer_addresses(reply) == []
        whole = dm.build_response(query, dm.NOERROR, texts)
        assert not dm.truncated(whole) and dm.answer_addresses(whole) == wanted and len(whole) > dm.CLASSIC_UDP_SIZE
    else:
        assert dm.answer_addresses(reply) == wanted


@given(st.binary(max_size=600))
def test_any_bytes_either_parse_or_raise_malformed_with_a_reply_that_names_the_id(data):
    try:
        dm.parse_query(data)
    except dm.MalformedQuery as e:
        if e.reply is not None:
            assert e.reply[:2] == data[:2]
            assert dm.response_code(e.reply) in (dm.FORMERR, dm.NOTIMP)
            assert struct.unpack_from("!H", e.reply, 2)[0] & 0x8000     # a response


@given(NAMES, st.integers(0, 11), st.integers(0, 255))
def test_a_corrupted_query_never_escapes_as_another_error(name, position, value):
    wire = bytearray(dm.build_query(name, dm.TYPE_A, 1))
    wire[min(position + 12, len(wire) - 1)] = value
    try:
        dm.parse_query(bytes(wire))
    except dm.MalformedQuery:
        pass


@pytest.mark.parametrize("wire, message", [
    (b"\x00\x01", "shorter than a DNS header"),
    (dm.HEADER.pack(5, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2, "one question"),
    (dm.HEADER.pack(5, 0, 1, 0, 0, 0) + b"\x03abc", "runs past the end"),
    (dm.HEADER.pack(5, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "loops or points forward"),
    (dm.HEADER.pack(5, 0, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01extra", "bytes after the last record"),
    (dm.HEADER.pack(5, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", "is a response"),
    (dm.HEADER.pack(5, 2 << 11, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", "opcode 2"),
])
def test_malformed_queries_say_what_is_wrong(wire, message):
    with pytest.raises(dm.MalformedQuery, match=message) as caught:
        dm.parse_query(wire)
    if "opcode" in message:
        assert dm.response_code(caught.value.reply) == dm.NOTIMP
    elif "response" in message or "shorter" in message:
        assert caught.value.reply is None           # never answer an answer, nor a stub
    else:
        assert dm.response_code(caught.value.reply) == dm.FORMERR


def test_an_edns_query_gets_an_opt_record_back():
    query = dm.parse_query(dm.build_query("a.test", dm.TYPE_A, 3, udp_size=4096))
    reply = dm.build_response(query, dm.NOERROR, ("198.18.64.1",))
    assert dm.HEADER.unpack_from(reply)[5] == 1 and reply.endswith(b"\x00\x00\x29" + struct.pack("!H", dm.OUR_UDP_SIZE)
                                                                    + b"\x00\x00\x00\x00\x00\x00")


@given(st.lists(st.binary(min_size=0, max_size=300), max_size=8), st.data())
def test_tcp_framing_survives_any_chunking(messages, data):
    stream = b"".join(dm.frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer, out, start = dm.TcpFramer(), [], 0
    for cut in cuts + [len(stream)]:
        out += framer.feed(stream[start:cut])
        start = cut
    assert out == messages and framer.pending == 0


def test_names_longer_than_the_limits_are_refused():
    with pytest.raises(ValueError):
        dm.encode_name("a" * 64 + ".test")
    with pytest.raises(ValueError):
        dm.encode_name(".".join(["a" * 63] * 5))
