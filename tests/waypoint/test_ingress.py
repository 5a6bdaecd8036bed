"""The ingress gateway on the waypoint's engine, in process on loopback (no root).

The gateway (an `IngressListener` and a `Proxy` deciding with
`waypoint.ingress_routing.decide`) holds the test CA's certificate for
shoal-system/shoal-ingressgateway; behind it, the waypoint tests' mesh:
reviews v1 (plain TCP pods) and v2 (behind an HBONE terminator that
records the client's identity). Clients are real: curl for HTTP and HTTPS
with SNI (--resolve, as an outside client), Python's ssl for the
certificate a name gets.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import subprocess

import pytest
from cryptography import x509

from shoal import identity
from shoal.certs import CertManager
from shoal.model import Destination, Route, RouteMatch, RouteTable, StringMatch, MatchKind
from waypoint.draws import Draws
from waypoint.ingress import Certificate, CertificateInvalid, IngressListener, pick, server_context
from waypoint.ingress_routing import decide, host_of, table_for
from waypoint.proxy import Proxy
from waypoint.routing import Peer, Refusal, request_head
from waypoint.telemetry import Metrics
from waypoint.upstream import Upstreams

from support.ingress import self_signed as support_self_signed
from wp_mesh import Mesh, run
from wp_model import NS, REVIEWS, subset

GATEWAY = identity.parse_spiffe_id("spiffe://cluster.local/ns/shoal-system/sa/shoal-ingressgateway")


def self_signed(*names: str) -> Certificate:
    return Certificate(f"shop/{names[0]}", tuple(names), *support_self_signed(*names))


def routes_for(*routes, host="example.com", port=80):
    return {(host, port): RouteTable(host, port, NS, tuple(routes), "VirtualService shop/front")}


def v(version, weight=100):
    return Destination(REVIEWS, 9080, subset(version), version, weight)


class Gateway:
    def __init__(self, mesh: Mesh, routes, *, certificates=(), rand=None, gateway_port=80) -> None:
        self.certs = CertManager(mesh.ca.sign)
        self.upstreams = Upstreams(self.certs, GATEWAY, connect_timeout=2.0, hbone_port=mesh.hbone_port)
        self.routes = routes
        kwargs = {"rand": rand} if rand else {}
        self.proxy = Proxy(mesh.state, self.upstreams, Metrics(reporter="source"),     # as ingress_main makes it
                           decider=lambda state, peer, head, r: decide(state, lambda: self.routes, peer, head, r),
                           **kwargs)
        self.listener = IngressListener(self.proxy, 0, host="127.0.0.1", gateway_port=gateway_port,
                                        certificates=certificates)

    async def __aenter__(self):
        await self.listener.start()
        return self

    async def __aexit__(self, *exc):
        await self.listener.close()
        await self.proxy.close()
        self.upstreams.close()


async def curl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec("curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


def test_host_and_port_pick_the_gateway_route_table():
    tables = {**routes_for(Route(destinations=(v("v1"),))), **routes_for(Route(), host="*.shop.test"),
              **routes_for(Route(), host="*.test")}
    assert table_for(tables, "example.com", 80).hostname == "example.com"
    assert table_for(tables, "example.com", 443) is None
    assert table_for(tables, "a.b.shop.test", 80).hostname == "*.shop.test"
    assert table_for(tables, "other.test", 80).hostname == "*.test"
    assert host_of("Example.COM:8080") == "example.com" and host_of("[fd73::1]:80") == "[fd73::1]"


def test_unknown_hosts_are_404_and_nothing_is_sent():
    mesh = Mesh()
    refusal = decide(mesh.state, lambda: routes_for(Route(destinations=(v("v1"),))),
                     Peer("198.18.0.200", None, ("0.0.0.0", 80)), request_head("GET", "/", "nope.example"), random.random)
    assert isinstance(refusal, Refusal) and refusal.status == 404 and "nope.example" in refusal.reason


def test_an_ingress_request_hits_the_plan_memo_of_its_route():
    """A port-less destination's route is given its port once per state version, and the addressed host is one
    Service object, so the waypoint's plan memo (keyed by those objects) is hit, not filled per request."""
    mesh = Mesh()
    routes = routes_for(Route(name="all", destinations=(Destination(REVIEWS),)))
    plans = [decide(mesh.state, lambda: routes, Peer("198.18.0.200", None, ("0.0.0.0", 80)),
                    request_head("GET", "/", "example.com"), lambda: 0.0) for _ in range(3)]
    assert plans[0] == plans[1] == plans[2] and plans[0].destination_port == 9080
    assert len(mesh.state.cached("plans")) == 1


