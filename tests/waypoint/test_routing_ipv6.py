"""The waypoint over IPv6: a CONNECT to a service's IPv6 VIP or a pod's IPv6 address is routed as over
IPv4, and the waypoint's own tunnels to endpoints name them in bracketed authorities."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

from shoal.identity import parse_spiffe_id
from shoal.model import Endpoint, Protocol, Service, ServicePort, Waypoint, Workload, freeze_labels
from shoal.proxy_state import ProxyState
from waypoint.routing import Peer, Plan, Refusal, request_head, Upstream, decide, decide_tcp
from waypoint.upstream import Upstreams

NS = "shop"
VIP_4, VIP_6 = "198.18.16.10", "fd73:686f:616c:ff::a"
POD_6 = "fd73:686f:616c:1::b"
CLIENT = parse_spiffe_id(f"spiffe://cluster.local/ns/{NS}/sa/client")


def state():
    s = ProxyState(waypoint=(NS, "waypoint"))
    pod = Workload(uid="uid-r", name="r", namespace=NS, service_account="reviews", node="node1",
                   ips=(POD_6, "198.19.1.11"), labels=freeze_labels({"app": "reviews"}), protocol=Protocol.HBONE)
    for item in (pod, Waypoint("waypoint", NS, "waypoint"),
                 Service(name="reviews", namespace=NS, hostname=f"reviews.{NS}.svc.cluster.local", vips=(VIP_4, VIP_6),
                         ports=(ServicePort(9080, "http", app_protocol="http"),), endpoints=(Endpoint("uid-r", 9080, 8080),))):
        s.upsert(item)
    return s


def head():
    return request_head("GET", "/", "reviews:9080", ())


def test_an_ipv6_vip_and_its_other_spellings_are_the_service():
    for dialled in (VIP_6, "FD73:686F:616C:FF:0:0:0:A", f"::ffff:{VIP_4}"):
        plan = decide(state(), Peer("fd73:686f:616c:2::20", CLIENT, (dialled, 9080)), head(), random.Random(1).random)
        assert isinstance(plan, Plan) and plan.service == f"reviews.{NS}.svc.cluster.local", dialled
        assert [u.address for u in plan.upstreams] == [(POD_6, 8080)]
        assert plan.upstreams[0].connect == (POD_6, 15008)


def test_a_pods_ipv6_address_and_an_unknown_one():
    plan = decide_tcp(state(), Peer("fd73:686f:616c:2::20", CLIENT, (POD_6, 8080)), random.Random(1).random)
    assert isinstance(plan, Plan) and [u.address for u in plan.upstreams] == [(POD_6, 8080)]
    refused = decide(state(), Peer("fd73:686f:616c:2::20", CLIENT, ("fd73:686f:616c:1::99", 8080)), head(),
                     random.Random(1).random)
    assert isinstance(refused, Refusal) and refused.status == 404
    assert refused.reason.startswith("[fd73:686f:616c:1::99]:8080 ")


def test_the_tunnel_to_an_ipv6_endpoint_names_it_bracketed():
    asked = []

    class Pool:
        async def open_stream(self, key, authority, timeout):
            asked.append((key.destination, authority))
            return object()

    upstreams = Upstreams(certs=SimpleNamespace(client_context=None), who=CLIENT)   # no TLS is made here
    upstreams.pool = Pool()
    upstream = Upstream(address=(POD_6, 8080), hbone=True, identity=CLIENT, workload_uid="uid-r", workload_name="r",
                        workload_namespace=NS)
    asyncio.run(upstreams.open(upstream))
    assert asked == [((POD_6, 15008), f"[{POD_6}]:8080")]
