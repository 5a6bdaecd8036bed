"""The sans-IO HTTP/1.1 reader and the serializers: bytes in, events out."""

import pytest
from hypothesis import given, settings, strategies as st

from waypoint import http1
from waypoint.errors import BadRequest

PIPELINE = (b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
            b"POST /p HTTP/1.1\r\nHost: y\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
            b"PUT /q HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")


def collapse(events):
    """Bodies joined, so that events of differently split input compare equal."""
    out = []
    for e in events:
        if isinstance(e, http1.Body) and out and isinstance(out[-1], http1.Body):
            out[-1] = http1.Body(out[-1].data + e.data)
        else:
            out.append(e)
    return out


def test_requests_keep_alive_chunked_and_length():
    events = collapse(http1.MessageReader().feed(PIPELINE))
    heads = [e for e in events if isinstance(e, http1.Head)]
    assert [(h.method, h.target, h.version) for h in heads] == [("GET", "/a?b=1", "1.1"), ("POST", "/p", "1.1"),
                                                                 ("PUT", "/q", "1.0")]
    assert heads[0].header("x-a") == "1,2" and heads[0].content_length == 0
    assert heads[1].chunked and heads[1].content_length is None
    assert [e.data for e in events if isinstance(e, http1.Body)] == [b"abcdefg", b"hi"]
    assert sum(isinstance(e, http1.End) for e in events) == 3
    assert heads[0].keep_alive and not heads[2].keep_alive


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(PIPELINE)), max_size=8))
def test_any_split_of_the_input_gives_the_same_events(cuts):
    reader = http1.MessageReader()
    events, start = [], 0
    for cut in sorted(cuts) + [len(PIPELINE)]:
        events += reader.feed(PIPELINE[start:cut])
        start = cut
    assert collapse(events) == collapse(http1.MessageReader().feed(PIPELINE))


@pytest.mark.parametrize("raw,status", [
    (b"NOT HTTP\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * (http1.MAX_HEAD + 10), 431),
])
def test_bad_requests_name_their_status(raw, status):
    with pytest.raises(BadRequest) as info:
        http1.MessageReader().feed(raw)
    assert info.value.status == status and str(info.value)


def test_eof_in_the_middle_of_a_request_is_an_error_but_between_requests_is_not():
    reader = http1.MessageReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.feed_eof() == []
    reader = http1.MessageReader()
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(BadRequest):
        reader.feed_eof()


def test_responses_close_delimited_head_and_204():
    reader = http1.MessageReader(response=True)
    events = reader.feed(b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nhel") + reader.feed(b"lo")
    assert events[0].status == 200 and events[0].body_until_close
    assert collapse(events[1:] + reader.feed_eof()) == [http1.Body(b"hello"), http1.End()]
    head_reader = http1.MessageReader(response=True, head_request=True)
    events = head_reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert isinstance(events[-1], http1.End) and head_reader.done
    events = http1.MessageReader(response=True).feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert isinstance(events[-1], http1.End)


def test_a_response_reader_is_re_armed_for_the_next_answer_only_at_a_message_start():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    reader = http1.MessageReader(response=True)
    assert not reader.again()                                  # nothing read yet
    for body in (b"hi", b"yo"):
        events = reader.feed(answer.replace(b"hi", body))
        assert collapse(events[1:]) == [http1.Body(body), http1.End()] and reader.done
        assert events[0].plain_bytes() is not None             # a re-armed reader still sees the plain case
        assert reader.again() and not reader.done
    assert reader.feed(answer[:20]) == [] and not reader.again()   # mid-head: no
    head_reader = http1.MessageReader(response=True, head_request=True)
    head_reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert head_reader.done and not head_reader.again()        # httptools still waits for 5 bytes of body
    early = http1.MessageReader(response=True)
    early.feed(answer + b"HTTP/1.1 200 OK\r\nContent")        # bytes after the End began another message
    assert early.done and not early.again()
    informational = http1.MessageReader(response=True)
    informational.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert informational.done and not informational.again()


def test_serializers_drop_hop_by_hop_and_frame_bodies():
    headers = [("host", "a"), ("connection", "keep-alive, x-hop"), ("x-hop", "1"), ("transfer-encoding", "chunked"),
               ("x-keep", "2")]
    assert http1.end_to_end(headers) == [("host", "a"), ("x-keep", "2")]
    raw = http1.request_bytes("POST", "/x", [("host", "a")], b"body")
    assert raw == b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbody"
    head = http1.response_head_bytes(200, [("x", "1")], content_length=None, close=False)
    assert head == b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    assert http1.chunk(b"abc") == b"3\r\nabc\r\n" and http1.chunk(b"") == b""
    reader = http1.MessageReader(response=True)
    events = reader.feed(head + http1.chunk(b"abc") + http1.LAST_CHUNK)
    assert collapse(events[1:]) == [http1.Body(b"abc"), http1.End()]


def test_absolute_form_targets_become_origin_form():
    from waypoint.http1_server import origin_form

    head = http1.MessageReader().feed(b"GET http://reviews:9080/a/b?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")[0]
    fixed = origin_form(head)
    assert fixed.target == "/a/b?x=1" and fixed.header("host") == "reviews:9080"
    bare = origin_form(http1.MessageReader().feed(b"GET http://reviews HTTP/1.1\r\n\r\n")[0])
    assert bare.target == "/" and bare.header("host") == "reviews"
    plain = http1.MessageReader().feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    assert origin_form(plain) is plain


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([False, True]))
def test_any_bytes_give_events_or_a_bad_request_never_another_error(data, response):
    reader = http1.MessageReader(response=response)
    try:
        reader.feed(data)
        reader.feed_eof()
    except BadRequest as e:
        assert 400 <= e.status < 600 and str(e)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_a_request_head_followed_by_junk_is_refused_cleanly(junk):
    reader = http1.MessageReader()
    try:
        events = reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + junk)
    except BadRequest:
        return
    assert isinstance(events[0], http1.Head) and events[0].target == "/"


