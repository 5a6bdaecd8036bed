"""End to end (root): a ServiceEntry to a server outside the local cluster, and egress policy on it.

One 1-node cluster (iptables redirect). The "outside" server is a real
python http.server in `shoal-<cluster>-outside10` (198.18.48.10), a netns
on the underlay that is not a node, made by `shoal.local.outside`. An
enrolled pod reaches it by the ServiceEntry's host at the address the
control plane allocated (the DNS proxy's answer; here given to curl with
--resolve); the ztunnel's access log names the entry's host. Bound to an
egress waypoint, a DENY policy that targets the ServiceEntry refuses the
request with 403 and the server sees nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shoal import netns
from shoal.local import observe
from shoal.local.outside import ensure_outside, nodes_of, outside_netns, remove_outside
from control_plane.translate.service_entry import allocate

from support.cluster import running_cluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster and an outside netns")

APP = str(Path(__file__).parents[2] / "waypoint" / "wp_apps.py")
HOST = "api.outside.test"
VIP = allocate([HOST])[HOST][0]      # the only ServiceEntry host without addresses in this cluster

MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: egress, labels: {{shoal.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: egress}}
spec:
  nodeName: node1
  serviceAccountName: client
  containers: [{{name: sh, command: [sleep, infinity]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: outside-api, namespace: egress}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  endpoints: [{{address: 198.18.48.10}}]
"""

WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress-waypoint, namespace: egress}
spec:
  gatewayClassName: shoal-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

DENY = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-outside-admin, namespace: egress}}
spec:
  targetRefs: [{{kind: ServiceEntry, group: networking.istio.io, name: outside-api}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"""


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("ns", nodes=1, redirect="iptables") as c:
        name, address = ensure_outside(c.layout, 10)
        log = c.layout.run_dir / "outside10.log"
        server = netns.popen(name, [sys.executable, APP, "outside-api", "8080"], stdout=open(log, "w"),
                             stderr=open(log.with_suffix(".err"), "w"))
        try:
            c.apply(MANIFEST)
            c.wait_pods_ready("egress", 1)
            c.outside_log = log
            yield c
        finally:
            server.terminate()
            server.wait(10)
    assert not netns.exists(name), "shoal local down left the outside host's netns behind"


def hits(cluster, path: str) -> list[dict]:
    lines = [json.loads(line) for line in cluster.outside_log.read_text().splitlines() if line.startswith("{")]
    return [hit for hit in lines if hit.get("path") == path]


def curl(cluster, path: str):
    return cluster.curl("client", f"http://{HOST}{path}", "--resolve", f"{HOST}:80:{VIP}",
                        "-w", "\n%{http_code}", namespace="egress", max_time=10)


def test_a_service_entry_host_is_reached_by_name_through_the_ztunnel(cluster):
    def answered():
        out = curl(cluster, "/hello")
        return out.stdout if out.returncode == 0 and out.stdout.endswith("200") else None
    body = eventually(answered, 60, "the outside server to answer through the mesh", interval=0.5)
    assert "outside-api GET /hello" in body
    (hit, *_) = hits(cluster, "/hello")
    assert hit["peer"].startswith(cluster.pod_ip("client", "egress"))   # no NAT: the pod's own address

    def logged():
        return [r for r in observe.access_log(cluster.layout, 1)
                if r.get("direction") == "outbound" and r.get("dst_service") == HOST]
    (record, *_) = eventually(logged, 30, "the ztunnel's access log to name the ServiceEntry host")
    assert record.get("upstream", "").startswith("198.18.48.10:8080"), record


def test_a_deny_policy_on_the_service_entry_blocks_it_at_the_egress_waypoint(cluster):
    cluster.apply(WAYPOINT)
    cluster.apply(MANIFEST.replace("metadata: {name: outside-api, namespace: egress}",
                                   "metadata: {name: outside-api, namespace: egress, "
                                   "labels: {istio.io/use-waypoint: egress-waypoint}}"))
    cluster.apply(DENY)

    def refused():
        out = curl(cluster, "/admin/keys")
        return out.stdout if out.stdout.endswith("403") else None
    eventually(refused, 90, "the egress waypoint to refuse /admin with 403", interval=0.5)
    assert hits(cluster, "/admin/keys") == []

    def allowed():
        out = curl(cluster, "/public")
        return out.stdout if out.stdout.endswith("200") else None
    assert "outside-api GET /public" in eventually(allowed, 60, "other paths to pass the waypoint", interval=0.5)
    waypoint_ips = {p["status"]["podIP"] for p in cluster.pods("egress").values()
                    if p["metadata"]["name"].startswith("egress-waypoint")}
    (hit, *_) = hits(cluster, "/public")
    assert waypoint_ips and hit["peer"] in waypoint_ips      # the waypoint made the request, not the client


def test_the_outside_host_goes_with_remove_and_down(cluster):
    name, _ = ensure_outside(cluster.layout, 11)      # idempotent, and a second one is independent
    assert ensure_outside(cluster.layout, 11)[0] == name
    assert netns.exists(name)
    remove_outside(cluster.layout, 11)
    assert not netns.exists(name)
    assert nodes_of(cluster.layout) == [1]
    assert outside_netns(cluster.layout, 10) in netns.names(cluster.layout.prefix)
    # outside10 stays until `shoal local down`; the fixture checks that down removes it
