"""The waypoint in process on loopback: real HBONE (TLS 1.3, HTTP/2 CONNECT), real HTTP servers.

The client is a meshed workload's HBONE session; endpoints are plain-TCP
HTTP servers and one behind an HBONE terminator (what a destination ztunnel
does). Routing config is given as model objects, as the control plane would.
"""

import asyncio

import pytest

from shoal.model import (
    Destination, Fault, HeaderChanges, HeaderMatch, MatchKind, Mirror, RetryPolicy, Route, RouteMatch, StringMatch,
)

from waypoint.channel import ChannelReset

from support import metrics as exposition
from support.polling import eventually_async
from wp_harness import AppBehaviour, body_of, exchange_kept_alive, get, read_all, status_of
from wp_mesh import V2_IP, Mesh, run
from wp_model import NS, REVIEWS, SHADOW, VIP, policy, subset, table, to

def test_subset_route_to_plain_tcp_endpoint_with_header_changes():
    route = Route("to-v1", destinations=(Destination(REVIEWS, None, subset("v1"), "v1"),),
                  request_headers=HeaderChanges(set=(("x-route", "v1"),), remove=("x-secret",)),
                  response_headers=HeaderChanges(add=(("x-served-by", "waypoint"),), remove=("x-app",)))

    async def main():
        async with Mesh(table(route), rand=lambda: 0.0) as m:
            response = await m.send(get("/hello", headers=(("x-secret", "s"),)))
            assert status_of(response) == 200, response
            assert body_of(response) == b"v1 GET /hello 0\n"
            assert b"x-served-by: waypoint" in response and b"x-app" not in response
            method, path, headers, _ = m.hits("v1")[0]
            assert headers["x-route"] == "v1" and "x-secret" not in headers
            assert headers["host"] == "reviews:9080" and headers.get("x-request-id")
            assert m.waypoint.count(response_code="200", destination_service=REVIEWS,
                                    source_workload="client", destination_workload="reviews-v1",
                                    reporter="waypoint", connection_security_policy="mutual_tls") == 1
    run(main())


def test_header_match_to_hbone_endpoint_with_waypoint_identity():
    routes = table(Route("jason", matches=(RouteMatch(headers=(HeaderMatch("end-user", StringMatch(MatchKind.EXACT, "jason")),)),),
                         destinations=(to("v2"),)),
                   Route("rest", destinations=(to("v1"),)))

    async def main():
        async with Mesh(routes, rand=lambda: 0.0) as m:
            r1 = await m.send(get("/r", headers=(("end-user", "jason"),)))
            r2 = await m.send(get("/r"))
            assert body_of(r1).startswith(b"v2 ") and body_of(r2).startswith(b"v1 ")
            assert m.endpoint.tunnels == [f"{V2_IP}:{m.apps['v2'].port}"]
            assert m.endpoint.peers == [f"spiffe://cluster.local/ns/{NS}/sa/waypoint"]
    run(main())


def test_weights_split_requests():
    routes = table(Route(destinations=(to("v1", 90), to("v2", 10))))

    async def main():
        async with Mesh(routes) as m:
            results = await asyncio.gather(*(m.send(get("/w")) for _ in range(60)))
            v2 = sum(body_of(r).startswith(b"v2") for r in results)
            assert all(status_of(r) == 200 for r in results)
            assert 0 < v2 < 20, v2   # expected 6; P(0) ~ 0.2%, P(>=20) negligible
    run(main())


def test_fault_abort_and_delay_with_timeout():
    abort = Route("abort", matches=(RouteMatch(path=StringMatch(MatchKind.PREFIX, "/abort")),),
                  destinations=(to("v1"),), fault=Fault(abort_status=418, abort_percentage=100))
    slow = Route("slow", destinations=(to("v1"),), timeout=0.2, fault=Fault(delay=1.0, delay_percentage=100))

    async def main():
        async with Mesh(table(abort, slow), rand=lambda: 0.0) as m:
            r = await m.send(get("/abort"))
            assert status_of(r) == 418 and b"fault filter abort" in r
            r = await m.send(get("/slow"))
            assert status_of(r) == 504
            assert m.hits("v1") == []
            assert m.waypoint.count(response_code="418", response_flags="FI") == 1
            assert m.waypoint.count(response_code="504", response_flags="DI,UT") == 1
    run(main())


