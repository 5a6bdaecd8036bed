"""The observability tests share one 2-node cluster, up with `--addons prometheus`, with traffic flowing.

Namespace `shop` is enrolled and uses a waypoint. `load` (node1) asks `reviews` four times a second
for as long as the cluster is up; `reviews` is `reviews-v1` (node2, Python's http.server, which answers
404 for the path asked) and `reviews-v2` (node1, which answers every other request with a 503), so
there are successes, 4xx and 5xx. Besides HTTP,
`load` opens plain TCP connections to `echo` (node2), so the ztunnels count TCP on a port no
waypoint parses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.local.addons import prometheus_url
from shoal.local.observe import http_get

from support.cluster import LocalCluster, running_cluster
from support.polling import eventually
from support.root import IS_ROOT

WAYPOINT = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
LOAD = ("while :; do curl -s -o /dev/null --max-time 5 http://reviews.shop.svc.cluster.local/item; "
        "echo ping | curl -s --max-time 2 telnet://echo.shop.svc.cluster.local:7000 >/dev/null; sleep 0.25; done")


def deployment(name, labels, node, argv, port=None):
    container = {"name": "app", "command": argv}
    if port:
        container["readinessProbe"] = {"tcpSocket": {"port": port}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeName": node, "serviceAccountName": labels["app"],
                                           "containers": [container]}}}}


def service(name, app, port, target, port_name):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": app}, "ports": [{"name": port_name, "port": port, "targetPort": target}]}}


FLAKY_SERVER = [sys.executable, str(Path(__file__).parents[2] / "waypoint" / "wp_apps.py"), "reviews-v2", "8080",
                "--fail-every-other"]
HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"]
ECHO_SERVER = [sys.executable, "-c", "import socketserver as s\n"
               "class H(s.StreamRequestHandler):\n"
               "    def handle(self):\n"
               "        self.wfile.write(self.rfile.readline())\n"
               "s.ThreadingTCPServer.allow_reuse_address = True\n"
               "s.ThreadingTCPServer(('0.0.0.0', 7000), H).serve_forever()\n"]

APPS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {
        "shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"}}},
    deployment("reviews-v1", {"app": "reviews", "version": "v1"}, "node2", HTTP_SERVER, 8080),
    deployment("reviews-v2", {"app": "reviews", "version": "v2"}, "node1", FLAKY_SERVER, 8080),
    deployment("echo", {"app": "echo"}, "node2", ECHO_SERVER, 7000),
    deployment("load", {"app": "load"}, "node1", ["sh", "-c", LOAD]),
    service("reviews", "reviews", 80, 8080, "http"),
    service("echo", "echo", 7000, 7000, "tcp-echo"),
]



class Observed(LocalCluster):
    """The cluster with its Prometheus, asked from inside node 1 (where the addon listens)."""

    def up(self, nodes: int = 2, redirect: str = "iptables"):
        return self("up", "--nodes", str(nodes), "--redirect", redirect, "--addons", "prometheus")

    def prometheus(self, path: str, timeout: float = 10.0) -> dict:
        """GET on the Prometheus HTTP API (a JSON answer), from node 1's network namespace."""
        url = prometheus_url(self.layout)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return json.loads(http_get(self.layout.node_netns(1), host, int(port), path, timeout=timeout))

    def query(self, promql: str) -> list[dict]:
        from urllib.parse import quote
        answer = self.prometheus(f"/api/v1/query?query={quote(promql)}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stored(self, promql: str) -> list[dict]:
        """The query's series, or [] while Prometheus is not answering yet."""
        try:
            return self.query(promql)
        except OSError:
            return []

    def waypoint_pod(self) -> dict | None:
        return next(iter(self.pods("shop", **WAYPOINT).values()), None)


@pytest.fixture(scope="package")
def observed():
    if not IS_ROOT:
        pytest.skip("needs root: runs a local cluster")
    with running_cluster("obs", nodes=2, redirect="iptables", kind=Observed) as c:
        c.apply(APPS)
        assert "waypoint shop/waypoint applied" in c.run("waypoint", "apply", "-n", "shop").stdout
        eventually(c.waypoint_pod, 60, "the control plane to deploy the waypoint", interval=0.5)
        c.wait_pods_ready("shop", 5, timeout=180)
        # Traffic has reached Prometheus once the waypoint's requests to reviews-v1 are stored.
        eventually(lambda: c.stored('istio_requests_total{destination_workload="reviews-v1"}'), 180,
                   "Prometheus to hold the waypoint's requests", interval=2)
        yield c
    # No leftovers: down took the addon's processes (they ran in the pod's cgroup) and its files.
    assert not c.layout.run_dir.exists(), f"{c.layout.run_dir} is left after down"
    running = subprocess.run(["pgrep", "-f", f"{c.layout.run_dir}/addons"], capture_output=True, text=True).stdout
    assert not running.strip(), f"addon processes left after down: {running}"
