"""Flow control through the waypoint means something (issue 9, item 8).

A client that stops reading makes the waypoint stop reading from the
endpoint: the endpoint's HTTP/2 DATA is acknowledged only as the client
takes it, so what the endpoint gets to send stays bounded (and all of it
arrives once the client reads again). An endpoint that stops reading makes
the waypoint stop taking the client's body: the waypoint's HTTP/2 server
returns credit only as the endpoint accepts bytes. HTTP/2 bodies stream
(no 16 MiB per stream kept), and a refused HTTP/2 request is answered at its
headers and told to stop sending (RST_STREAM NO_ERROR).

"Bounded" is read off the far end: what the endpoint sent (or the client
could send) is everything the waypoint, the kernel and the HBONE windows
between them hold, and it settles far below the body's size.
"""

import asyncio
import os
from contextlib import asynccontextmanager

import h2.errors
import pytest

from shoal.model import Destination, Endpoint, Protocol, Route, Service, ServicePort

from waypoint import http1

from wp_h2 import H2App, H2Client
from wp_harness import AppBehaviour, read_all, status_of, upload
from wp_mesh import Mesh, run
from wp_model import NS, REVIEWS, VIP, policy, subset, table, workload

MiB = 1 << 20
SIZE = 64 * MiB
BIG_IP, BIG_VIP = "127.0.0.21", "198.18.16.20"
BIG = f"{BIG_VIP}:9080"


@asynccontextmanager
async def to_h2_app():
    """The mesh with one more service, `bigdata`, declared http2 (the waypoint speaks HTTP/2 to its H2App),
    and a client stream to it: (app, mesh, channel)."""
    app = H2App(BIG_IP)
    await app.start()
    pod = workload("bigdata", BIG_IP, "v1", protocol=Protocol.TCP, app="bigdata")
    service = Service(name="bigdata", namespace=NS, hostname=f"bigdata.{NS}.svc.cluster.local", vips=(BIG_VIP,),
                      ports=(ServicePort(9080, "http2", app_protocol="http2"),),
                      endpoints=(Endpoint(pod.uid, 9080, app.port),))
    try:
        async with Mesh(pod, service) as m:
            yield app, m, await m.client.connect(BIG)
    finally:
        app.close()


async def settled(read, what: str, every: float = 0.5, limit: float = 90.0) -> int:
    """The value of `read()` once it stopped changing (two samples `every` apart agree)."""
    loop = asyncio.get_running_loop()
    until, last = loop.time() + limit, -1
    while loop.time() < until:
        value = read()
        if value == last:
            return value
        last = value
        await asyncio.sleep(every)
    raise AssertionError(f"{what} still grew after {limit:g}s: {read()} bytes, the far side was never held back")


def response_body(response: bytes) -> bytes:
    """The body of a whole HTTP/1.1 response, de-chunked."""
    reader = http1.MessageReader(response=True)
    events = reader.feed(response) + reader.feed_eof()
    assert isinstance(events[-1], http1.End), "the response did not end"
    return b"".join(e.data for e in events if isinstance(e, http1.Body))


@pytest.mark.parametrize("client, bound", [("h2", 4 * MiB), ("http1", 16 * MiB)])
def test_a_client_that_stops_reading_stops_the_endpoint(client, bound):
    async def main():
        async with to_h2_app() as (app, m, channel):
            if client == "h2":
                c = H2Client(channel)
                sid = c.request("GET", f"/big/{SIZE}", "bigdata:9080", end=True)
                c.stop_reading(sid)
                await asyncio.wait_for(c.streams[sid].headers_seen.wait(), 20)
            else:
                channel.send(f"GET /big/{SIZE} HTTP/1.1\r\nhost: bigdata:9080\r\nconnection: close\r\n\r\n".encode())
            held = await settled(lambda: app.sent, "what the endpoint sent")
            assert 0 < held < bound, f"the endpoint got {held / MiB:.1f} MiB ahead of a client that reads nothing"
            # Reading again, every byte arrives.
            if client == "h2":
                c.resume_reading(sid)
                await asyncio.wait_for(c.streams[sid].ended.wait(), 120)
                assert c.streams[sid].status == "200" and c.streams[sid].received == SIZE
                c.close()
            else:
                response = await read_all(channel, timeout=120)
                assert status_of(response) == 200 and len(response_body(response)) == SIZE
            assert app.sent == SIZE
    run(main(), timeout=240)


