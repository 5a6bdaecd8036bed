"""Route tables from VirtualService + DestinationRule, HTTPRoute, TrafficSplit, and the precedence rule."""

import re

import pytest

from shoal.model import (
    Destination,
    Fault,
    HeaderChanges,
    HeaderMatch,
    MatchKind,
    Mirror,
    ResourceType,
    RetryPolicy,
    RouteMatch,
    StringMatch,
)
from translate_objects import added, bookinfo_reviews, created, deleted, from_yaml, service, translate

RT = ResourceType.ROUTE_TABLE
REVIEWS = "reviews.default.svc.cluster.local"
V = {f"v{i}": (("version", f"v{i}"),) for i in (1, 2, 3)}


def vs(http_yaml, name="reviews", hosts="[reviews]", extra=""):
    return from_yaml(f"""
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: {hosts}
{extra}
  http:
{http_yaml}
""")[0]


def table(objs, key=f"{REVIEWS}:9080"):
    t, update = translate(*objs)
    assert not any(f.errors for f in update.findings.values()), update.findings
    return t.snapshot()[RT][key], t


VS_CASES = [
    ("route to a subset", """
  - route:
    - destination: {host: reviews, subset: v1}
""", lambda r: r.destinations == (Destination(REVIEWS, None, V["v1"], "v1", 100),) and r.matches == ()),
    ("weights", """
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 75
    - destination: {host: reviews.default.svc.cluster.local, subset: v3, port: {number: 9080}}
      weight: 25
""", lambda r: [(d.subset, d.weight, d.port) for d in r.destinations] == [(V["v1"], 75, None), (V["v3"], 25, 9080)]),
    ("uri exact, header regex, method", """
  - match:
    - uri: {exact: /productpage}
      headers: {end-user: {regex: "ja.*"}}
      method: {exact: get}
    route:
    - destination: {host: reviews}
""", lambda r: r.matches == (RouteMatch(StringMatch(MatchKind.EXACT, "/productpage"), "GET",
                                         (HeaderMatch("end-user", StringMatch(MatchKind.REGEX, "ja.*")),)),)),
    ("uri prefix or regex (alternatives)", """
  - match:
    - uri: {prefix: /api}
    - uri: {regex: "/v[0-9]+/.*"}
    route:
    - destination: {host: reviews}
""", lambda r: [m.path for m in r.matches] == [StringMatch(MatchKind.PREFIX, "/api"),
                                                StringMatch(MatchKind.REGEX, "/v[0-9]+/.*")]),
    ("mirror with mirrorPercentage", """
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 12.5}
""", lambda r: r.mirrors == (Mirror(Destination(REVIEWS, None, V["v2"], "v2", 1), 12.5),)),
    ("mirror with the older mirror_percent", """
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirror_percent: 40
""", lambda r: r.mirrors[0].percentage == 40.0),
    ("mirror without a percentage mirrors everything", """
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
""", lambda r: r.mirrors[0].percentage == 100.0),
    ("retries and timeout", """
  - route:
    - destination: {host: reviews}
    timeout: 10s
    retries: {attempts: 3, perTryTimeout: 2.5s, retryOn: "gateway-error,connect-failure,503"}
""", lambda r: r.timeout == 10.0 and r.retry == RetryPolicy(3, 2.5, ("gateway-error", "connect-failure", "503"))),
    ("fault delay and abort with percentages", """
  - route:
    - destination: {host: reviews}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}
""", lambda r: r.fault == Fault(7.0, 10.0, 503, 0.5)),
    ("fault delay with the older integer percent", """
  - route:
    - destination: {host: reviews}
    fault: {delay: {fixedDelay: 500ms, percent: 30}}
""", lambda r: r.fault == Fault(0.5, 30.0, None, 100.0)),
    ("header changes on the route and on a destination", """
  - route:
    - destination: {host: reviews}
      headers: {response: {remove: [X-Powered-By]}}
    headers:
      request: {set: {x-env: prod}, add: {x-trace: "1"}, remove: [cookie]}
""", lambda r: r.request_headers == HeaderChanges((("x-env", "prod"),), (("x-trace", "1"),), ("cookie",))
    and r.response_headers == HeaderChanges((), (), ("x-powered-by",))),
    ("query params and withoutHeaders", """
  - match:
    - queryParams: {debug: {exact: "1"}}
      withoutHeaders: {x-canary: {}}
    route:
    - destination: {host: reviews}
""", lambda r: r.matches[0].query_params == (HeaderMatch("debug", StringMatch(MatchKind.EXACT, "1")),)
    and r.matches[0].headers == (HeaderMatch("x-canary", StringMatch(MatchKind.PRESENT), True),)),
]


