"""The waypoint and the ingress gateway listen on both families (issue 17), in process on loopback.

One dual-stack socket per port (`::`, IPV6_V6ONLY off; asyncio's own `::` would be IPv6 only): a client
of either family reaches HBONE 15008 and the metrics and readiness ports. An IPv4 client arrives as
`::ffff:a.b.c.d` and is logged, looked up and counted by its IPv4 address; an IPv6 one is bracketed in
the access log (`[::1]:40000`), as is an IPv6 upstream. Needs IPv6 on loopback (::1), not root.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket

import pytest

from shoal import admin_http, log, sockets
from shoal.model import Endpoint, Protocol, Service, ServicePort
from shoal.proxy_state import ProxyState
from waypoint.config import Config
from waypoint.ingress import IngressListener

from support.ca import TestCA
from support.net import loopback_has_ipv6
from wp_harness import Client, Waypoint, get, status_of
from wp_mesh import run
from wp_model import NS, REVIEWS, workload

VIP_4, VIP_6 = "198.18.16.10", "fd73:686f:616c:ff::a"
CLIENT_URI = f"spiffe://cluster.local/ns/{NS}/sa/client"
pytestmark = pytest.mark.skipif(not loopback_has_ipv6(), reason="needs IPv6 on loopback (::1)")


async def _ipv6_app() -> tuple[asyncio.AbstractServer, int]:
    """An HTTP/1.1 server on [::1] that answers every request with the peer it saw."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = f"v6 app, peer {writer.get_extra_info('peername')[0]}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "::1", 0)
    return server, server.sockets[0].getsockname()[1]


def _state(app_port: int) -> ProxyState:
    """reviews (HTTP) and opaque (TCP), each with an IPv4 and an IPv6 VIP, served by one pod on [::1]; the
    IPv4 client's workload is 127.0.0.1."""
    state = ProxyState(waypoint=(NS, "waypoint"))
    pod = workload("reviews-v6", "::1", "v1", protocol=Protocol.TCP)
    client = workload("client", "127.0.0.1", "v1", app="client")
    for item in (pod, client,
                 Service(name="reviews", namespace=NS, hostname=REVIEWS, vips=(VIP_4, VIP_6),
                         ports=(ServicePort(9080, "http", app_protocol="http"),),
                         endpoints=(Endpoint(pod.uid, 9080, app_port),)),
                 Service(name="opaque", namespace=NS, hostname=f"opaque.{NS}.svc.cluster.local",
                         vips=("198.18.16.12", "fd73:686f:616c:ff::c"),
                         ports=(ServicePort(9090, "tcp", app_protocol="tcp"),),
                         endpoints=(Endpoint(pod.uid, 9090, app_port),))):
        state.upsert(item)
    return state


def _access_lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()
            if line.startswith("{") and json.loads(line).get("event") in ("request complete", "connection complete")]


def test_the_waypoint_listens_on_both_families_by_default():
    assert Config(namespace=NS, name="waypoint").listen == sockets.ALL_ADDRESSES == "::"


def test_clients_of_both_families_reach_the_waypoint_and_are_logged_and_counted_by_their_own_address():
    out = io.StringIO()
    log.setup("json", "info", stream=out)

    async def main():
        app, app_port = await _ipv6_app()
        ca = TestCA()
        waypoint = Waypoint(ca, _state(app_port), hbone_port=0)
        await waypoint.start(sockets.ALL_ADDRESSES)
        assert waypoint.listener.sock.family == socket.AF_INET6
        assert waypoint.listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        clients = {host: Client(ca, CLIENT_URI) for host in ("127.0.0.1", "::1")}
        try:
            answers = {}
            for host, client in clients.items():
                await client.open(host, waypoint.listener.port)
                answers[host] = await client.request(f"[{VIP_6}]:9080", get("/over-" + ("4" if "." in host else "6")))
                # opaque TCP to the IPv6 VIP: relayed as bytes, logged as a connection
                answers[host + " tcp"] = await client.request("[fd73:686f:616c:ff::c]:9090", get("/tcp"))
            for key, answer in answers.items():
                assert status_of(answer) == 200 and b"v6 app, peer ::1" in answer, (key, answer)
            # counted with the IPv4 client's workload: its ::ffff:127.0.0.1 was taken as 127.0.0.1
            assert waypoint.count(source_workload="client", destination_service=REVIEWS, response_code="200",
                                  destination_workload="reviews-v6", reporter="waypoint") == 1
        finally:
            for client in clients.values():
                client.close()
            await waypoint.close()
            app.close()
    try:
        run(main())
    finally:
        log.setup("json", "info")   # (the process's log back on stderr)

    lines = _access_lines(out)
    requests = {line["path"]: line for line in lines if line["event"] == "request complete"}
    over4, over6 = requests["/over-4"], requests["/over-6"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", over4["src_addr"]), over4
    assert over4["src_workload"] == "client"
    assert re.fullmatch(r"\[::1\]:\d+", over6["src_addr"]), over6
    assert over4["upstream"] == over6["upstream"] and re.fullmatch(r"\[::1\]:\d+", over4["upstream"]), over4
    connections = [line for line in lines if line["event"] == "connection complete"]
    assert sorted(re.sub(r":\d+$", "", c["src_addr"]) for c in connections) == ["127.0.0.1", "[::1]"], connections
    assert all(c["dst"] == "[fd73:686f:616c:ff::c]:9090" and re.fullmatch(r"\[::1\]:\d+", c["upstream"])
               for c in connections), connections


def test_the_admin_ports_answer_both_families_on_one_socket():
    async def main():
        server = await admin_http.serve(sockets.ALL_ADDRESSES, 0, {"/metrics": lambda: (200, "text/plain", b"up 1\n")})
        try:
            (sock,) = server.sockets
            assert sock.family == socket.AF_INET6
            port = sock.getsockname()[1]
            for host in ("127.0.0.1", "::1"):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
                answer = await reader.read()
                writer.close()
                assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"up 1\n"), (host, answer)
        finally:
            server.close()
    run(main())


def test_a_taken_admin_port_is_an_error_not_a_shared_port():
    async def main():
        first = await admin_http.serve(sockets.ALL_ADDRESSES, 0, {})
        try:
            with pytest.raises(sockets.SocketError, match="check that nothing else holds the port$"):
                await admin_http.serve(sockets.ALL_ADDRESSES, first.sockets[0].getsockname()[1], {})
        finally:
            first.close()
    run(main())


def test_the_ingress_gateways_listeners_are_dual_stack_by_default():
    async def main():
        listener = IngressListener(proxy=None, port=0)
        await listener.start()
        try:
            assert listener.sock.family == socket.AF_INET6
            assert listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        finally:
            await listener.close()
    run(main())