def test_timeout_of_a_slow_endpoint_gives_504():
    route = Route(destinations=(to("v1"),), timeout=0.3)

    async def main():
        async with Mesh(table(route), v1=AppBehaviour("v1", delay=1.0), v1b=AppBehaviour("v1b", delay=1.0)) as m:
            r = await m.send(get("/"))
            assert status_of(r) == 504 and m.waypoint.count(response_flags="UT") == 1
    run(main())


def test_retry_on_5xx_turns_a_failing_first_try_into_success():
    route = Route(destinations=(Destination(REVIEWS, None, subset("v2"), "v2"),),
                  retry=RetryPolicy(attempts=2, retry_on=("5xx",)))

    async def main():
        async with Mesh(table(route), v2=AppBehaviour("v2", fail_first=1)) as m:
            r = await m.send(get("/retry"))
            assert status_of(r) == 200 and len(m.hits("v2")) == 2
            no_retry = Mesh(table(Route(destinations=(to("v2"),))), v2=AppBehaviour("v2", fail_first=1))
            async with no_retry as m2:
                assert status_of(await m2.send(get("/"))) == 503 and len(m2.hits("v2")) == 1
    run(main())


def test_retry_on_connect_failure_goes_to_another_endpoint():
    async def main():
        m = Mesh(table(Route(destinations=(to("v1"),), retry=RetryPolicy(1, retry_on=("connect-failure",)))),
                 rand=lambda: 0.0)
        async with m:
            m.apps["v1"].close()   # the first endpoint (sorted by address) is down
            r = await m.send(get("/"))
            assert status_of(r) == 200 and body_of(r).startswith(b"v1b")
    run(main())


def test_endpoint_down_without_retry_is_503_uf():
    async def main():
        async with Mesh(table(Route(destinations=(to("v1"),))), rand=lambda: 0.0) as m:
            m.apps["v1"].close()
            r = await m.send(get("/"))
            assert status_of(r) == 503 and m.waypoint.count(response_code="503", response_flags="UF") == 1
    run(main())


def test_mirror_sends_a_copy_with_shadow_host():
    route = Route(destinations=(to("v1"),), mirrors=(Mirror(Destination(SHADOW), 100.0),))

    async def main():
        async with Mesh(table(route), rand=lambda: 0.0) as m:
            r = await m.send(get("/m", method="POST", body=b"payload"))
            assert status_of(r) == 200
            hits = await eventually_async(lambda: m.hits("shadow"), 2, "the mirror")
            method, path, headers, body = hits[0]
            assert (method, path, body) == ("POST", "/m", b"payload")
            assert headers["host"] == "reviews-shadow:9080"
            assert m.hits("v1")[0][2]["host"] == "reviews:9080"
    run(main())


def test_deny_policy_on_a_path_gives_403_and_other_paths_pass():
    async def main():
        async with Mesh(policy("no-admin", "DENY", paths=("/admin*",))) as m:
            r = await m.send(get("/admin/users"))
            assert status_of(r) == 403 and b"RBAC: access denied" in r
            assert b"no-admin" not in r, "the answer names the policy; only the access log may"
            assert status_of(await m.send(get("/public"))) == 200
            assert m.waypoint.count(response_code="403", response_flags="RBAC") == 1
    run(main())