@pytest.mark.parametrize("name, http, check", VS_CASES, ids=[c[0] for c in VS_CASES])
def test_virtual_service(name, http, check):
    rt, _ = table(bookinfo_reviews() + [vs(http)])
    assert rt.origin == "VirtualService default/reviews" and rt.namespace == "default"
    assert check(rt.routes[0]), rt.routes[0]


def test_virtual_service_routes_keep_order_and_match_ports_split_tables():
    http = """
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: admin-port
    match: [{port: 9090}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
"""
    objs = bookinfo_reviews()
    objs[1] = service("reviews", ports=((9080, 9080), (9090, 9090)))
    t, _ = translate(*objs, vs(http))
    tables = t.snapshot()[RT]
    assert [r.name for r in tables[f"{REVIEWS}:9080"].routes] == ["jason", "default"]
    assert [r.name for r in tables[f"{REVIEWS}:9090"].routes] == ["jason", "admin-port", "default"]


def test_virtual_service_for_an_unknown_host_applies_to_any_port():
    rt, _ = table([vs("  - route: [{destination: {host: ext.example.com}}]", hosts="[ext.example.com]")],
                  key="ext.example.com:0")
    assert rt.routes[0].destinations[0].host == "ext.example.com"


@pytest.mark.parametrize("host", ["reviews", "reviews.default", "reviews.default.svc", REVIEWS])
def test_short_and_long_host_names(host):
    rt, _ = table(bookinfo_reviews() + [vs(f"  - route: [{{destination: {{host: {host}}}}}]", hosts=f"[{host}]")])
    assert rt.routes[0].destinations[0].host == REVIEWS


def test_short_host_resolves_in_the_object_namespace():
    route = from_yaml("""
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: r, namespace: bookinfo}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v2}}]}]}
""")[0]
    t, _ = translate(*bookinfo_reviews("bookinfo"), route)
    rt = t.snapshot()[RT]["reviews.bookinfo.svc.cluster.local:9080"]
    assert rt.routes[0].destinations[0].subset == V["v2"]


def test_ingress_only_virtual_service_makes_no_mesh_routes():
    t, update = translate(*bookinfo_reviews(), vs("  - route: [{destination: {host: reviews}}]",
                                                   extra="  gateways: [bookinfo-gateway]"))
    assert t.snapshot()[RT] == {}
    assert any("no mesh routes" in w for f in update.findings.values() for w in f.warnings)


def test_destination_rule_change_updates_subsets_and_undefined_subset_fails_closed():
    objs = bookinfo_reviews()
    rule = objs[-1]
    t, _ = translate(*objs, vs("  - route: [{destination: {host: reviews, subset: v2}}]"))
    t.apply_event(deleted(rule))
    update = t.flush()
    rt = update.delta.upserted[RT][f"{REVIEWS}:9080"]
    assert rt.routes[0].destinations[0].subset == (("shoal.io/undefined-subset", "v2"),)
    (warning,) = update.findings[("VirtualService", "default", "reviews")].warnings
    assert "subset 'v2' of reviews.default.svc.cluster.local is defined by no DestinationRule" in warning
    # the field the user wrote, not the host the route is for
    assert warning.startswith("VirtualService default/reviews: spec.http[0].route[0].destination.subset: ")
    t.apply_event(added(rule))
    update = t.flush()
    assert update.delta.upserted[RT][f"{REVIEWS}:9080"].routes[0].destinations[0].subset == V["v2"]
    assert update.findings[("VirtualService", "default", "reviews")].warnings == ()


def httproute(rules_yaml, name="reviews", parent="{kind: Service, group: \"\", name: reviews, port: 9080}",
              version="v1", extra=""):
    return from_yaml(f"""
apiVersion: gateway.networking.k8s.io/{version}
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs:
  - {parent}
{extra}
  rules:
{rules_yaml}
""")[0]


