"""The waypoint's pure decision: table-driven cases, and weighted picks converging to their weights."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from shoal.model import (
    ResourceType, Destination, Fault, HeaderChanges, HeaderMatch, MatchKind, Mirror, PolicyScope, RetryPolicy, Route,
    RouteMatch, StringMatch,
)

from waypoint.routing import (
    FaultPlan, Peer, Plan, Refusal, request_head, decide, pick_weighted, shadow_authority,
)
from shoal.identity import parse_spiffe_id
from wp_model import (
    CLIENT, NS, REVIEWS, SHADOW, V2, VIP, mesh, policy, scripted, subset, table, to,
)

PRINCIPAL = parse_spiffe_id(f"spiffe://cluster.local/ns/{NS}/sa/client")
V1B_UID = "uid-reviews-v1-b"


def peer(port=9080, ip=VIP, principal=PRINCIPAL):
    return Peer(CLIENT.ips[0], principal, (ip, port))


def get(path="/", method="GET", host="reviews:9080", **headers):
    return request_head(method, path, host, tuple((k.replace("_", "-"), v) for k, v in headers.items()))


def addresses(plan):
    return [u.address for u in plan.upstreams]


V1_ADDRS = {("198.19.1.11", 8080), ("198.19.2.12", 8080)}


def exact(p):
    return RouteMatch(path=StringMatch(MatchKind.EXACT, p))


# (name, extra config, peer, request, random values, check)
CASES = [
    ("no route table: the service itself, every endpoint",
     (), peer(), get(), (),
     lambda r: isinstance(r, Plan) and set(addresses(r)) == V1_ADDRS | {("198.19.1.13", 8080)}
     and r.route == "" and r.destination_service == REVIEWS),
    ("unknown VIP: 404 NR",
     (), peer(ip="198.18.16.99"), get(), (),
     lambda r: isinstance(r, Refusal) and (r.status, r.flag) == (404, "NR")),
    ("a workload IP: straight to that pod",
     (), peer(ip=V2.ips[0], port=8080), get(), (),
     lambda r: isinstance(r, Plan) and addresses(r) == [("198.19.1.13", 8080)] and not r.upstreams[0].hbone),
    ("service port that does not exist: 404",
     (), peer(port=81), get(), (),
     lambda r: isinstance(r, Refusal) and r.status == 404 and "no port 81" in r.reason),
    ("subset v1: only v1 pods, HBONE with their identity",
     (table(Route(destinations=(to("v1"),))),), peer(), get(), (),
     lambda r: set(addresses(r)) == V1_ADDRS and all(u.hbone for u in r.upstreams)
     and str(r.upstreams[0].identity) == "spiffe://cluster.local/ns/shop/sa/reviews" and r.subset == "v1"),
    ("subset v2: a plain-TCP pod", (table(Route(destinations=(to("v2"),))),), peer(), get(), (),
     lambda r: addresses(r) == [("198.19.1.13", 8080)] and not r.upstreams[0].hbone),
    ("weights 90/10, low roll: v1", (table(Route(destinations=(to("v1", 90), to("v2", 10)))),), peer(), get(),
     (0.89,), lambda r: r.subset == "v1"),
    ("weights 90/10, high roll: v2", (table(Route(destinations=(to("v1", 90), to("v2", 10)))),), peer(), get(),
     (0.9,), lambda r: r.subset == "v2"),
    ("weight 0 is never picked", (table(Route(destinations=(to("v1", 0), to("v2", 5)))),), peer(), get(),
     (0.0,), lambda r: r.subset == "v2"),
    ("all weights 0: 503", (table(Route(destinations=(to("v1", 0),))),), peer(), get(), (),
     lambda r: isinstance(r, Refusal) and r.status == 503),
    ("endpoint order: rotated by the roll, every endpoint kept for retries",
     (table(Route(destinations=(to("v1"),))),), peer(), get(), (0.0, 0.9),
     lambda r: addresses(r) == [("198.19.2.12", 8080), ("198.19.1.11", 8080)]),
    ("header match routes to v2",
     (table(Route("jason", matches=(RouteMatch(headers=(HeaderMatch("end-user", StringMatch(MatchKind.EXACT, "jason")),)),),
                  destinations=(to("v2"),)), Route("rest", destinations=(to("v1"),))),),
     peer(), get(end_user="jason"), (), lambda r: r.subset == "v2" and r.route == "jason"),
    ("header absent falls through to the next route",
     (table(Route("jason", matches=(RouteMatch(headers=(HeaderMatch("end-user", StringMatch(MatchKind.EXACT, "jason")),)),),
                  destinations=(to("v2"),)), Route("rest", destinations=(to("v1"),))),),
     peer(), get(), (), lambda r: r.subset == "v1" and r.route == "rest"),
    ("inverted header match (withoutHeaders)",
     (table(Route(matches=(RouteMatch(headers=(HeaderMatch("x-test", StringMatch(MatchKind.PRESENT), invert=True),)),),
                  destinations=(to("v2"),))),),
     peer(), get(x_test="1"), (), lambda r: isinstance(r, Refusal) and (r.status, r.flag) == (404, "NR")),
    ("path prefix and exact; query ignored for the path",
     (table(Route(matches=(exact("/api/ratings"),), destinations=(to("v2"),)),
            Route(matches=(RouteMatch(path=StringMatch(MatchKind.PREFIX, "/api")),), destinations=(to("v1"),))),),
     peer(), get("/api/ratings?x=1"), (), lambda r: r.subset == "v2"),
    ("regex path",
     (table(Route(matches=(RouteMatch(path=StringMatch(MatchKind.REGEX, r"/item/\d+")),), destinations=(to("v2"),))),),
     peer(), get("/item/42"), (), lambda r: r.subset == "v2"),
    ("method match", (table(Route(matches=(RouteMatch(method="POST"),), destinations=(to("v2"),)),
                            Route(destinations=(to("v1"),))),),
     peer(), get(method="POST"), (), lambda r: r.subset == "v2"),
    ("query parameter match",
     (table(Route(matches=(RouteMatch(query_params=(HeaderMatch("debug", StringMatch(MatchKind.EXACT, "1")),)),),
                  destinations=(to("v2"),)), Route(destinations=(to("v1"),))),),
     peer(), get("/?debug=1"), (), lambda r: r.subset == "v2"),
    ("no route matches: 404 NR naming the table",
     (table(Route(matches=(exact("/only"),), destinations=(to("v1"),))),), peer(), get("/other"), (),
     lambda r: isinstance(r, Refusal) and r.status == 404 and "VirtualService shop/r" in r.reason),
    ("a subset with no pods: 503 UH",
     (table(Route(destinations=(to("v9"),))),), peer(), get(), (),
     lambda r: isinstance(r, Refusal) and (r.status, r.flag) == (503, "UH") and "v9" in r.reason),
    ("an unknown destination host: 503",
     (table(Route(destinations=(Destination("nope.shop.svc.cluster.local"),))),), peer(), get(), (),
     lambda r: isinstance(r, Refusal) and r.status == 503 and "nope" in r.reason),
    ("abort at 100%: planned, with the status",
     (table(Route(destinations=(to("v1"),), fault=Fault(abort_status=418, abort_percentage=100))),), peer(), get(),
     (0.0, 0.0), lambda r: r.fault == FaultPlan(None, 418)),
    ("abort at 10%, roll 0.5: not this time",
     (table(Route(destinations=(to("v1"),), fault=Fault(abort_status=500, abort_percentage=10))),), peer(), get(),
     (0.0, 0.5), lambda r: r.fault == FaultPlan()),
    ("delay and abort both rolled",
     (table(Route(destinations=(to("v1"),), fault=Fault(delay=2.0, delay_percentage=50, abort_status=503,
                                                          abort_percentage=50))),), peer(), get(),
     (0.0, 0.1, 0.2), lambda r: r.fault == FaultPlan(2.0, 503)),
    ("timeout, retry and header changes carried as written",
     (table(Route(destinations=(to("v1"),), timeout=0.5, retry=RetryPolicy(3, 0.1, ("5xx",)),
                  request_headers=HeaderChanges(set=(("x-a", "1"),)), response_headers=HeaderChanges(remove=("server",)))),),
     peer(), get(), (), lambda r: r.timeout == 0.5 and r.retry == RetryPolicy(3, 0.1, ("5xx",))
     and r.request_headers.set == (("x-a", "1"),) and r.response_headers.remove == ("server",)),
    ("mirror at 100%: shadow service with -shadow host",
     (table(Route(destinations=(to("v1"),), mirrors=(Mirror(Destination(SHADOW), 100.0),))),), peer(), get(), (),
     lambda r: len(r.mirrors) == 1 and r.mirrors[0].upstream.address == ("198.19.2.14", 8080)
     and r.mirrors[0].authority == "reviews-shadow:9080"),
    ("mirror at 30%, roll 0.5: no mirror",
     (table(Route(destinations=(to("v1"),), mirrors=(Mirror(Destination(SHADOW), 30.0),))),), peer(), get(),
     (0.0, 0.5), lambda r: r.mirrors == ()),
    ("DENY on a path: 403 naming the policy",
     (policy("no-admin", "DENY", paths=("/admin*",)),), peer(), get("/admin/x"), (),
     lambda r: isinstance(r, Refusal) and (r.status, r.flag, r.policy) == (403, "RBAC", "shop/no-admin")),
    ("DENY on a path: other paths pass",
     (policy("no-admin", "DENY", paths=("/admin*",)),), peer(), get("/public"), (), lambda r: isinstance(r, Plan)),
    ("DENY wins over ALLOW",
     (policy("all", "ALLOW", methods=("GET",)), policy("no-admin", "DENY", paths=("/admin",))), peer(), get("/admin"), (),
     lambda r: isinstance(r, Refusal) and r.policy == "shop/no-admin"),
    ("ALLOW by method: a POST is refused",
     (policy("reads", "ALLOW", methods=("GET", "HEAD")),), peer(), get(method="POST"), (),
     lambda r: isinstance(r, Refusal) and r.status == 403 and r.policy == "shop/reads"),
    ("ALLOW by method: a GET passes, the policy recorded",
     (policy("reads", "ALLOW", methods=("GET",)),), peer(), get(), (),
     lambda r: isinstance(r, Plan) and r.policy == "shop/reads"),
    ("ALLOW by principal: an unknown client is refused",
     (policy("only-client", "ALLOW", principals=(PRINCIPAL.principal,)),), peer(principal=None), get(), (),
     lambda r: isinstance(r, Refusal) and r.status == 403),
    ("ALLOW by host, with the port stripped",
     (policy("by-host", "ALLOW", hosts=("reviews",)),), peer(), get(host="reviews:9080"), (),
     lambda r: isinstance(r, Plan)),
    ("a policy targeting the waypoint's Gateway applies",
     (policy("gw", "DENY", paths=("/x",), kind="Gateway", target="waypoint"),), peer(), get("/x"), (),
     lambda r: isinstance(r, Refusal) and r.policy == "shop/gw"),
    ("a policy targeting another Service does not",
     (policy("other", "DENY", paths=("/x",), target="ratings"),), peer(), get("/x"), (), lambda r: isinstance(r, Plan)),
    ("a selector policy is the ztunnel's, not the waypoint's",
     (policy("sel", "DENY", paths=("/x",), scope=PolicyScope.NAMESPACE),), peer(), get("/x"), (),
     lambda r: isinstance(r, Plan)),
]


@pytest.mark.parametrize("name,extra,who,head,rolls,check", CASES, ids=[c[0] for c in CASES])
def test_decide(name, extra, who, head, rolls, check):
    state = mesh(*extra)
    result = decide(state, who, head, scripted(*rolls))
    assert check(result), result
    state.check()


def test_plans_are_frozen_and_compare_whole():
    state = mesh(table(Route("r", destinations=(to("v2"),), timeout=1.0)))
    a = decide(state, peer(), get(), scripted())
    b = decide(state, peer(), get(), scripted())
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.timeout = 2.0


def test_route_table_for_any_port_is_used_when_no_exact_one():
    state = mesh(table(Route(destinations=(to("v2"),)), port=0))
    assert decide(state, peer(), get(), scripted()).subset == "v2"


def test_shadow_authority():
    assert shadow_authority("reviews.shop.svc.cluster.local:9080") == "reviews.shop.svc.cluster.local-shadow:9080"
    assert shadow_authority("reviews") == "reviews-shadow"


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
       seed=st.integers(0, 2**32 - 1))
def test_weighted_picks_converge_to_their_weights(weights, seed):
    destinations = tuple(Destination(REVIEWS, None, subset(f"v{i}"), f"v{i}", w) for i, w in enumerate(weights))
    rng = random.Random(seed)
    draws = 4000
    counts = {d.subset_name: 0 for d in destinations}
    for _ in range(draws):
        counts[pick_weighted(destinations, rng.random()).subset_name] += 1
    total = sum(weights)
    for d in destinations:
        expected = d.weight / total
        share = counts[d.subset_name] / draws
        if d.weight == 0:
            assert share == 0
        else:
            # 4000 draws: a binomial share is within 0.05 of its mean far beyond 5 sigma for p(1-p) <= 1/4
            assert abs(share - expected) < 0.05, (weights, counts)


@given(r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_weighted_pick_never_picks_a_zero_weight(r):
    destinations = (to("v1", 0), to("v2", 3), to("v3", 0), to("v1", 1))
    assert pick_weighted(destinations, r).weight > 0


def test_protocol_of_follows_the_declared_app_protocol_else_sniffs():
    from dataclasses import replace

    from shoal.model import ServicePort
    from waypoint.routing import protocol_of

    state = mesh()
    assert protocol_of(state, (VIP, 9080)) == "http"          # wp_model declares http
    svc = state.services[REVIEWS]
    for declared, want in (("redis", "tcp"), ("grpc", "http"), ("", "sniff")):
        state.upsert(replace(svc, ports=(ServicePort(9080, "p", app_protocol=declared),)))
        assert protocol_of(state, (VIP, 9080)) == want
    assert protocol_of(state, ("198.18.16.99", 1)) == "sniff"


def test_tcp_decision_and_conservative_l4_policy():
    from waypoint.routing import decide_tcp

    plan = decide_tcp(mesh(), peer(), scripted(0.0))
    assert isinstance(plan, Plan) and len(plan.upstreams) == 3
    # DENY with HTTP fields denies TCP outright; ALLOW with HTTP fields allows nothing.
    deny = decide_tcp(mesh(policy("no-admin", "DENY", paths=("/admin*",))), peer(), scripted())
    assert isinstance(deny, Refusal) and deny.policy == "shop/no-admin"
    allow = decide_tcp(mesh(policy("gets", "ALLOW", methods=("GET",))), peer(), scripted())
    assert isinstance(allow, Refusal) and allow.status == 403
    ports_only = decide_tcp(mesh(policy("port", "ALLOW", ports=(9080,))), peer(), scripted())
    assert isinstance(ports_only, Plan)


def test_endpoint_memo_follows_the_state():
    state = mesh(table(Route(destinations=(to("v1"),))))
    first = decide(state, peer(), get(), scripted())
    assert len(first.upstreams) == 2
    state.remove(ResourceType.WORKLOAD, V1B_UID)      # a v1 pod goes away: the next decision knows
    assert [u.address for u in decide(state, peer(), get(), scripted()).upstreams] == [("198.19.1.11", 8080)]


def test_nothing_is_routed_before_the_whole_config_arrived():
    from shoal.model import ResourceType
    from shoal.proxy_state import ProxyState
    from waypoint.routing import decide_tcp

    state = ProxyState(waypoint=(NS, "waypoint"), expects=(ResourceType.SERVICE, ResourceType.ROUTE_TABLE))
    for result in (decide(state, peer(), get(), scripted()), decide_tcp(state, peer(), scripted())):
        assert isinstance(result, Refusal) and result.status == 503 and "no config" in result.reason


def test_what_decide_memoizes_per_destination_follows_every_state_change():
    """decide keeps each destination's service, policies and route table per state version (issue 18):
    a policy, a route table or a removed service takes effect from the next request on."""
    state = mesh()
    assert isinstance(decide(state, peer(), get("/admin"), scripted()), Plan)
    state.upsert(policy("no-admin", "DENY", paths=("/admin",)))
    refused = decide(state, peer(), get("/admin"), scripted())
    assert isinstance(refused, Refusal) and refused.status == 403
    state.remove(ResourceType.AUTHORIZATION, f"{NS}/no-admin")
    state.upsert(table(Route(destinations=(to("v2"),))))
    plan = decide(state, peer(), get("/admin"), scripted())
    assert isinstance(plan, Plan) and plan.subset == "v2"
    state.remove(ResourceType.SERVICE, REVIEWS)
    gone = decide(state, peer(), get("/admin"), scripted())
    assert isinstance(gone, Refusal) and gone.status == 404


def test_plans_without_fault_or_mirror_are_made_once_per_state_version():
    """A request with no fault and no mirror gets the plan made for the first request that took the same
    route, destination and endpoint order (issue 18's per-request CPU): the same object, equal to what a
    state without that memo decides from the same draws; a state change makes new plans."""
    route = Route("split", destinations=(to("v1", 50), to("v2", 50)), retry=RetryPolicy(2, retry_on=("5xx",)))
    state = mesh(table(route))
    rolls = [(0.1, 0.0), (0.1, 0.9), (0.7, 0.0), (0.1, 0.0), (0.1, 0.9)]
    plans = [decide(state, peer(), get(), scripted(*r)) for r in rolls]
    fresh = [decide(mesh(table(route)), peer(), get(), scripted(*r)) for r in rolls]
    assert plans == fresh
    assert [addresses(p) for p in plans[:3]] == [[("198.19.1.11", 8080), ("198.19.2.12", 8080)],
                                                  [("198.19.2.12", 8080), ("198.19.1.11", 8080)],
                                                  [("198.19.1.13", 8080)]]
    assert plans[3] is plans[0] and plans[4] is plans[1] and plans[0] is not plans[1]
    state.remove(ResourceType.WORKLOAD, V1B_UID)
    after = decide(state, peer(), get(), scripted(0.1, 0.0))
    assert addresses(after) == [("198.19.1.11", 8080)] and after.retry == route.retry


def test_a_fault_or_mirror_still_rolls_per_request():
    """The plan memo is for plans that nothing rolled: a fault and a mirror are rolled for each request."""
    route = Route(destinations=(to("v2"),), fault=Fault(abort_status=503, abort_percentage=50.0))
    state = mesh(table(route))
    aborted = decide(state, peer(), get(), scripted(0.0, 0.1))
    passed = decide(state, peer(), get(), scripted(0.0, 0.9))
    assert aborted.fault == FaultPlan(abort_status=503) and passed.fault == FaultPlan()
    again = decide(state, peer(), get(), scripted(0.0, 0.1))   # after a plan without fault was memoized
    assert again.fault == FaultPlan(abort_status=503)
    # A mirror too: a request that rolls none (memoized) does not keep the next one from being mirrored.
    state = mesh(table(Route(destinations=(to("v1"),), mirrors=(Mirror(Destination(SHADOW), 30.0),))))
    missed = decide(state, peer(), get(), scripted(0.0, 0.5))
    mirrored = decide(state, peer(), get(), scripted(0.0, 0.1))
    assert missed.mirrors == () and [m.upstream.address for m in mirrored.mirrors] == [("198.19.2.14", 8080)]


@pytest.mark.parametrize("name,extra,who,head,rolls,check", CASES, ids=[c[0] for c in CASES])
def test_a_parsed_http1_head_decides_as_its_request_head(name, extra, who, head, rolls, check):
    """The proxy hands decide the parsed `http1.Head` itself (one head object per request): every case
    decides the same for it as for the head `request_head` makes of the same request."""
    from waypoint import http1
    wire = f"{head.method} {head.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.headers) + "\r\n"
    parsed = http1.MessageReader().feed(wire.encode("latin-1"))[0]
    assert (parsed.headers, parsed.authority) == (head.headers, head.authority)   # the host among them, once
    assert decide(mesh(*extra), who, parsed, scripted(*rolls)) == decide(mesh(*extra), who, head, scripted(*rolls))