def test_keep_alive_chunked_body_and_pipelining_refused():
    async def main():
        async with Mesh() as m:
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(b"POST /a HTTP/1.1\r\nhost: reviews\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            first = b""
            while b"POST /a 11\n" not in first:      # the whole answer (the body ends with it)
                data = await asyncio.wait_for(channel.read(), 5)
                assert data, first
                first += data
            assert status_of(first) == 200 and b"POST /a 11" in first and b"connection: close" not in first
            # The same connection carries a second request, this time pipelined with a third.
            channel.send(get("/b", close=False) + get("/c", close=False))
            rest = await read_all(channel)
            assert rest.count(b"HTTP/1.1 200") == 1 and b"GET /b" in rest and b"connection: close" in rest
    run(main())


def test_a_client_connection_idle_past_the_limit_is_ended_and_a_busy_one_is_not():
    async def main():
        async with Mesh(table(Route("all", destinations=(to("v1"),))), rand=lambda: 0.0) as m:
            m.waypoint.proxy.idle_timeout = 1.0
            busy, idle = await m.client.connect(f"{VIP}:9080"), await m.client.connect(f"{VIP}:9080")
            assert status_of(await exchange_kept_alive(idle, get("/once", close=False))) == 200
            for i in range(8):   # 1.6 s in all, past the limit, but never idle that long between requests
                assert status_of(await exchange_kept_alive(busy, get(f"/busy{i}", close=False))) == 200
                await asyncio.sleep(0.2)
            assert await asyncio.wait_for(idle.read(), 10) == b""     # the waypoint ended the idle one
            assert status_of(await exchange_kept_alive(busy, get("/still", close=False))) == 200
    run(main())


def test_malformed_request_gets_400_and_harms_no_other():
    async def main():
        async with Mesh() as m:
            r = await m.send(b"NOT HTTP AT ALL\r\n\r\n")
            assert status_of(r) == 400
            assert status_of(await m.send(get("/"))) == 200
    run(main())


def test_unknown_destination_is_404():
    async def main():
        async with Mesh() as m:
            r = await m.send(get("/"), vip="198.18.16.99")
            assert status_of(r) == 404 and m.waypoint.count(response_code="404", response_flags="NR") == 1
    run(main())


def test_head_request_and_large_response_stream_through():
    async def main():
        async with Mesh() as m:
            r = await m.send(get("/", method="HEAD"))
            assert status_of(r) == 200 and body_of(r) == b""
    run(main())


def test_undeclared_port_with_non_http_bytes_is_relayed_as_tcp():
    async def main():
        async with Mesh(table(Route(destinations=(to("v1"),))), app_protocol="", rand=lambda: 0.0) as m:
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(b"PING\r\n\r\n")
            r = await read_all(channel)
            channel.end()    # our half too: the waypoint relays until both sides are done
            # http.server itself refuses it (its own error page): the bytes went through untouched.
            assert b"Error code explanation: 400" in r
            assert m.hits("v1") == [] and m.hits("v1b") == []
            # Counted when the waypoint's side of the connection has closed too.
            tcp = await eventually_async(lambda: [s for s in exposition.parse(m.waypoint.scrape())
                                                  if s.name == "istio_tcp_received_bytes_total"], 2, "the TCP count")
            assert [(s.labels["destination_workload"], s.labels["request_protocol"], s.value) for s in tcp] == \
                [("reviews-v1", "tcp", 8.0)]
            # HTTP on the same undeclared port is still routed (sniffed), with telemetry.
            assert body_of(await m.send(get("/x"))).startswith(b"v1 ")
            assert m.waypoint.count(response_code="200") == 1
    run(main())


def test_tcp_through_the_waypoint_applies_l4_policy_conservatively():
    async def main():
        async with Mesh(policy("no-admin", "DENY", paths=("/admin*",)), app_protocol="tcp") as m:
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(get("/public"))
            with pytest.raises(ChannelReset):
                await read_all(channel)    # a DENY with HTTP fields denies opaque TCP outright
    run(main())


def test_upstream_connections_are_kept_alive_and_idle_closed_ones_replaced():
    async def main():
        v1 = AppBehaviour("v1", idle_timeout=0.3)
        async with Mesh(table(Route(destinations=(to("v1"),))), v1=v1, v1b=AppBehaviour("v1b", idle_timeout=0.3),
                        rand=lambda: 0.0) as m:
            for i in range(3):
                assert status_of(await m.send(get(f"/k{i}"))) == 200
            assert len(v1.hits) == 3 and len(set(v1.peers)) == 1     # one connection carried all three
            assert m.waypoint.proxy.http1_pool.reused == 2
            (pooled,), = m.waypoint.proxy.http1_pool.idle.values()
            assert pooled.response_reader.messages == 3                # and one response reader read all three
            await asyncio.sleep(0.6)                                    # the app closes the idle connection
            assert status_of(await m.send(get("/after-idle"))) == 200
            assert len(v1.hits) == 4 and len(set(v1.peers)) == 2
    run(main())


def test_expect_100_continue_is_answered_before_the_body():
    async def main():
        async with Mesh() as m:
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(b"POST /up HTTP/1.1\r\nhost: reviews\r\ncontent-length: 5\r\nexpect: 100-continue\r\n"
                         b"connection: close\r\n\r\n")
            interim = await asyncio.wait_for(channel.read(), 2)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            channel.send(b"hello")
            rest = await read_all(channel)
            assert status_of(rest) == 200 and b" POST /up 5" in rest
            hit = (m.hits("v1") + m.hits("v1b") + m.hits("v2"))[0]
            assert "expect" not in hit[2]
    run(main())


def test_idle_upstream_connections_are_swept():
    from waypoint.exchange import Http1Pool

    class FakeChannel:
        idle_usable = True
        ended = False

        def end(self):
            self.ended = True

        def reset(self):
            self.ended = True

    now = [0.0]
    pool = Http1Pool(idle_seconds=60, clock=lambda: now[0])
    from waypoint.routing import Upstream
    upstream = Upstream(("127.0.0.9", 80), False, None, "uid", "w", "ns")
    old, new = FakeChannel(), FakeChannel()
    assert pool.give(upstream, old)
    now[0] = 50
    assert pool.give(upstream, new)
    now[0] = 70
    assert pool.sweep() == 1 and old.ended and not new.ended
    assert pool.take(upstream) is new and pool.take(upstream) is None


def test_a_client_leaving_mid_response_stops_the_upstream_read():
    from waypoint.errors import DownstreamGone
    from waypoint.responders import Http1Responder

    class Gone:
        was_reset = True

    async def main():
        responder = Http1Responder(Gone(), "GET", keep=True)
        with pytest.raises(DownstreamGone) as info:
            await responder.data(b"more")
        assert info.value.response_flag == "DC"
    run(main())


def test_broken_http2_from_a_client_closes_its_connection_only():
    async def main():
        async with Mesh() as m:
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x09\xff\xff\xff\xff" + b"junk" * 10)
            answer = await read_all(channel)          # the server's SETTINGS, then GOAWAY, then the end
            types, at = [], 0
            while at + 9 <= len(answer):              # HTTP/2 frames: 24-bit length, type, flags, stream id
                types.append(answer[at + 3])
                at += 9 + int.from_bytes(answer[at:at + 3], "big")
            assert types[0] == 0x4 and 0x7 in types, types    # SETTINGS first, a GOAWAY for the junk
            assert status_of(await m.send(get("/still-fine"))) == 200
    run(main())


def test_draining_answers_with_connection_close():
    async def main():
        async with Mesh() as m:
            m.waypoint.proxy.draining = True
            channel = await m.client.connect(f"{VIP}:9080")
            channel.send(get("/bye", close=False))
            answer = await read_all(channel)       # the waypoint ends the connection after this answer
            assert status_of(answer) == 200 and b"connection: close" in answer
    run(main())