HTTPROUTE_CASES = [
    ("weights", """
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
""", lambda r: [(d.host, d.port, d.weight) for d in r.destinations] == [
        ("reviews-v1.default.svc.cluster.local", 9080, 90), ("reviews-v2.default.svc.cluster.local", 9080, 10)]),
    ("path prefix keeps element boundaries", """
  - matches: [{path: {type: PathPrefix, value: /api/}}]
    backendRefs: [{name: reviews, port: 9080}]
""", lambda r: r.matches[0].path.kind == MatchKind.REGEX
        and re.fullmatch(r.matches[0].path.value, "/api/x") and re.fullmatch(r.matches[0].path.value, "/api")
        and not re.fullmatch(r.matches[0].path.value, "/apix")),
    ("exact path, header, query param, method", """
  - matches:
    - path: {type: Exact, value: /login}
      headers: [{name: X-User, value: jason}]
      queryParams: [{type: RegularExpression, name: id, value: "[0-9]+"}]
      method: POST
    backendRefs: [{name: reviews, port: 9080}]
""", lambda r: r.matches == (RouteMatch(StringMatch(MatchKind.EXACT, "/login"), "POST",
                                         (HeaderMatch("x-user", StringMatch(MatchKind.EXACT, "jason")),),
                                         (HeaderMatch("id", StringMatch(MatchKind.REGEX, "[0-9]+")),)),)),
    ("default match is every path", """
  - backendRefs: [{name: reviews, port: 9080}]
""", lambda r: r.matches == () and r.destinations[0].weight == 1),
    ("mirror with percent", """
  - backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-shadow, port: 9080}, percent: 25}
""", lambda r: r.mirrors == (Mirror(Destination("reviews-shadow.default.svc.cluster.local", 9080), 25.0),)),
    ("mirror with fraction", """
  - backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-shadow, port: 9080}, fraction: {numerator: 1, denominator: 8}}
""", lambda r: r.mirrors[0].percentage == 12.5),
    ("header modifiers", """
  - backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Env, value: prod}], add: [{name: x-a, value: b}], remove: [Cookie]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [server]}
""", lambda r: r.request_headers == HeaderChanges((("x-env", "prod"),), (("x-a", "b"),), ("cookie",))
        and r.response_headers == HeaderChanges((), (), ("server",))),
    ("request timeout", """
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 1m30s}
""", lambda r: r.timeout == 90.0 and r.retry is None),
    ("backendRequest alone is the timeout", """
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 10s, backendRequest: 500ms}
""", lambda r: r.timeout == 0.5),
    ("retry with codes, backoff and per-try timeout", """
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {codes: [500, 503], attempts: 3, backoff: 100ms}
""", lambda r: r.timeout == 10.0 and r.retry == RetryPolicy(3, 2.0, ("connect-failure", "500", "503"), 0.1)),
]


@pytest.mark.parametrize("name, rules, check", HTTPROUTE_CASES, ids=[c[0] for c in HTTPROUTE_CASES])
def test_httproute(name, rules, check):
    rt, _ = table(bookinfo_reviews() + [httproute(rules)])
    assert rt.origin == "HTTPRoute default/reviews"
    assert check(rt.routes[0]), rt.routes[0]


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_httproute_versions_and_all_ports_without_parent_port(version):
    objs = bookinfo_reviews()
    objs[1] = service("reviews", ports=((9080, 9080), (9090, 9090)))
    t, _ = translate(*objs, httproute("  - backendRefs: [{name: reviews, port: 9080}]",
                                      parent="{kind: Service, group: \"\", name: reviews}", version=version))
    assert set(t.snapshot()[RT]) == {f"{REVIEWS}:9080", f"{REVIEWS}:9090"}


