"""The service graph's pure parts: the graph from two samplings, Prometheus answers as series, a node's
details, and the server's routes (no cluster; the browser test is test_dashboard_e2e.py)."""

import json

import pytest

from shoal.observe import details, graph, sources
from shoal.observe.server import Views, route

WAYPOINT = "shop/waypoint"


def labels(reporter, src, dst, **more):
    out = {"reporter": reporter, "source_workload": src.split("/")[1], "source_workload_namespace": src.split("/")[0],
           "destination_workload": dst.split("/")[1], "destination_workload_namespace": dst.split("/")[0],
           "source_version": "latest", "destination_version": more.pop("version", "latest"),
           "connection_security_policy": more.pop("security", "mutual_tls"), **more}
    return tuple(sorted(out.items()))


def requests(src, dst, code, value):
    return {("istio_requests_total", labels("waypoint", src, dst, response_code=code, version="v1")): value}


def buckets(src, dst, counts):
    return {("istio_request_duration_milliseconds_bucket", labels("waypoint", src, dst, le=str(le), version="v1")): n
            for le, n in counts.items()}


def tcp(reporter, src, dst, opened, received, security="mutual_tls", version="latest"):
    return {("istio_tcp_connections_opened_total", labels(reporter, src, dst, security=security, version=version)):
            opened,
            ("istio_tcp_received_bytes_total", labels(reporter, src, dst, security=security, version=version)):
            received}


def sampling(after_parts, before_parts=()):
    before, after = {}, {}
    for part in before_parts:
        before.update(part)
    for part in after_parts:
        after.update(part)
    return before, after


def test_a_call_through_the_waypoint_is_one_edge_with_its_figures_and_badges():
    before, after = sampling(
        [requests("shop/load", "shop/reviews-v1", "200", 90), requests("shop/load", "shop/reviews-v1", "503", 10),
         buckets("shop/load", "shop/reviews-v1", {5: 50, 10: 90, 25: 100, float("inf"): 100}),
         tcp("source", "shop/load", WAYPOINT, 5, 1000), tcp("destination", "shop/load", WAYPOINT, 5, 1000),
         tcp("destination", WAYPOINT, "shop/reviews-v1", 5, 900, version="v1"),
         tcp("destination", "shop/load", "shop/echo", 20, 400, security="none")],
        [requests("shop/load", "shop/reviews-v1", "200", 0)])
    g = graph.build(before, after, 10.0, origin="proxies", waypoints={WAYPOINT})
    assert [n.id for n in g.nodes] == ["shop/echo", "shop/load", "shop/reviews-v1"]     # no waypoint node
    assert dict((n.id, n.versions) for n in g.nodes)["shop/reviews-v1"] == ("v1",)
    reviews, echo = {(e.source, e.target): e for e in g.edges}[("shop/load", "shop/reviews-v1")], \
        {(e.source, e.target): e for e in g.edges}[("shop/load", "shop/echo")]
    assert (reviews.protocol, reviews.rps, reviews.mtls, reviews.waypoint) == ("http", 10.0, True, WAYPOINT)
    assert reviews.error_rate == pytest.approx(0.1)
    assert 10 < reviews.p99_ms <= 25                       # interpolated in the 10..25 ms bucket
    assert (echo.protocol, echo.rps, echo.tcp_bytes_per_second, echo.mtls, echo.waypoint) == ("tcp", 2.0, 40.0, False, "")
    assert len(g.edges) == 2
    assert json.loads(json.dumps(g.to_json()))["edges"][0]["source"] == "shop/load"


def test_a_call_is_mtls_only_when_both_legs_through_the_waypoint_are():
    _, after = sampling([requests("shop/load", "shop/reviews-v1", "200", 10),
                         tcp("destination", "shop/load", WAYPOINT, 1, 10),
                         tcp("destination", WAYPOINT, "shop/reviews-v1", 1, 10, security="none")])
    g = graph.build({}, after, 1.0, origin="proxies", waypoints={WAYPOINT})
    assert [(e.source, e.target, e.mtls) for e in g.edges] == [("shop/load", "shop/reviews-v1", False)]


def test_no_traffic_in_the_window_draws_no_edge():
    same = {**requests("shop/load", "shop/reviews-v1", "200", 10), **tcp("destination", "shop/load", "shop/echo", 3, 9)}
    g = graph.build(same, dict(same), 5.0, origin="prometheus", waypoints=set())
    assert g.edges == () and g.nodes == ()


def test_prometheus_answers_become_series_without_the_scrapes_labels():
    row = {"metric": {"__name__": "istio_requests_total", "reporter": "waypoint", "job": "waypoint",
                      "instance": "198.19.1.3:15020", "pod": "waypoint-0", "response_code": "200"}, "value": [1, "7"]}
    other = {**row, "metric": {**row["metric"], "instance": "198.19.2.3:15020", "pod": "waypoint-1"}, "value": [1, "5"]}
    series = sources.series_of({"status": "success", "data": {"resultType": "vector", "result": [row, other]}})
    assert series == {("istio_requests_total", (("reporter", "waypoint"), ("response_code", "200"))): 12.0}
    with pytest.raises(sources.SourceError, match="refused"):
        sources.series_of({"status": "error", "error": "parse error"})


