"""One request, three proxies, one story (issue 14, item 5), through the local cluster (root, eBPF redirect).

The client (Deployment `client`, node1) asks `reviews` (Deployment `reviews-v1`, node2) through the namespace's
waypoint. The client's ztunnel reports the connection to the waypoint as `source`, node2's ztunnel the
connection from the waypoint as `destination`, the waypoint the request. Every label that names an end of it,
in the metrics and in the access logs, must say the same thing in each proxy that saw that end, and say what
Istio says: the Deployment as workload, canonical service and revision from the labels (`latest` when none).
"""

from __future__ import annotations

import json
import sys
import uuid

import pytest

from shoal.contracts import METRICS_PORT
from shoal.local.observe import access_log

from support import metrics
from support.cluster import LocalCluster, running_cluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

WAYPOINT = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
REVIEWS = "http://reviews.shop.svc.cluster.local"
END_LABELS = ("workload", "workload_namespace", "principal", "app", "version", "canonical_service",
              "canonical_revision", "cluster")


def deployment(name, labels, node, argv, probe=True):
    container = {"name": "app", "command": argv}
    if probe:
        container["readinessProbe"] = {"tcpSocket": {"port": 8080}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeName": node, "serviceAccountName": labels["app"],
                                           "containers": [container]}}}}