def test_httproute_on_a_waypoint_gateway_routes_services_bound_to_it():
    gateway = from_yaml("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: shoal-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
""")[0]
    objs = bookinfo_reviews()
    objs[0]["metadata"]["labels"]["istio.io/use-waypoint"] = "waypoint"
    route = httproute("  - backendRefs: [{name: reviews, port: 9080}]",
                      parent="{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}")
    t, _ = translate(*objs, gateway, route)
    assert set(t.snapshot()[RT]) == {f"{REVIEWS}:9080"}
    t.apply_event(deleted(gateway))
    update = t.flush()
    assert update.delta.removed[RT] == {f"{REVIEWS}:9080"}
    assert "is not a shoal waypoint" in update.findings[("HTTPRoute", "default", "reviews")].warnings[0]


SPLIT = """
apiVersion: split.smi-spec.io/{version}
kind: TrafficSplit
metadata: {{name: reviews-split, namespace: default}}
spec:
  service: reviews
  backends:
  - {{service: reviews-v1, weight: {w1}}}
  - {{service: reviews-v2, weight: {w2}}}
"""


@pytest.mark.parametrize("version, w1, w2, expected", [
    ("v1alpha1", "900m", "100m", (900, 100)),
    ("v1alpha1", 80, 20, (80000, 20000)),
    ("v1alpha2", 80, 20, (80, 20)),
    ("v1alpha3", 1, 3, (1, 3)),
    ("v1alpha4", 50, 50, (50, 50)),
])
def test_traffic_split_weights(version, w1, w2, expected):
    rt, _ = table(bookinfo_reviews() + from_yaml(SPLIT.format(version=version, w1=w1, w2=w2)))
    assert [(d.host, d.weight, d.port) for d in rt.routes[0].destinations] == [
        ("reviews-v1.default.svc.cluster.local", expected[0], None),
        ("reviews-v2.default.svc.cluster.local", expected[1], None)]


def test_precedence_httproute_then_virtualservice_then_trafficsplit_then_oldest():
    split = created(from_yaml(SPLIT.format(version="v1alpha2", w1=1, w2=1))[0], "2024-01-01T00:00:00Z")
    old_vs = created(vs("  - route: [{destination: {host: reviews, subset: v1}}]", name="old"), "2024-02-01T00:00:00Z")
    new_vs = created(vs("  - route: [{destination: {host: reviews, subset: v2}}]", name="new"), "2024-03-01T00:00:00Z")
    route = created(httproute("  - backendRefs: [{name: reviews, port: 9080}]"), "2024-04-01T00:00:00Z")
    key = f"{REVIEWS}:9080"
    t, update = translate(*bookinfo_reviews(), split)
    assert t.snapshot()[RT][key].origin == "TrafficSplit default/reviews-split"
    t.apply_event(added(new_vs))
    t.apply_event(added(old_vs))
    update = t.flush()
    assert update.delta.upserted[RT][key].origin == "VirtualService default/old"
    lost = update.findings[("VirtualService", "default", "new")].warnings[0]
    assert "is routed by VirtualService default/old, which takes precedence" in lost
    assert "is routed by VirtualService default/old" in update.findings[("TrafficSplit", "default", "reviews-split")].warnings[0]
    t.apply_event(added(route))
    update = t.flush()
    assert update.delta.upserted[RT][key].origin == "HTTPRoute default/reviews"
    t.apply_event(deleted(route))
    t.apply_event(deleted(old_vs))
    update = t.flush()
    assert update.delta.upserted[RT][key].origin == "VirtualService default/new"
    assert update.findings[("VirtualService", "default", "new")].warnings == ()


def test_port_specific_object_wins_only_its_port():
    objs = bookinfo_reviews()
    objs[1] = service("reviews", ports=((9080, 9080), (9090, 9090)))
    route = httproute("  - backendRefs: [{name: reviews, port: 9090}]",
                      parent="{kind: Service, group: \"\", name: reviews, port: 9090}")
    t, _ = translate(*objs, vs("  - route: [{destination: {host: reviews, subset: v1}}]"), route)
    tables = t.snapshot()[RT]
    assert tables[f"{REVIEWS}:9080"].origin == "VirtualService default/reviews"
    assert tables[f"{REVIEWS}:9090"].origin == "HTTPRoute default/reviews"


def test_a_new_service_port_gets_the_any_port_routes_and_endpoint_churn_does_not_recompute_routes():
    objs = bookinfo_reviews()
    t, _ = translate(*objs, vs("  - route: [{destination: {host: reviews, subset: v1}}]"))
    from translate_objects import pod
    t.apply_event(added(pod("reviews-v1-b", labels={"app": "reviews", "version": "v1"})))
    update = t.flush()
    assert update.delta.upserted[RT] == {} and update.delta.upserted[ResourceType.SERVICE]
    t.apply_event(added(service("reviews", ports=((9080, 9080), (9443, 9443)))))
    update = t.flush()
    assert set(update.delta.upserted[RT]) == {f"{REVIEWS}:9443"}


def test_httproute_section_name_picks_the_service_port_by_name():
    objs = bookinfo_reviews()
    objs[1] = service("reviews", ports=((9080, 9080), (9090, 9090)), port_names=("http", "admin"))
    route = httproute("  - backendRefs: [{name: reviews, port: 9090}]",
                      parent="{kind: Service, group: \"\", name: reviews, sectionName: admin}")
    t, _ = translate(*objs, route)
    assert set(t.snapshot()[RT]) == {f"{REVIEWS}:9090"}
    missing = httproute("  - backendRefs: [{name: reviews, port: 9090}]",
                        parent="{kind: Service, group: \"\", name: reviews, sectionName: metrics}")
    t.apply_event(added(missing))
    update = t.flush()
    assert update.delta.removed[RT] == {f"{REVIEWS}:9090"}
    assert "has no port named 'metrics'" in update.findings[("HTTPRoute", "default", "reviews")].warnings[0]


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"])
def test_every_istio_networking_version_translates_the_same(version):
    route = vs("  - route: [{destination: {host: reviews, subset: v2}}]\n    timeout: 3s")
    route["apiVersion"] = f"networking.istio.io/{version}"
    objs = bookinfo_reviews()
    objs[-1]["apiVersion"] = f"networking.istio.io/{version}"
    rt, _ = table(objs + [route])
    assert rt.routes[0].destinations[0].subset == V["v2"] and rt.routes[0].timeout == 3.0


def test_destination_rule_lookup_prefers_the_route_namespace_then_the_host_namespace_then_root():
    def rule(ns, label):
        return from_yaml(f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: r-{ns}, namespace: {ns}}}
spec: {{host: reviews.default.svc.cluster.local, subsets: [{{name: v1, labels: {{picked: {label}}}}}]}}
""")[0]
    client_route = from_yaml("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: from-shop, namespace: shop}
spec: {hosts: [reviews.default], http: [{route: [{destination: {host: reviews.default, subset: v1}}]}]}
""")[0]
    objs = bookinfo_reviews()[:-1] + [client_route]
    for rules, expected in [((rule("istio-system", "root"),), "root"),
                            ((rule("istio-system", "root"), rule("default", "host")), "host"),
                            ((rule("istio-system", "root"), rule("default", "host"), rule("shop", "client")), "client")]:
        t, _ = translate(*objs, *rules)
        assert t.snapshot()[RT][f"{REVIEWS}:9080"].routes[0].destinations[0].subset == (("picked", expected),)


def test_httproute_matches_are_ordered_by_gateway_api_precedence():
    rules = """
  - name: catch-all
    backendRefs: [{name: reviews-v1, port: 9080}]
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}, {path: {type: Exact, value: /login}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - name: api-v2
    matches: [{path: {type: PathPrefix, value: /api/v2}}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - name: api-post
    matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - name: api-canary
    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: reviews-v3, port: 9080}]
