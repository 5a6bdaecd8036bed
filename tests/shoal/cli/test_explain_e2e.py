"""Config that explains itself, on a real local cluster: `proxy-config` shows what a waypoint and a ztunnel
hold (a 50/50 split with its weights and subsets), `describe` says why, and `check` stays silent."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from support.cli import SHOAL, shoal
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

APP = [sys.executable, "-m", "http.server", "8080"]


def deployment(name: str, version: str) -> dict:
    labels = {"app": "reviews", "version": version}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"serviceAccountName": "reviews",
                                  "containers": [{"name": "app", "command": APP,
                                                  "readinessProbe": {"tcpSocket": {"port": 8080}}}]}}}}


SHOP = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {
        "shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"}}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "shop"},
     "spec": {"gatewayClassName": "shoal-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
    deployment("reviews-v1", "v1"), deployment("reviews-v2", "v2"),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
     "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "shop"},
     "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                             {"name": "v2", "labels": {"version": "v2"}}]}},
    {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "shop"},
     "spec": {"hosts": ["reviews"], "http": [{"name": "split", "timeout": "3s", "retries": {"attempts": 2},
                                              "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                                                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}]}]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "shop"},
     "spec": {"serviceAccountName": "client", "containers": [{"name": "sh", "command": ["sleep", "infinity"]}]}},
]


@pytest.fixture(scope="module")
def cluster(running):
    """The package's shared cluster, with namespace shop (taken out again at the end)."""
    running.apply(SHOP)
    try:
        running.wait_pods_ready("shop", 4, timeout=180)   # two reviews, the client and the waypoint
        yield running
    finally:
        running.delete(SHOP, check=False)


def test_proxy_config_routes_on_the_waypoint_shows_the_split_weights_and_subsets(cluster):
    def routes():
        out = cluster.run("proxy-config", "routes", "waypoint", "-n", "shop", check=False).stdout
        return out if "subset=v2 weight=50" in out else None
    text = eventually(routes, 120, "the waypoint to hold the 50/50 route table")
    lines = [line for line in text.splitlines() if "reviews.shop" in line]
    assert len(lines) == 2, text
    first, second = lines
    assert first.split()[:2] == ["reviews.shop.svc.cluster.local:80", "VirtualService"]
    assert "split" in first and "subset=v1 weight=50" in first and "3s" in first and "2x" in first
    assert "subset=v2 weight=50" in second
    as_json = json.loads(cluster.run("proxy-config", "routes", "waypoint", "-n", "shop", "-o", "json").stdout)
    (table,) = [t for t in as_json if t["hostname"] == "reviews.shop.svc.cluster.local"]
    assert [(d["subset_name"], d["weight"]) for d in table["routes"][0]["destinations"]] == [("v1", 50), ("v2", 50)]


def test_proxy_config_endpoints_lists_each_endpoint_with_its_health(cluster):
    def endpoints():
        out = cluster.run("proxy-config", "endpoints", "waypoint", "-n", "shop", check=False).stdout
        rows = [line for line in out.splitlines() if line.startswith("reviews.shop.svc.cluster.local:80")]
        return rows if len(rows) == 2 else None
    rows = eventually(endpoints, 60, "two reviews endpoints at the waypoint")
    assert all("HEALTHY" in row and "HBONE" in row and ":8080" in row for row in rows), rows
    assert sorted("version=v1" in row for row in rows) == [False, True]


def test_proxy_config_certs_on_a_ztunnel(cluster):
    out = eventually(lambda: (o := cluster.run("proxy-config", "certs", "node1").stdout).count("valid") and o, 60,
                     "a certificate at ztunnel-node1")
    assert "spiffe://cluster.local/ns/" in out


def test_proxy_config_of_a_proxy_that_does_not_exist_says_so(cluster):
    result = cluster.run("proxy-config", "routes", "nowhere", "-n", "shop", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("shoal: error: no running waypoint shop/nowhere")


def test_describe_pod_says_enrolled_why_identity_waypoint_policies_and_routes(cluster):
    pod = next(iter(cluster.pods("shop", version="v1")))
    text = cluster.run("describe", "pod", pod, "-n", "shop").stdout
    assert "Enrolled:    yes (the namespace's label shoal.io/dataplane-mode is ambient)" in text
    assert "Identity:    spiffe://cluster.local/ns/shop/sa/reviews" in text
    assert "reviews (reviews.shop.svc.cluster.local), waypoint shop/waypoint" in text
    assert "VirtualService shop/reviews: split -> reviews.shop subset v1 (50), reviews.shop subset v2 (50)" in text


def test_describe_svc_and_ns(cluster):
    svc = cluster.run("describe", "svc", "reviews", "-n", "shop").stdout
    assert "Waypoint:    shop/waypoint" in svc and svc.count("(in the mesh)") == 2
    ns = cluster.run("describe", "ns", "shop").stdout
    assert "shop/waypoint (for service)" in ns
    missing = cluster.run("describe", "svc", "nope", "-n", "shop", check=False)
    assert (missing.returncode, missing.stderr.strip()) == (1, "shoal: error: Service 'nope' not found in namespace shop")


def test_check_is_silent_on_this_healthy_cluster(cluster):
    result = shoal("check", "--cluster", cluster.name, check=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith(f"No problems found in cluster {cluster.name}")


def while_requests_flow(cluster, argv: list[str], count: int = 30) -> str:
    """Runs `shoal ARGV` while the client sends `count` requests to reviews (through the waypoint)."""
    process = subprocess.Popen([*SHOAL, *argv, "--cluster", cluster.name], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    def send():
        cluster.exec("client", "sh", "-c", f"for i in $(seq {count}); do curl -s -o /dev/null "
                     "http://reviews.shop.svc.cluster.local/; done", namespace="shop", timeout=120)
    sender = threading.Thread(target=send)
    sender.start()
    out, err = process.communicate(timeout=180)
    sender.join(timeout=180)
    assert process.returncode == 0, err
    return out


def test_stat_shows_success_rate_rate_and_latency_of_each_workload(cluster):
    def window():
        rows = json.loads(while_requests_flow(cluster, ["stat", "-n", "shop", "--window", "6", "-o", "json"]))
        seen = {r["version"]: r for r in rows if r["requests"] > 0}
        return seen if len(seen) == 2 else None
    seen = eventually(window, 240, "requests to both reviews versions within one window", interval=0)
    assert set(seen) == {"v1", "v2"}, seen
    for row in seen.values():
        assert row["workload"].startswith("reviews")   # the app's name, or its Deployment's
        assert row["success"] == 1.0 and row["rps"] > 0
        assert row["latency_ms_p50"] is not None and row["latency_ms_p99"] >= row["latency_ms_p50"]
        assert row["tcp_connections_per_second"] > 0   # the waypoint's HBONE connections, seen by the ztunnel


def test_top_shows_the_pairs_that_talk(cluster):
    def view():
        out = while_requests_flow(cluster, ["top", "-n", "shop", "--once", "--interval", "6"])
        rows = [line.split() for line in out.splitlines()[1:]]
        lines = [line.split() for line in out.splitlines()[1:] if line.startswith("shop/client ")]
        versions = {cells[2] for cells in lines if cells[1].startswith("shop/reviews")}
        return lines if versions == {"(v1)", "(v2)"} else None
    lines = eventually(view, 240, "client -> both reviews versions in top", interval=0)
    to_reviews = [cells for cells in lines if cells[1].startswith("shop/reviews")]
    assert all(cells[3] == "100.00%" and float(cells[4]) > 0 for cells in to_reviews), lines
