"""HTTP/1.1 bodies through the waypoint: decided on the headers, streamed, kept only for a retry (issue 9, item 8).

A refused request (policy, no route, fault abort) is answered without
reading its body, and the connection then ends; an upload of any size on a
route without retries crosses in pieces (the waypoint's memory stays flat,
the endpoint gets every byte, checked by digest); a route with retries keeps
the body whole up to `max_body`, and answers 413 past it.
"""

import asyncio
import os
import re

import pytest

from shoal.model import Destination, Fault, RetryPolicy, Route

from support.polling import eventually_async
from wp_harness import AppBehaviour, read_all, status_of, upload
from wp_mesh import Mesh, run
from wp_model import REVIEWS, VIP, policy, subset, table

MiB = 1 << 20


def head(path: str, length: int | None, extra: str = "", host: str = "reviews:9080") -> bytes:
    framing = f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
    return f"POST {path} HTTP/1.1\r\nhost: {host}\r\n{framing}{extra}\r\n".encode()


def all_hits(m: Mesh) -> list:
    return [hit for key in ("v1", "v1b", "v2") for hit in m.hits(key)]


REFUSALS = {
    "policy": (lambda: (policy("no-upload", "DENY", paths=("/up*",)),), VIP, 403),
    "no-route": (lambda: (), "198.18.16.99", 404),
    "fault-abort": (lambda: (table(Route("abort", destinations=(Destination(REVIEWS, None, subset("v1"), "v1"),),
                                         fault=Fault(abort_status=418))),), VIP, 418),
}


@pytest.mark.parametrize("why", sorted(REFUSALS))
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_a_refused_request_is_answered_on_its_headers_and_its_body_is_never_read(why, expect):
    routing, vip, status = REFUSALS[why]

    async def main():
        async with Mesh(*routing()) as m:
            channel = await m.client.connect(f"{vip}:9080")
            # 64 MiB announced; only the head and 64 KiB are ever sent. Read whole first, this never answers.
            channel.send(head("/upload", 64 * MiB, "expect: 100-continue\r\n" if expect else ""))
            if not expect:
                channel.send(os.urandom(64 << 10))
            answer = await read_all(channel, timeout=20)
            assert status_of(answer) == status, answer
            assert b"100 Continue" not in answer       # nothing was asked of the client's body
            assert b"connection: close" in answer.split(b"\r\n\r\n", 1)[0].lower()
            assert all_hits(m) == []
            # The waypoint is fine afterwards: the next connection is served.
            again = await m.client.connect(f"{vip}:9080")
            again.send(head("/upload", 5) + b"hello")
            assert status_of(await read_all(again, timeout=20)) == status
    run(main())


def rss() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_upload_streams_through_with_flat_memory(chunked):
    size = 96 * MiB          # six times the most the waypoint would keep whole (max_body, 16 MiB)

    async def main():
        v1 = AppBehaviour("v1", digest=True)
        route = Route("v1", destinations=(Destination(REVIEWS, None, subset("v1"), "v1"),))
        async with Mesh(table(route), v1=v1, rand=lambda: 0.0) as m:
            base = peak = rss()

            async def sample():
                nonlocal peak
                while True:
                    peak = max(peak, rss())
                    await asyncio.sleep(0.05)
            sampler = asyncio.create_task(sample())
            try:
                channel = await m.client.connect(f"{VIP}:9080")
                channel.send(head("/upload", None if chunked else size, "connection: close\r\n"))
                sent = await asyncio.wait_for(upload(channel, size, chunked), 120)
                answer = await read_all(channel, timeout=60)
            finally:
                sampler.cancel()
            assert status_of(answer) == 200, answer[:300]
            (_, path, headers, body), = v1.hits
            assert path == "/upload" and body == f"{size} {sent}".encode()
            assert ("transfer-encoding" in headers) == chunked
            # Client, waypoint and app share this process: what grew is all of theirs, and still far less than
            # the body (a waypoint that kept it would grow by `size`).
            assert peak - base < 24 * MiB, f"RSS grew by {(peak - base) / MiB:.1f} MiB for a {size // MiB} MiB upload"
    run(main(), timeout=180)


def test_a_route_with_retries_keeps_the_body_up_to_max_body_and_answers_413_past_it():
    route = Route("v1", destinations=(Destination(REVIEWS, None, subset("v1"), "v1"),),
                  retry=RetryPolicy(attempts=2, retry_on=("5xx",)))

    async def main():
        v1, v1b = AppBehaviour("v1", fail_first=1), AppBehaviour("v1b", fail_first=1)   # subset v1: both
        async with Mesh(table(route), v1=v1, v1b=v1b, rand=lambda: 0.0) as m:
            m.waypoint.proxy.max_body = 1 * MiB
            # Within the limit: the body is sent again on the retry.
            body = os.urandom(MiB // 2)
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(head("/kept", len(body), "connection: close\r\n") + body)
            assert status_of(await read_all(channel, timeout=20)) == 200
            assert [hit[3] for hit in v1.hits + v1b.hits] == [body] * 3   # two tries failed, each got it all
            # Past it, announced: 413 before reading it.
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(head("/announced", 2 * MiB))
            answer = await read_all(channel, timeout=20)
            assert status_of(answer) == 413 and b"retries or mirrors" in answer
            # Past it, chunked: 413 once the kept part passes the limit.
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(head("/chunked", None))
            sender = asyncio.create_task(upload(channel, 4 * MiB, chunked=True))
            answer = await read_all(channel, timeout=20)
            sender.cancel()
            assert status_of(answer) == 413
            assert len(v1.hits + v1b.hits) == 3
            await eventually_async(lambda: m.waypoint.count(response_code="413") == 2, timeout=20,
                                   what="two 413s counted")
    run(main())