"""
    rt, _ = table(bookinfo_reviews() + [httproute(rules)])
    order = [(r.name, r.matches[0].path.value if r.matches else None) for r in rt.routes]
    assert [name for name, _ in order] == ["api", "api-v2", "api-post", "api-canary", "api", "catch-all"]
    assert order[0] == ("api", "/login")                      # Exact first
    assert rt.routes[-1].matches == ()                         # the rule without matches is PathPrefix "/"


def test_httproutes_on_the_same_service_are_merged_oldest_first_on_ties():
    older = created(httproute("""
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
""", name="older"), "2024-01-01T00:00:00Z")
    newer = created(httproute("""
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: Exact, value: /a/b}}]
    backendRefs: [{name: reviews-v3, port: 9080}]
""", name="newer"), "2024-06-01T00:00:00Z")
    split = from_yaml(SPLIT.format(version="v1alpha2", w1=1, w2=1))[0]
    t, update = translate(*bookinfo_reviews(), newer, older, split)
    rt = t.snapshot()[RT][f"{REVIEWS}:9080"]
    assert rt.origin == "HTTPRoute default/older, HTTPRoute default/newer"
    assert [r.destinations[0].host.split(".")[0] for r in rt.routes] == ["reviews-v3", "reviews-v1", "reviews-v2"]
    assert not update.findings.get(("HTTPRoute", "default", "newer"))
    assert "is routed by HTTPRoute default/older, HTTPRoute default/newer" in \
        update.findings[("TrafficSplit", "default", "reviews-split")].warnings[0]


def test_an_undefined_subset_warning_names_the_destination_field_of_a_split_and_a_mirror():
    t, update = translate(*bookinfo_reviews(), vs(
        "  - route: [{destination: {host: reviews, subset: v1}, weight: 50},"
        " {destination: {host: reviews, subset: v9}, weight: 50}]\n"
        "    mirror: {host: reviews, subset: v8}"))
    (warnings,) = [f.warnings for k, f in update.findings.items() if k[0] == "VirtualService"]
    assert sorted(w.split(": ")[1] for w in warnings) == ["spec.http[0].mirror.subset",
                                                         "spec.http[0].route[1].destination.subset"]
