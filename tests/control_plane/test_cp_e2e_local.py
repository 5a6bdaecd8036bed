"""End to end through `shoal local up`: the control plane as node 1's system pod, reached
from node 2's network namespace by the real client, restarted by the kubelet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from shoal.contracts import CONTROL_PLANE_HTTP_PORT
from shoal.local.layout import node_ip

from support import metrics
from support.cluster import LocalCluster, running_cluster
from support.polling import eventually
from support.root import needs_root

pytestmark = [needs_root("creates network namespaces"), pytest.mark.timeout(240)]


def in_node(cluster: LocalCluster, node: int, code: str, timeout: float = 60) -> dict:
    """Runs Python in a node's netns (as the node's components do); returns the JSON it prints."""
    result = subprocess.run(["ip", "netns", "exec", cluster.layout.node_netns(node), sys.executable, "-c",
                             textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


CLIENT = """
import asyncio, json
from pathlib import Path
from shoal import identity
from shoal.config_client import ClientSettings, ConfigClient, ConfigClientError, request_certificate
from shoal.model import ResourceType

RUN = Path({run!r})
def settings(node):
    return ClientSettings(target="198.18.0.1:15012", bundle_pem=(RUN / "ca" / "bundle.pem").read_bytes(),
                          token=(RUN / node / "token").read_text().strip(), node=node)

async def main():
    client = ConfigClient(settings("node2"))
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(client.synced.wait(), 20)
    workloads = {{w.name: [w.node, w.service_account, str(w.protocol)]
                 for w in client.resources(ResourceType.WORKLOAD).values()}}
    client.stop(); await task
    out = {{"workloads": workloads, "signed": {{}}}}
    pod_node, sa = workloads["app"][0], workloads["app"][1]
    who = identity.SpiffeId("cluster.local", "cpdemo", sa)
    for node in ("node1", "node2"):
        try:
            cred = await request_certificate(settings(node), identity.new_key(), who)
            out["signed"][node] = str(cred.identity)
        except ConfigClientError as e:
            out["signed"][node] = "refused: " + str(e)
    out["pod_node"] = pod_node
    print(json.dumps(out))
asyncio.run(main())
"""

APP = """
apiVersion: v1
kind: Namespace
metadata: {name: cpdemo, labels: {shoal.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews, namespace: cpdemo}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: cpdemo, labels: {app: app}}
spec:
  serviceAccountName: reviews
  containers: [{name: app}]
"""


def connected_ztunnels(cluster: LocalCluster) -> float | None:
    """What the control plane (on node 1) says, asked from node 2; None while it does not answer."""
    text = cluster.scrape(2, CONTROL_PLANE_HTTP_PORT, host=node_ip(1))
    return metrics.value(text, "shoal_xds_connected_proxies", kind="ztunnel")


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("cp", nodes=2) as c:
        yield c


def test_control_plane_serves_both_nodes_and_authorizes_by_node(cluster):
    eventually(lambda: connected_ztunnels(cluster) == 2, 30, "both ztunnels connected", interval=0.2)
    cluster.apply(APP)
    eventually(lambda: any(p["status"].get("podIP") for p in cluster.pods("cpdemo").values()), 60, "the app pod",
               interval=0.2)
    out = in_node(cluster, 2, CLIENT.format(run=str(cluster.layout.run_dir)))
    node, sa, protocol = out["workloads"]["app"]
    assert sa == "reviews" and protocol == "HBONE" and node == out["pod_node"]
    other = "node2" if node == "node1" else "node1"
    assert out["signed"][node] == "spiffe://cluster.local/ns/cpdemo/sa/reviews"
    assert out["signed"][other].startswith("refused:") and "PERMISSION_DENIED" in out["signed"][other]


def test_restarted_control_plane_keeps_its_root_and_proxies_reconnect(cluster):
    bundle = cluster.layout.ca_bundle.read_bytes()
    procs = cluster.layout.pod_cgroup("shoal-system", "control-plane-node1") / "cgroup.procs"
    pids = [int(p) for p in procs.read_text().split()]
    assert pids, f"no process in {procs}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # a crash, not a clean stop
    eventually(lambda: connected_ztunnels(cluster) is None, 10, "the control plane to go away", interval=0.2)
    eventually(lambda: connected_ztunnels(cluster) == 2, 60, "the restarted control plane and both ztunnels back",
               interval=0.2)
    assert cluster.layout.ca_bundle.read_bytes() == bundle
