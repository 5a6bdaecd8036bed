"""The plain case (issue 18), in process: an HTTP/1.1 request without a body or hop-by-hop header, through
a route that changes no header, goes upstream as the bytes it came in with the waypoint's two headers
added; an answer framed by its Content-Length alone goes back as it came (`connection: close` added when
it ends the connection). Whatever path a request takes, the endpoint and the client see the same request
and answer: each test runs its requests once with the plain path and once with it off (no head is plain)
and compares, and counts which serializer ran, so a plain path never taken fails too."""

from __future__ import annotations

import pytest

from shoal.model import HeaderChanges, Route

from waypoint import http1

from wp_harness import AppBehaviour, exchange_kept_alive as exchange, get
from wp_mesh import Mesh, run
from wp_model import VIP, table, to


def answer_of(response: bytes) -> tuple:
    """An answer as a client reads it: status line, headers (names lower-cased; their order is not
    meaning, and the server's Date may tick between two runs), body."""
    head, body = response.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = sorted((name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines))
    return status_line, [(k, v) for k, v in headers if k != "date"], body


class Serializers:
    """Counts the general path's serializers of heads (request_bytes, too, makes its head with
    request_head_bytes; the plain path calls neither)."""

    def __init__(self, monkeypatch) -> None:
        self.requests = self.responses = 0
        request_head_bytes, response_head_bytes = http1.request_head_bytes, http1.response_head_bytes

        def counted_request_head(*args, **kwargs):
            self.requests += 1
            return request_head_bytes(*args, **kwargs)

        def counted_response(*args, **kwargs):
            self.responses += 1
            return response_head_bytes(*args, **kwargs)
        monkeypatch.setattr(http1, "request_head_bytes", counted_request_head)
        monkeypatch.setattr(http1, "response_head_bytes", counted_response)


def through(routes, requests: list[bytes]):
    """Each request in turn on one kept-alive connection: (the answers, what the endpoint got)."""
    async def main():
        async with Mesh(routes, v1=AppBehaviour("v1", one_write=True), rand=lambda: 0.0) as m:
            channel = await m.client.connect(f"{VIP}:9080")
            answers = [await exchange(channel, raw) for raw in requests]
            return answers, [(method, path, {k: v for k, v in headers.items() if k != "x-request-id"},
                              "x-request-id" in headers) for method, path, headers, _ in m.hits("v1")]
    return run(main())


REQUESTS = [get("/a", close=False), get("/b?q=1", headers=(("accept", "*/*"), ("user-agent", "t/1")), close=False),
            get("/c", headers=(("x-request-id", "given-1"),), close=False), get("/d", method="DELETE", close=False)]


def test_plain_requests_and_answers_read_as_the_general_path_gives_them(monkeypatch):
    counted = Serializers(monkeypatch)
    plain_answers, plain_hits = through(table(Route("all", destinations=(to("v1"),))), REQUESTS)
    assert (counted.requests, counted.responses) == (0, 0)     # both ways plain, every time
    monkeypatch.setattr(http1.Head, "plain_bytes", lambda self: None)
    general_answers, general_hits = through(table(Route("all", destinations=(to("v1"),))), REQUESTS)
    assert (counted.requests, counted.responses) == (len(REQUESTS), len(REQUESTS))
    assert plain_hits == general_hits
    assert [answer_of(a) for a in plain_answers] == [answer_of(a) for a in general_answers]
    assert all(hit[3] for hit in plain_hits)                   # an x-request-id reached the endpoint every time
    assert all(b"connection" not in a.lower() for a in plain_answers)


def test_the_plain_path_keeps_a_given_request_id_and_adds_one_otherwise(monkeypatch):
    async def main():
        async with Mesh(table(Route("all", destinations=(to("v1"),))), v1=AppBehaviour("v1", one_write=True),
                        rand=lambda: 0.0) as m:
            channel = await m.client.connect(f"{VIP}:9080")
            for raw in REQUESTS[2:3] + REQUESTS[:1]:
                await exchange(channel, raw)
            return [headers for _, _, headers, _ in m.hits("v1")]
    counted = Serializers(monkeypatch)
    given, made = run(main())
    assert counted.requests == 0
    assert given["x-request-id"] == "given-1" and len(made["x-request-id"]) == 36
    assert given["x-forwarded-proto"] == made["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("route, request_", [
    (Route("set", destinations=(to("v1"),), request_headers=HeaderChanges(set=(("x-route", "v1"),))), REQUESTS[0]),
    (Route("all", destinations=(to("v1"),)), get("/hop", headers=(("connection", "keep-alive"),), close=False)),
    (Route("all", destinations=(to("v1"),)), get("/body", method="POST", body=b"hello", close=False)),
])
def test_a_request_to_change_or_with_hop_by_hop_headers_or_a_body_takes_the_general_path(monkeypatch, route,
                                                                                      request_):
    counted = Serializers(monkeypatch)
    _, hits = through(table(route), [request_])
    assert counted.requests == 1
    method, path, headers, _ = hits[0]
    assert "connection" not in headers or headers["connection"] != "keep-alive"
    if route.request_headers:
        assert headers["x-route"] == "v1"


def test_a_request_saying_content_length_0_goes_plain_and_means_no_body_either_way(monkeypatch):
    """bench.loadgen's GET (and many clients'): `Content-Length: 0` is its one hop-by-hop header. It goes
    as it came; the general path (plain off) drops the header of a bodyless GET, and the endpoint reads
    the same request and body from both."""
    requests = [get("/lg", headers=(("content-length", "0"),), close=False),
                get("/lg", method="POST", headers=(("content-length", "0"),), close=False)]
    counted = Serializers(monkeypatch)
    plain_answers, plain_hits = through(table(Route("all", destinations=(to("v1"),))), requests)
    assert (counted.requests, counted.responses) == (0, 0)
    assert [hit[2].get("content-length") for hit in plain_hits] == ["0", "0"]
    monkeypatch.setattr(http1.Head, "plain_bytes", lambda self: None)
    general_answers, general_hits = through(table(Route("all", destinations=(to("v1"),))), requests)
    assert counted.requests == len(requests)
    assert [hit[2].get("content-length", "0") for hit in general_hits] == ["0", "0"]

    def without_length(hits):
        return [(method, path, {k: v for k, v in headers.items() if k != "content-length"}, rid)
                for method, path, headers, rid in hits]
    assert without_length(plain_hits) == without_length(general_hits)
    assert [answer_of(a) for a in plain_answers] == [answer_of(a) for a in general_answers]


def test_an_answer_to_change_takes_the_general_path(monkeypatch):
    counted = Serializers(monkeypatch)
    changed = Route("add", destinations=(to("v1"),), response_headers=HeaderChanges(add=(("x-served-by", "wp"),)))
    (answer,), _ = through(table(changed), REQUESTS[:1])
    assert counted.responses == 1 and b"x-served-by: wp" in answer and counted.requests == 0