APPS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {
        "shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"}}},
    deployment("reviews-v1", {"app": "reviews", "version": "v1"}, "node2",
               [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"]),
    deployment("client", {"app": "client"}, "node1", ["sleep", "infinity"], probe=False),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
     "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "no-admin", "namespace": "shop"},
     "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": "DENY",
              "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}},
]


class Shop(LocalCluster):
    def pod(self, **labels) -> dict:
        return next(iter(self.pods("shop", **labels).values()))

    def curl(self, path: str, *options: str):
        client = self.pod(app="client")["metadata"]["name"]
        return self.exec(client, "curl", "-sS", "--max-time", "10", *options, f"{REVIEWS}{path}", namespace="shop",
                         check=False, timeout=60)

    def waypoint_log(self) -> list[dict]:
        out = self.logs(self.pod(**WAYPOINT)["metadata"]["name"], "shop")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"request complete"' in line]

    def waypoint_metrics(self) -> str:
        netns = self.pod(**WAYPOINT)["status"]["shoal"]["netns"].rsplit("/", 1)[1]
        return metrics.scrape(METRICS_PORT, netns=netns)


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("obs", nodes=2, redirect="ebpf", kind=Shop) as c:
        c.apply(APPS)
        assert "waypoint shop/waypoint applied" in c.run("waypoint", "apply", "-n", "shop", "--access-log").stdout
        eventually(lambda: c.pod(**WAYPOINT) if c.pods("shop", **WAYPOINT) else None, 60,
                   "the control plane to deploy the waypoint", interval=0.5)
        c.wait_pods_ready("shop", 3, timeout=120)
        eventually(lambda: c.curl("/ready", "-o", "/dev/null", "-w", "%{http_code}").stdout.strip() == "404", 90,
                   "reviews to answer through the waypoint", interval=0.5)
        yield c


def _one(samples, **labels):
    found = [s for s in samples if labels.items() <= s.labels.items()]
    assert len(found) == 1, (labels, [s.labels for s in found])
    return found[0].labels


def _end(labels: dict, side: str) -> dict:
    return {name: labels[f"{side}_{name}"] for name in END_LABELS}


def test_one_requests_labels_and_log_lines_agree_in_both_ztunnels_and_the_waypoint(cluster):
    path = f"/truth-{uuid.uuid4().hex[:8]}"
    r = cluster.curl(path, "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout.strip() == "404", (r.stdout, r.stderr)   # http.server's answer for a path it lacks
    client_pod, reviews_pod = cluster.pod(app="client"), cluster.pod(app="reviews")
    waypoint_pod = cluster.pod(**WAYPOINT)

    # The waypoint's view of the request.
    wp_line = eventually(lambda: next((l for l in cluster.waypoint_log() if l.get("path") == path), None), 30,
                         "the waypoint's access-log line")
    wp_samples = [s for s in metrics.parse(cluster.waypoint_metrics()) if s.name == "istio_requests_total"]
    wp = _one(wp_samples, source_workload="client", response_code="404")
    assert _end(wp, "source") == {
        "workload": "client", "workload_namespace": "shop", "principal": "spiffe://cluster.local/ns/shop/sa/client",
        "app": "client", "version": "latest", "canonical_service": "client", "canonical_revision": "latest",
        "cluster": "Kubernetes"}
    assert _end(wp, "destination") == {
        "workload": "reviews-v1", "workload_namespace": "shop",
        "principal": "spiffe://cluster.local/ns/shop/sa/reviews", "app": "reviews", "version": "v1",
        "canonical_service": "reviews", "canonical_revision": "v1", "cluster": "Kubernetes"}

    # The client's ztunnel: the connection to the waypoint, reporter=source (by the client's port).
    zt1_line = eventually(lambda: next((l for l in access_log(cluster.layout, 1) if l.get("direction") == "outbound"
                                        and l.get("src_workload") == "client"
                                        and l.get("dst_pod") == waypoint_pod["metadata"]["name"]), None), 30,
                          lambda: f"node1's outbound record; the last ones: {access_log(cluster.layout, 1)[-4:]}")
    zt1 = _one([s for s in metrics.parse(cluster.scrape(1, METRICS_PORT))
                if s.name == "istio_tcp_connections_opened_total"], reporter="source", source_workload="client")
    # node2's ztunnel: the connection from the waypoint to reviews, reporter=destination.
    zt2_line = eventually(lambda: next((l for l in access_log(cluster.layout, 2) if l.get("direction") == "inbound"
                                        and l.get("dst_workload") == "reviews-v1"), None), 30,
                          lambda: f"node2's inbound record; the last ones: {access_log(cluster.layout, 2)[-4:]}")
    zt2 = _one([s for s in metrics.parse(cluster.scrape(2, METRICS_PORT))
                if s.name == "istio_tcp_connections_opened_total"], reporter="destination",
               destination_workload="reviews-v1")

    # Metrics, field by field: each end as every proxy that saw it names it.
    assert _end(zt1, "source") == _end(wp, "source")
    assert _end(zt2, "destination") == _end(wp, "destination")
    assert _end(zt1, "destination") == _end(zt2, "source")          # the waypoint, seen from both sides
    assert _end(zt1, "destination")["workload"] == "waypoint"
    assert zt1["connection_security_policy"] == zt2["connection_security_policy"] == "mutual_tls"

    # Access logs, field by field, and against the metrics.
    for field, value in {"src_workload": "client", "src_namespace": "shop",
                         "src_canonical_service": "client", "src_canonical_revision": "latest",
                         "src_pod": client_pod["metadata"]["name"],
                         "src_identity": wp["source_principal"]}.items():
        assert wp_line[field] == zt1_line[field] == value, field
    for field, value in {"dst_workload": "reviews-v1", "dst_namespace": "shop",
                         "dst_canonical_service": "reviews", "dst_canonical_revision": "v1",
                         "dst_pod": reviews_pod["metadata"]["name"],
                         "dst_identity": wp["destination_principal"]}.items():
        assert wp_line[field] == zt2_line[field] == value, field
    assert zt2_line["src_identity"] == zt1_line["dst_identity"] == zt1["destination_principal"]
    # eBPF mode: the client's address is its pod IP, as in iptables mode, not the loopback the capture used.
    assert zt1_line["src_addr"].rsplit(":", 1)[0] == client_pod["status"]["podIP"], zt1_line


def test_a_denied_client_is_not_told_the_policy_but_the_access_log_says_it(cluster):
    r = cluster.curl("/admin/users", "-w", "\n%{http_code}")
    body, _, status = r.stdout.rpartition("\n")
    assert status == "403", (r.stdout, r.stderr)
    assert "no-admin" not in body and "RBAC: access denied" in body, body
    line = eventually(lambda: next((l for l in cluster.waypoint_log() if l.get("path") == "/admin/users"), None), 30,
                      "the waypoint's line for the denied request")
    assert line["status"] == 403 and line["response_flags"] == "RBAC" and line["policy"] == "shop/no-admin", line


def test_no_created_series_beside_the_counters(cluster):
    for text in (cluster.scrape(1, METRICS_PORT), cluster.waypoint_metrics()):
        assert "istio_" in text and "_created" not in text
