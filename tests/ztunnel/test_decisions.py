"""Table-driven tests of the pure parts: the outbound decision and L4 authorization."""

from __future__ import annotations

import pytest

from shoal.model import (
    Action, Authorization, Endpoint, Operation, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol,
    ResourceType, Rule, Service, ServicePort, Snapshot, Source, Waypoint, WaypointRef, Workload, freeze_labels,
)
from shoal import authz
from shoal.identity import parse_spiffe_id
from shoal.proxy_state import ProxyState
from ztunnel.outbound import (
    Balancer, Kind, NoEndpoints, Plan, UnknownServicePort, WaypointMissing, decide,
)

TD = "cluster.local"


def wl(uid, ip, ns="app", sa="default", protocol=Protocol.HBONE, waypoint=None, labels=None, name=None, node="node1"):
    return Workload(uid=uid, name=name or uid, namespace=ns, service_account=sa, node=node, ips=(ip,),
                    labels=freeze_labels(labels or {}), protocol=protocol, waypoint=waypoint)


def svc(name, vip, endpoints, ns="app", port=80, waypoint=None, ports=None):
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local", vips=(vip,),
                   ports=tuple(ServicePort(p) for p in (ports or (port,))),
                   endpoints=tuple(Endpoint(uid, port, target) for uid, target in endpoints), waypoint=waypoint)


CLIENT = wl("client", "198.19.1.2", sa="client")
SERVER_A = wl("server-a", "198.19.2.2", sa="server")
SERVER_B = wl("server-b", "198.19.2.3", sa="server")
PLAIN = wl("plain", "198.19.2.9", ns="legacy", protocol=Protocol.TCP)
WP_REF = WaypointRef("app", "waypoint")
WP_POD = wl("waypoint-pod", "198.19.2.50", sa="waypoint", name="waypoint-6f7c9")
WP = Waypoint(name="waypoint", namespace="app", service_account="waypoint")
WP_SVC = svc("waypoint", "198.18.16.50", [("waypoint-pod", 15008)], port=15008)
WORKLOAD_WP = Waypoint(name="wwp", namespace="app", service_account="wwp", traffic_type="workload")
WORKLOAD_WP_POD = wl("wwp-pod", "198.19.2.60", sa="wwp", name="wwp-abc")
WORKLOAD_WP_SVC = svc("wwp", "198.18.16.60", [("wwp-pod", 15008)], port=15008)
BEHIND_WWP = wl("behind", "198.19.2.61", waypoint=WaypointRef("app", "wwp"))
BEHIND_GHOST = wl("behind-ghost", "198.19.2.62", waypoint=WaypointRef("app", "nope"))

WEB = svc("web", "198.18.16.10", [("server-a", 8080), ("server-b", 8080)])
MIXED = svc("mixed", "198.18.16.11", [("plain", 9000)])
EMPTY = svc("empty", "198.18.16.12", [])
VIA_WP = svc("reviews", "198.18.16.13", [("server-a", 8080)], waypoint=WP_REF)
GHOST_WP = svc("ghost", "198.18.16.14", [("server-a", 8080)], waypoint=WaypointRef("app", "nope"))
GONE_EP = svc("gone", "198.18.16.15", [("no-such-pod", 8080)])
MULTI = svc("multi", "198.18.16.16", [("server-a", 8080)], ports=(80, 443))


def make_state() -> ProxyState:
    state = ProxyState(TD)
    for r in (CLIENT, SERVER_A, SERVER_B, PLAIN, WP_POD, WP, WP_SVC, WEB, MIXED, EMPTY, VIA_WP, GHOST_WP,
              GONE_EP, MULTI, WORKLOAD_WP, WORKLOAD_WP_POD, WORKLOAD_WP_SVC, BEHIND_WWP, BEHIND_GHOST):
        state.upsert(r)
    state.check()
    return state


SRC_ID = parse_spiffe_id("spiffe://cluster.local/ns/app/sa/client")
SERVER_ID = parse_spiffe_id("spiffe://cluster.local/ns/app/sa/server")
WEB_HOST = "web.app.svc.cluster.local"