@pytest.mark.parametrize("client, bound", [("h2", 4 * MiB), ("http1", 16 * MiB)])
def test_an_endpoint_that_stops_reading_stops_the_client(client, bound):
    async def main():
        async with to_h2_app() as (app, m, channel):
            if client == "h2":
                c = H2Client(channel)
                sid = c.request("POST", "/sink", "bigdata:9080", end=False)
                uploading = asyncio.create_task(c.upload(sid, SIZE))
                sent = lambda: c.streams[sid].sent   # noqa: E731
            else:
                channel.send(f"POST /sink HTTP/1.1\r\nhost: bigdata:9080\r\ncontent-length: {SIZE}\r\n\r\n".encode())
                count = [0]

                async def push():
                    block = os.urandom(256 << 10)
                    while count[0] < SIZE:
                        channel.send(block)
                        count[0] += len(block)
                        await channel.drain()
                uploading = asyncio.create_task(push())
                sent = lambda: count[0]   # noqa: E731
            held = await settled(sent, "what the client could send")
            assert not uploading.done()
            assert 0 < held < bound, f"the client got {held / MiB:.1f} MiB ahead of an endpoint that reads nothing"
            assert app.received <= 65535 + 16384     # the endpoint's own window, no more
            uploading.cancel()
            if client == "h2":
                c.close()
    run(main(), timeout=240)


@pytest.mark.parametrize("client", ["h2", "http1"])
def test_an_upload_streams_to_an_http2_endpoint(client):
    async def main():
        async with to_h2_app() as (app, m, channel):
            if client == "h2":
                c = H2Client(channel)
                sid = c.request("POST", "/digest", "bigdata:9080", end=False)
                digest = await asyncio.wait_for(c.upload(sid, SIZE), 120)
                await asyncio.wait_for(c.streams[sid].ended.wait(), 60)
                answer = bytes(c.streams[sid].body)
                c.close()
            else:
                channel.send(b"POST /digest HTTP/1.1\r\nhost: bigdata:9080\r\ntransfer-encoding: chunked\r\n"
                             b"connection: close\r\n\r\n")
                digest = await asyncio.wait_for(upload(channel, SIZE, chunked=True), 120)
                response = await read_all(channel, timeout=60)
                assert status_of(response) == 200, response[:300]
                answer = response_body(response)
            assert answer == f"{SIZE} {digest}".encode()
    run(main(), timeout=240)


def test_an_http2_upload_streams_to_an_http1_endpoint():
    async def main():
        v1 = AppBehaviour("v1", digest=True)
        route = Route("v1", destinations=(Destination(REVIEWS, None, subset("v1"), "v1"),))
        async with Mesh(table(route), v1=v1, rand=lambda: 0.0) as m:
            c = H2Client(await m.client.connect(f"{VIP}:9080"))
            sid = c.request("POST", "/upload", "reviews:9080", end=False)   # no content-length: chunked on
            digest = await asyncio.wait_for(c.upload(sid, SIZE), 120)
            await asyncio.wait_for(c.streams[sid].ended.wait(), 60)
            assert c.streams[sid].status == "200", c.streams[sid]
            (_, path, headers, body), = v1.hits
            assert path == "/upload" and body == f"{SIZE} {digest}".encode()
            assert headers.get("transfer-encoding") == "chunked"
            c.close()
    run(main(), timeout=240)


def test_a_refused_http2_request_is_answered_at_its_headers_and_told_to_stop_sending():
    async def main():
        async with Mesh(policy("no-upload", "DENY", paths=("/upload*",))) as m:
            c = H2Client(await m.client.connect(f"{VIP}:9080"))
            sid = c.request("POST", "/upload", "reviews:9080", end=False, headers=(("content-length", str(SIZE)),))
            uploading = asyncio.create_task(c.upload(sid, SIZE))
            stream = c.streams[sid]
            await asyncio.wait_for(stream.ended.wait(), 20)
            assert stream.status == "403"
            assert stream.reset_code == h2.errors.ErrorCodes.NO_ERROR
            await asyncio.wait_for(uploading, 20)     # stops at the reset
            assert stream.sent < 8 * MiB
            assert m.hits("v1") == m.hits("v1b") == m.hits("v2") == []
            # The connection goes on: a request on it is served.
            again = c.request("GET", "/fine", "reviews:9080", end=True)
            await asyncio.wait_for(c.streams[again].ended.wait(), 20)
            assert c.streams[again].status == "200"
            c.close()
    run(main())
