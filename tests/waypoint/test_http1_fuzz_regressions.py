"""What `python -m scripts.fuzz --target http1` found in the HTTP/1.1 reader, one test each.

Each held for input in small reads and failed for the same bytes in one read,
or the other way round: the reader's answer depended on how TCP cut the stream.
"""

import pytest

from waypoint import http1
from waypoint.errors import BadRequest


def feed_in_pieces(reader: http1.MessageReader, data: bytes, step: int) -> list:
    events = []
    for at in range(0, len(data), step):
        events += reader.feed(data[at:at + step])
    return events


@pytest.mark.parametrize("step", [None, 1000])
def test_a_head_over_the_limit_is_refused_also_when_it_arrives_in_one_read(step):
    raw = b"GET /" + b"x" * (http1.MAX_HEAD + 100) + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    reader = http1.MessageReader()
    with pytest.raises(BadRequest) as info:
        reader.feed(raw) if step is None else feed_in_pieces(reader, raw, step)
    assert info.value.status == 431


@pytest.mark.parametrize("step", [None, 100])
def test_trailers_count_against_the_head_limit(step):
    # They came after the head, where nothing counted them, and were kept: a client could send them without end.
    trailers = b"".join(b"x-trailer-%d: %s\r\n" % (n, b"v" * 50) for n in range(2000))
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + trailers + b"\r\n"
    reader = http1.MessageReader()
    with pytest.raises(BadRequest) as info:
        reader.feed(raw) if step is None else feed_in_pieces(reader, raw, step)
    assert info.value.status == 431


def test_a_few_trailers_are_read_and_dropped():
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-trailer: 1\r\n\r\n"
    events = http1.MessageReader().feed(raw)
    assert [type(e) for e in events] == [http1.Head, http1.Body, http1.End]
    assert events[0].headers == (("transfer-encoding", "chunked"),)


def test_a_reason_phrase_split_across_reads_is_kept_whole():
    raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    head = feed_in_pieces(http1.MessageReader(response=True), raw, 15)[0]
    assert head.reason == "Not Found"


@pytest.mark.parametrize("after", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"abc"])
def test_a_response_reader_stops_at_its_response_whatever_follows_in_the_same_read(after):
    # A 204 has no body. What follows it was a second response (Head, End, Head, ...) or, after an
    # HTTP/1.0 answer, an error that threw the 204 away; in a later read it was ignored.
    raw = b"HTTP/1.0 204 No Content\r\n\r\n" + after
    reader = http1.MessageReader(response=True)
    events = reader.feed(raw)
    assert [type(e) for e in events] == [http1.Head, http1.End] and events[0].status == 204
    assert reader.done and reader.feed(b"more") == []


@pytest.mark.parametrize("step", [None, 7])
def test_eof_in_a_pipelined_request_is_an_error_however_the_bytes_came(step):
    raw = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\nAcc"
    reader = http1.MessageReader()
    events = reader.feed(raw) if step is None else feed_in_pieces(reader, raw, step)
    assert [type(e) for e in events] == [http1.Head, http1.End]
    with pytest.raises(BadRequest):
        reader.feed_eof()