CASES = [
    ("pod ip, meshed", CLIENT, "198.19.2.2", 8080,
     Plan(Kind.HBONE, ("198.19.2.2", 15008), "198.19.2.2:8080", SRC_ID, SERVER_ID, "", "server-a", ("198.19.2.2", 8080))),
    ("pod ip, other port", CLIENT, "198.19.2.3", 9999,
     Plan(Kind.HBONE, ("198.19.2.3", 15008), "198.19.2.3:9999", SRC_ID, SERVER_ID, "", "server-b", ("198.19.2.3", 9999))),
    ("pod ip, not meshed", CLIENT, "198.19.2.9", 5432,
     Plan(Kind.PASSTHROUGH, ("198.19.2.9", 5432), destination_workload="plain")),
    ("outside the mesh", CLIENT, "198.18.99.1", 443, Plan(Kind.PASSTHROUGH, ("198.18.99.1", 443))),
    ("node ip", CLIENT, "198.18.0.2", 22, Plan(Kind.PASSTHROUGH, ("198.18.0.2", 22))),
    ("service vip, first endpoint", CLIENT, "198.18.16.10", 80,
     Plan(Kind.HBONE, ("198.19.2.2", 15008), "198.19.2.2:8080", SRC_ID, SERVER_ID, WEB_HOST, "server-a", ("198.19.2.2", 8080))),
    ("service vip, unmeshed endpoint goes direct", CLIENT, "198.18.16.11", 80,
     Plan(Kind.DIRECT, ("198.19.2.9", 9000), service="mixed.app.svc.cluster.local", destination_workload="plain",
          endpoint=("198.19.2.9", 9000))),
    ("service with waypoint", CLIENT, "198.18.16.13", 80,
     Plan(Kind.WAYPOINT, ("198.19.2.50", 15008), "198.18.16.13:80", SRC_ID,
          parse_spiffe_id("spiffe://cluster.local/ns/app/sa/waypoint"), "reviews.app.svc.cluster.local", "", ("198.19.2.50", 15008))),
    ("the waypoint itself bypasses its own waypoint", WP_POD, "198.18.16.13", 80,
     Plan(Kind.HBONE, ("198.19.2.2", 15008), "198.19.2.2:8080", parse_spiffe_id("spiffe://cluster.local/ns/app/sa/waypoint"), SERVER_ID,
          "reviews.app.svc.cluster.local", "server-a", ("198.19.2.2", 8080))),
    ("a pod named and labelled like the waypoint is not it", wl("waypoint-fake", "198.19.1.9", name="waypoint-1",
                                                                 labels={"app": "waypoint"}), "198.18.16.13", 80,
     Plan(Kind.WAYPOINT, ("198.19.2.50", 15008), "198.18.16.13:80", parse_spiffe_id("spiffe://cluster.local/ns/app/sa/default"),
          parse_spiffe_id("spiffe://cluster.local/ns/app/sa/waypoint"), "reviews.app.svc.cluster.local", "",
          ("198.19.2.50", 15008))),
    ("workload behind a workload waypoint", CLIENT, "198.19.2.61", 7000,
     Plan(Kind.WAYPOINT, ("198.19.2.60", 15008), "198.19.2.61:7000", SRC_ID, parse_spiffe_id("spiffe://cluster.local/ns/app/sa/wwp"),
          "", "behind", ("198.19.2.60", 15008))),
    ("workload waypoint sending to its workload", WORKLOAD_WP_POD, "198.19.2.61", 7000,
     Plan(Kind.HBONE, ("198.19.2.61", 15008), "198.19.2.61:7000", parse_spiffe_id("spiffe://cluster.local/ns/app/sa/wwp"),
          parse_spiffe_id("spiffe://cluster.local/ns/app/sa/default"), "", "behind", ("198.19.2.61", 7000))),
    ("service vip, second listed port", CLIENT, "198.18.16.16", 443, NoEndpoints),
    ("service vip, unknown port", CLIENT, "198.18.16.10", 81, UnknownServicePort),
    ("service without endpoints", CLIENT, "198.18.16.12", 80, NoEndpoints),
    ("service whose endpoints are gone", CLIENT, "198.18.16.15", 80, NoEndpoints),
    ("service with unknown waypoint", CLIENT, "198.18.16.14", 80, WaypointMissing),
    ("workload with unknown waypoint is refused, not sent direct", CLIENT, "198.19.2.62", 80, WaypointMissing),
    ("source in another namespace keeps its identity", wl("x", "198.19.1.7", ns="other", sa="robot"), "198.19.2.2", 80,
     Plan(Kind.HBONE, ("198.19.2.2", 15008), "198.19.2.2:80", parse_spiffe_id("spiffe://cluster.local/ns/other/sa/robot"), SERVER_ID,
          "", "server-a", ("198.19.2.2", 80))),
    ("unmeshed source to vip still balances", PLAIN, "198.18.16.10", 80,
     Plan(Kind.HBONE, ("198.19.2.2", 15008), "198.19.2.2:8080", parse_spiffe_id("spiffe://cluster.local/ns/legacy/sa/default"),
          SERVER_ID, WEB_HOST, "server-a", ("198.19.2.2", 8080))),
    ("pod to itself", SERVER_A, "198.19.2.2", 8080,
     Plan(Kind.HBONE, ("198.19.2.2", 15008), "198.19.2.2:8080", SERVER_ID, SERVER_ID, "", "server-a", ("198.19.2.2", 8080))),
    ("waypoint service vip itself", CLIENT, "198.18.16.50", 15008,
     Plan(Kind.HBONE, ("198.19.2.50", 15008), "198.19.2.50:15008", SRC_ID, parse_spiffe_id("spiffe://cluster.local/ns/app/sa/waypoint"),
          "waypoint.app.svc.cluster.local", "waypoint-pod", ("198.19.2.50", 15008))),
]