# --- the plain case: a head passed on as it came (issue 18) ---------------------------------------------

PLAIN_GET = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
PLAIN_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("raw", [b"GET / HTTP/1.1\nhost: a\n\n", b"GET / HTTP/1.1\r\nhost: a\nx: b\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nhost: a\rb\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nhost: a\r\nx: b\r\n c\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nhost: a\r\nx: b\r\n\tc\r\n\r\n"])
def test_bare_cr_or_lf_and_folded_lines_are_refused(raw):
    """What makes passing a head on as it came safe: httptools reads nothing a server could read otherwise."""
    with pytest.raises(BadRequest):
        http1.MessageReader().feed(raw)


def test_a_plain_request_and_answer_carry_the_bytes_they_came_in():
    head, end = http1.MessageReader().feed(PLAIN_GET)
    assert head.plain_bytes() == PLAIN_GET and isinstance(end, http1.End)
    head, body, end = http1.MessageReader(response=True).feed(PLAIN_ANSWER)
    assert head.plain_bytes() == PLAIN_ANSWER[:-5] and body.data == b"hello"


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_a_request_whose_one_hop_by_hop_header_is_content_length_0_is_plain(method):
    """As bench.loadgen sends a GET: the header says "no body" to the endpoint as it did to the waypoint."""
    raw = PLAIN_GET.replace(b"GET", method).replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")
    head, end = http1.MessageReader().feed(raw)
    assert head.plain_bytes() == raw and head.content_length == 0 and isinstance(end, http1.End)


@pytest.mark.parametrize("data", [
    PLAIN_GET.replace(b"Accept", b"Connection: keep-alive\r\nAccept"),     # hop-by-hop
    PLAIN_GET.replace(b"Accept: */*", b"TE: trailers"),
    PLAIN_GET.replace(b"HTTP/1.1", b"HTTP/1.0"),
    PLAIN_GET.replace(b"GET", b"POST"),                                    # a POST gets content-length: 0
    PLAIN_GET.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"),
    PLAIN_GET.replace(b"GET", b"POST").replace(b"\r\n\r\n", b"\r\nContent-Length: 2\r\n\r\nhi"),   # a body
    b"\r\n" + PLAIN_GET,                                                   # an empty line before it
    PLAIN_GET + b"\r\n",                                                   # ... or after it
    PLAIN_GET + PLAIN_GET,                                                 # pipelined: neither is plain
])
def test_a_request_that_needs_a_change_or_came_with_more_is_not_plain(data):
    heads = [e for e in http1.MessageReader().feed(data) if isinstance(e, http1.Head)]
    assert heads and all(h.plain_bytes() is None for h in heads)


@pytest.mark.parametrize("data", [
    PLAIN_ANSWER.replace(b"Content-Type", b"Connection: keep-alive\r\nContent-Type"),
    PLAIN_ANSWER.replace(b"Content-Length: 5", b"Transfer-Encoding: chunked").replace(b"hello",
                                                                                   b"5\r\nhello\r\n0\r\n\r\n"),
    PLAIN_ANSWER.replace(b"HTTP/1.1", b"HTTP/1.0"),
    PLAIN_ANSWER.replace(b"Content-Type: text/plain", b"Keep-Alive: timeout=5"),
    PLAIN_ANSWER[:-2],                                                     # the body is not all here
    PLAIN_ANSWER + b"HTTP/1.1 200 OK\r\n",                                 # something after it
])
def test_an_answer_that_needs_a_change_or_came_apart_is_not_plain(data):
    head = http1.MessageReader(response=True).feed(data)[0]
    assert head.plain_bytes() is None


def test_a_head_in_two_reads_is_not_plain():
    reader = http1.MessageReader()
    assert reader.feed(PLAIN_GET[:10]) == []
    assert reader.feed(PLAIN_GET[10:])[0].plain_bytes() is None


@pytest.mark.parametrize("change", [dict(target="/other"), dict(method="HEAD"), dict(headers=(("host", "y"),)),
                                    dict(status=503), dict(reason="Fine")])
def test_a_copy_with_another_target_method_headers_or_status_has_no_plain_bytes(change):
    from dataclasses import replace
    head = http1.MessageReader(response="status" in change or "reason" in change).feed(
        PLAIN_ANSWER if "status" in change or "reason" in change else PLAIN_GET)[0]
    assert head.plain_bytes() is not None
    assert replace(head, **change).plain_bytes() is None
    assert replace(head, keep_alive=head.keep_alive).plain_bytes() == head.plain_bytes()


def test_a_plain_answer_that_ends_the_connection_says_so():
    from waypoint.responders import Http1Responder

    class Client:
        def __init__(self):
            self.sent, self.was_reset = [], False

        def send(self, data):
            self.sent.append(data)

        async def drain(self):
            pass
    head = PLAIN_ANSWER[:-5]
    for keep, closing, expected in ((True, False, head), (False, False, head[:-2] + b"connection: close\r\n\r\n"),
                                    (True, True, head[:-2] + b"connection: close\r\n\r\n")):
        client = Client()
        responder = Http1Responder(client, "GET", keep, lambda: closing)
        responder.plain_head(head, 200)
        responder.end()
        assert client.sent == [expected] and responder.keep == (keep and not closing)