def test_the_plan_and_the_metrics_name_the_backend_service_not_the_host():
    mesh = Mesh()
    plan = decide(mesh.state, lambda: routes_for(Route(name="all", destinations=(v("v1"),))),
                  Peer("198.18.0.200", None, ("0.0.0.0", 80)), request_head("GET", "/", "example.com"), random.random)
    assert (plan.service, plan.service_name, plan.service_namespace) == (REVIEWS, "reviews", NS), plan
    assert plan.destination_service == REVIEWS and plan.route == "all"

    async def body():
        async with Mesh() as mesh, Gateway(mesh, routes_for(Route(name="all", destinations=(v("v1"),)))) as gateway:
            code, _ = await curl("-H", "Host: example.com", f"http://127.0.0.1:{gateway.listener.port}/m")
            return code, gateway.proxy.metrics.render().decode()
    code, metrics = run(body())
    assert code == 200
    (line,) = [m for m in metrics.splitlines() if m.startswith("istio_requests_total{")]
    assert f'destination_service="{REVIEWS}"' in line and 'destination_service_name="reviews"' in line, line
    assert f'destination_service_namespace="{NS}"' in line and "example.com" not in line, line
    assert 'reporter="source"' in line, line        # the gateway is the mesh's client, as Istio's gateways report


def test_http_from_outside_is_routed_by_host_and_path_into_the_mesh_with_the_gateway_identity():
    api = Route(name="api", matches=(RouteMatch(path=StringMatch(MatchKind.PREFIX, "/api")),), destinations=(v("v2"),))
    rest = Route(name="rest", destinations=(v("v1"),))

    async def body():
        async with Mesh() as mesh, Gateway(mesh, routes_for(api, rest)) as gateway:
            port = gateway.listener.port
            resolve = f"example.com:{port}:127.0.0.1"
            api_answer = await curl("--resolve", resolve, f"http://example.com:{port}/api/items")
            rest_answer = await curl("--resolve", resolve, f"http://example.com:{port}/home")
            unknown = await curl("-H", "Host: other.example", f"http://127.0.0.1:{port}/")
            return api_answer, rest_answer, unknown, mesh.endpoint.peers, mesh.hits("v2"), \
                mesh.hits("v1") + mesh.hits("v1b")
    api_answer, rest_answer, unknown, peers, v2_hits, v1_hits = run(body())
    assert api_answer[0] == 200 and rest_answer[0] == 200 and unknown[0] == 404
    assert [h[1] for h in v2_hits] == ["/api/items"] and [h[1] for h in v1_hits] == ["/home"]
    assert peers == [str(GATEWAY)]     # into the mesh over HBONE as the gateway, as a STRICT destination requires


def test_https_sni_picks_the_certificate(tmp_path):
    shop, books = self_signed("shop.example.com"), self_signed("books.example.com", "*.books.example.com")
    route = Route(destinations=(v("v1"),))
    tables = {**routes_for(route, host="shop.example.com", port=443),
              **routes_for(route, host="books.example.com", port=443)}

    async def body():
        async with Mesh() as mesh:
            async with Gateway(mesh, tables, certificates=(shop, books), gateway_port=443) as gateway:
                port = gateway.listener.port
                seen = {}
                for name in ("shop.example.com", "books.example.com", "a.books.example.com", None):
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                                   server_hostname=name)
                    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                    seen[name] = x509.load_der_x509_certificate(der).subject.rfc4514_string()
                    writer.close()
                answers = []
                for name in ("shop.example.com", "books.example.com"):
                    trusted = ca_file(tmp_path, shop if name.startswith("shop") else books)
                    answers.append(await curl("--cacert", trusted, "--resolve", f"{name}:{port}:127.0.0.1",
                                              f"https://{name}:{port}/x"))
                return seen, answers
    seen, answers = run(body())
    assert seen == {"shop.example.com": "CN=shop.example.com", "books.example.com": "CN=books.example.com",
                    "a.books.example.com": "CN=books.example.com", None: "CN=shop.example.com"}
    assert [a[0] for a in answers] == [200, 200]    # curl verified each name against its own certificate


def ca_file(directory, certificate: Certificate) -> str:
    """The certificate as a file curl can trust (it is self-signed: its own CA)."""
    path = directory / f"{certificate.hosts[0].replace('*', 'any')}.pem"
    path.write_bytes(certificate.chain_pem)
    return str(path)


def test_a_weighted_route_splits_as_asked():
    split = Route(name="split", destinations=(v("v1", 50), v("v2", 50)))

    async def body():
        # The gateway's own source (waypoint.draws.Draws: a spread stream per route), seeded.
        async with Mesh() as mesh, Gateway(mesh, routes_for(split), rand=Draws(random.Random(15).random)) as gateway:
            port = gateway.listener.port
            for _ in range(400):
                code, _ = await curl("-H", "Host: example.com", f"http://127.0.0.1:{port}/w")
                assert code == 200
            return len(mesh.hits("v1")) + len(mesh.hits("v1b")), len(mesh.hits("v2"))
    v1, v2 = run(body(), timeout=300)
    assert v1 + v2 == 400 and 197 <= v2 <= 203, (v1, v2)


def test_bad_certificates_are_refused_naming_the_secret():
    bad = Certificate("shop/broken", ("x.example",), b"not a certificate", b"not a key")
    with pytest.raises(CertificateInvalid, match="shop/broken"):
        server_context((bad,))
    assert pick((self_signed("a.example"), self_signed("*.example")), "b.example") == 1