@pytest.mark.parametrize("name,source,ip,port,expected", CASES, ids=[c[0] for c in CASES])
def test_outbound_decision(name, source, ip, port, expected):
    state = make_state()
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            decide(state, source, ip, port, Balancer())
        assert "check" in str(info.value)
    else:
        assert decide(state, source, ip, port, Balancer()) == expected


def test_nothing_is_sent_before_the_whole_config_arrived():
    """Not even passthrough: without the config, a Service VIP or a STRICT pod would look like 'outside'."""
    from shoal.model import ResourceType
    from ztunnel.outbound import NoConfig

    state = ProxyState(TD, expects=(ResourceType.WORKLOAD, ResourceType.SERVICE))
    for ip, port in (("198.18.16.10", 80), ("198.18.99.1", 443)):
        with pytest.raises(NoConfig, match="no config"):
            decide(state, CLIENT, ip, port, Balancer())


def test_round_robin_alternates_and_skips_failing_endpoint():
    state, clock = make_state(), [0.0]
    balancer = Balancer(max_failures=2, eject_seconds=5, clock=lambda: clock[0])
    picks = [decide(state, CLIENT, "198.18.16.10", 80, balancer).endpoint for _ in range(4)]
    assert picks == [("198.19.2.2", 8080), ("198.19.2.3", 8080)] * 2
    balancer.failed(("198.19.2.3", 8080))
    balancer.failed(("198.19.2.3", 8080))
    picks = {decide(state, CLIENT, "198.18.16.10", 80, balancer).endpoint for _ in range(4)}
    assert picks == {("198.19.2.2", 8080)}
    clock[0] = 6.0  # ejection over: back in rotation
    picks = {decide(state, CLIENT, "198.18.16.10", 80, balancer).endpoint for _ in range(4)}
    assert picks == {("198.19.2.2", 8080), ("198.19.2.3", 8080)}


def test_all_endpoints_failing_still_tries_them():
    state, balancer = make_state(), Balancer(max_failures=1)
    for ep in (("198.19.2.2", 8080), ("198.19.2.3", 8080)):
        balancer.failed(ep)
    assert decide(state, CLIENT, "198.18.16.10", 80, balancer).endpoint in {("198.19.2.2", 8080), ("198.19.2.3", 8080)}


def test_least_connections_prefers_the_idle_endpoint():
    state, balancer = make_state(), Balancer(mode="least_connections")
    balancer.opened(("198.19.2.2", 8080))
    assert decide(state, CLIENT, "198.18.16.10", 80, balancer).endpoint == ("198.19.2.3", 8080)
    balancer.opened(("198.19.2.3", 8080))
    balancer.opened(("198.19.2.3", 8080))
    balancer.closed(("198.19.2.2", 8080))
    assert decide(state, CLIENT, "198.18.16.10", 80, balancer).endpoint == ("198.19.2.2", 8080)


# --- authorization -------------------------------------------------------------

def policy(name, action, rules, ns="app", scope=PolicyScope.NAMESPACE, selector=None):
    return Authorization(name=name, namespace=ns, scope=scope, action=action, rules=tuple(rules),
                         selector=freeze_labels(selector or {}))


FRONT = "cluster.local/ns/front/sa/web"
BACK = "cluster.local/ns/back/sa/api"
def l4(source_ip, port, principal=None, namespace=None):
    """What the ztunnel knows of a connection: no HTTP, so policies are judged l4_only."""
    return authz.RequestFacts(source_ip, principal, namespace, port, l4_only=True)


MTLS_FRONT = l4("198.19.1.2", 8080, FRONT, "front")
MTLS_BACK = l4("198.19.1.3", 8080, BACK, "back")
PLAINTEXT = l4("198.19.1.9", 8080)