def test_prometheus_source_asks_for_now_and_a_window_ago():
    asked = []

    def get(path):
        asked.append(path)
        return json.dumps({"status": "success", "data": {"result": []}}).encode()
    source = sources.PrometheusSource(get, window=60, clock=lambda: 1000.0)
    assert source.sample() == ({}, {}, 60)
    assert [p.rsplit("&time=", 1)[1] for p in asked] == ["940.000", "1000.000"]


def test_proxy_source_needs_two_scrapes_then_gives_the_last_two():
    scrapes, times = iter([{"a": 1.0}, {"a": 2.0}, {"a": 4.0}]), iter([10.0, 15.0, 21.0])
    source = sources.ProxySource(lambda: next(scrapes), clock=lambda: next(times))
    source.take()
    with pytest.raises(sources.SourceError, match="two scrapes"):
        source.sample()
    source.take()
    source.take()
    assert source.sample() == ({"a": 2.0}, {"a": 4.0}, 6.0)


def pod(name, workload, labels, sa):
    return {"metadata": {"name": name, "namespace": "shop", "labels": labels,
                         "ownerReferences": [{"kind": "ReplicaSet", "name": f"{workload}-5d8f9c7b6"}]},
            "spec": {"serviceAccountName": sa}}


def test_node_details_name_identity_policies_and_recent_connections():
    pods = [pod("reviews-v1-5d8f9c7b6-abcde", "reviews-v1", {"app": "reviews", "version": "v1"}, "reviews"),
            pod("load-7f-xyz", "load", {"app": "load"}, "load")]
    policies = [
        {"kind": "AuthorizationPolicy", "metadata": {"name": "no-admin", "namespace": "shop"},
         "spec": {"action": "DENY", "targetRefs": [{"kind": "Service", "name": "reviews"}]}},
        {"kind": "AuthorizationPolicy", "metadata": {"name": "v1-only", "namespace": "shop"},
         "spec": {"selector": {"matchLabels": {"version": "v1"}}}},
        {"kind": "AuthorizationPolicy", "metadata": {"name": "v2-only", "namespace": "shop"},
         "spec": {"selector": {"matchLabels": {"version": "v2"}}}},
        {"kind": "PeerAuthentication", "metadata": {"name": "strict", "namespace": "shop"},
         "spec": {"mtls": {"mode": "STRICT"}}},
        {"kind": "AuthorizationPolicy", "metadata": {"name": "elsewhere", "namespace": "other"}, "spec": {}}]
    records = [{"timestamp": f"t{i}", "direction": "inbound", "src_workload": "load", "src_namespace": "shop",
                "dst_workload": "reviews-v1", "dst_namespace": "shop", "mtls": True} for i in range(12)]
    records.append({"timestamp": "t99", "src_workload": "load", "src_namespace": "shop", "dst_workload": "echo",
                    "dst_namespace": "shop"})
    d = details.node_details("shop", "reviews-v1", pods, policies, records)
    assert d["identities"] == ["spiffe://cluster.local/ns/shop/sa/reviews"]
    assert d["pods"] == ["reviews-v1-5d8f9c7b6-abcde"]
    assert [(p["name"], p["action"], p["applies"]) for p in d["policies"]] == [
        ("no-admin", "DENY", "via Service/reviews"), ("v1-only", "ALLOW", "selector"),
        ("strict", "STRICT", "whole namespace")]
    assert [c["timestamp"] for c in d["recent_connections"]] == [f"t{i}" for i in range(11, 1, -1)]   # newest first


def test_the_server_routes_the_page_the_graph_and_a_node():
    views = Views(graph=lambda: {"nodes": [], "edges": []}, node=lambda ns, w: {"id": f"{ns}/{w}"})
    status, kind, body = route(views, "/")
    assert status == 200 and kind.startswith("text/html") and b"api/graph" in body
    assert route(views, "/api/graph")[2] == b'{"nodes": [], "edges": []}'
    assert json.loads(route(views, "/api/node?id=shop/reviews-v1")[2]) == {"id": "shop/reviews-v1"}
    assert route(views, "/api/node?id=nonsense")[0] == 400
    assert route(views, "/nothing")[0] == 404

    def no_figures():
        raise sources.SourceError("the first figures come after two scrapes")
    status, _, body = route(Views(no_figures, views.node), "/api/graph")
    assert status == 503 and "two scrapes" in json.loads(body)["error"]


def test_opaque_tcp_that_a_waypoint_relayed_is_an_edge_through_the_waypoint():
    _, after = sampling([tcp("waypoint", "shop/load", "shop/echo", 4, 80),
                         tcp("destination", "shop/load", WAYPOINT, 4, 80),
                         tcp("destination", WAYPOINT, "shop/echo", 4, 80)])
    g = graph.build({}, after, 2.0, origin="proxies", waypoints={WAYPOINT})
    assert [(e.source, e.target, e.protocol, e.rps, e.tcp_bytes_per_second, e.mtls, e.waypoint) for e in g.edges] == [
        ("shop/load", "shop/echo", "tcp", 2.0, 40.0, True, WAYPOINT)]