ALLOW_FRONT = policy("allow-front", Action.ALLOW, [Rule(sources=(Source(principals=(FRONT,)),))])
DENY_ALL = policy("deny-all", Action.DENY, [Rule()])
ALLOW_NOTHING = policy("allow-nothing", Action.ALLOW, [])
DENY_BACK_NS = policy("deny-back", Action.DENY, [Rule(sources=(Source(namespaces=("back",)),))])
ALLOW_PORT_9090 = policy("allow-9090", Action.ALLOW, [Rule(operations=(Operation(ports=(9090,)),))])
ALLOW_GET = policy("allow-get", Action.ALLOW, [Rule(operations=(Operation(methods=("GET",)),))])
DENY_POST = policy("deny-post", Action.DENY, [Rule(operations=(Operation(methods=("POST",)),))])
ALLOW_CIDR = policy("allow-cidr", Action.ALLOW, [Rule(sources=(Source(ip_blocks=("198.19.1.0/30",)),))])
DENY_NOT_MTLS = policy("require-mtls", Action.DENY, [Rule(sources=(Source(not_principals=("*",)),))])
ALLOW_WILDCARD = policy("allow-ns-front", Action.ALLOW, [Rule(sources=(Source(principals=("cluster.local/ns/front/*",)),))])

AUTHZ_CASES = [
    ("no policy allows", [], MTLS_FRONT, True, ""),
    ("allow principal admits it", [ALLOW_FRONT], MTLS_FRONT, True, "app/allow-front"),
    ("allow principal refuses another", [ALLOW_FRONT], MTLS_BACK, False, ""),
    ("allow principal refuses plaintext", [ALLOW_FRONT], PLAINTEXT, False, ""),
    ("deny all wins over allow", [ALLOW_FRONT, DENY_ALL], MTLS_FRONT, False, "app/deny-all"),
    ("allow with no rules allows nothing", [ALLOW_NOTHING], MTLS_FRONT, False, ""),
    ("deny by namespace", [DENY_BACK_NS], MTLS_BACK, False, "app/deny-back"),
    ("deny by namespace spares others", [DENY_BACK_NS], MTLS_FRONT, True, ""),
    ("deny by namespace spares plaintext", [DENY_BACK_NS], PLAINTEXT, True, ""),
    ("allow port matches", [ALLOW_PORT_9090], l4("198.19.1.2", 9090, FRONT, "front"), True, "app/allow-9090"),
    ("allow port other port", [ALLOW_PORT_9090], MTLS_FRONT, False, ""),
    ("L7 allow matches nothing at L4", [ALLOW_GET], MTLS_FRONT, False, ""),
    ("L7 deny denies at L4", [DENY_POST], MTLS_FRONT, False, "app/deny-post"),
    ("ip block admits", [ALLOW_CIDR], MTLS_BACK, True, "app/allow-cidr"),
    ("ip block refuses outside", [ALLOW_CIDR], PLAINTEXT, False, ""),
    ("not principals * denies plaintext", [DENY_NOT_MTLS], PLAINTEXT, False, "app/require-mtls"),
    ("not principals * spares mTLS", [DENY_NOT_MTLS], MTLS_BACK, True, ""),
    ("prefix wildcard principal", [ALLOW_WILDCARD], MTLS_FRONT, True, "app/allow-ns-front"),
    ("prefix wildcard refuses other ns", [ALLOW_WILDCARD], MTLS_BACK, False, ""),
    ("any of several allows", [ALLOW_PORT_9090, ALLOW_FRONT], MTLS_FRONT, True, "app/allow-front"),
]


@pytest.mark.parametrize("name,policies,conn,allowed,decider", AUTHZ_CASES, ids=[c[0] for c in AUTHZ_CASES])
def test_authorize(name, policies, conn, allowed, decider):
    verdict = authz.authorize(policies, conn)
    assert verdict.allowed is allowed
    assert verdict.policy == decider
    assert verdict.reason


@pytest.mark.parametrize("dialled, plan", [
    ("198.18.99.1", Plan(Kind.PASSTHROUGH, ("198.18.99.1", 443))),   # outside the mesh: both lookups miss
    ("::ffff:198.18.99.1", Plan(Kind.PASSTHROUGH, ("198.18.99.1", 443))),
    ("::ffff:198.19.2.9", Plan(Kind.PASSTHROUGH, ("198.19.2.9", 443), destination_workload="plain")),
])
def test_the_dialled_address_is_canonicalised_once_per_decision(monkeypatch, dialled, plan):
    import shoal.proxy_state
    import ztunnel.outbound
    from shoal.model.addresses import canonical_or_none
    state = make_state()
    calls = []

    def counted(text):
        calls.append(text)
        return canonical_or_none(text)
    monkeypatch.setattr(ztunnel.outbound, "canonical_or_none", counted)
    monkeypatch.setattr(shoal.proxy_state, "canonical_or_none", counted)
    assert decide(state, CLIENT, dialled, 443, Balancer()) == plan
    assert calls == [dialled]
