"""End to end through `shoal local up`: the control plane as node 1's system pod, reached
from node 2's network namespace by the real client, restarted by the kubelet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal import store
from shoal.local.layout import Layout

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
              pytest.mark.timeout(240)]

CLUSTER = f"cp{os.getpid() % 100000}"


def shoal(*args: str, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                            input=input, timeout=timeout)
    assert result.returncode == 0, f"shoal {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def in_node(node: int, code: str, timeout: float = 60) -> dict:
    """Runs Python in a node's netns (as the node's components do); returns the JSON it prints."""
    result = subprocess.run(["ip", "netns", "exec", f"shoal-{CLUSTER}-node{node}", sys.executable, "-c",
                             textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
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


def metrics(node: int) -> str:
    r = subprocess.run(["ip", "netns", "exec", f"shoal-{CLUSTER}-node{node}", "curl", "-sf", "--max-time", "2",
                        "http://198.18.0.1:15014/metrics"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    try:  # `up` inside: one that fails half-way is downed too
        shoal("local", "up", "--cluster", CLUSTER, "--nodes", "2", "--redirect", "iptables")
        yield store.RUN_ROOT / CLUSTER
    finally:
        shoal("local", "down", "--cluster", CLUSTER)


def test_control_plane_serves_both_nodes_and_authorizes_by_node(cluster):
    wait(lambda: 'shoal_xds_connected_proxies{kind="ztunnel"} 2.0' in metrics(2), 30, "both ztunnels connected")
    shoal("local", "apply", "--cluster", CLUSTER, "-f", "-", input=APP)

    def app_running():
        pods = json.loads(shoal("local", "get", "pods", "--cluster", CLUSTER, "-n", "cpdemo", "-o", "json").stdout)
        return any(p["status"].get("podIP") for p in pods["items"])
    wait(app_running, 60, "the app pod")
    out = in_node(2, CLIENT.format(run=str(cluster)))
    node, sa, protocol = out["workloads"]["app"]
    assert sa == "reviews" and protocol == "HBONE" and node == out["pod_node"]
    other = "node2" if node == "node1" else "node1"
    assert out["signed"][node] == "spiffe://cluster.local/ns/cpdemo/sa/reviews"
    assert out["signed"][other].startswith("refused:") and "PERMISSION_DENIED" in out["signed"][other]


def test_restarted_control_plane_keeps_its_root_and_proxies_reconnect(cluster):
    bundle = (cluster / "ca" / "bundle.pem").read_bytes()
    procs = Layout(CLUSTER).pod_cgroup("shoal-system", "control-plane-node1") / "cgroup.procs"
    pids = [int(p) for p in procs.read_text().split()]
    assert pids, f"no process in {procs}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # a crash, not a clean stop
    wait(lambda: not metrics(2), 10, "the control plane to go away")
    wait(lambda: 'shoal_xds_connected_proxies{kind="ztunnel"} 2.0' in metrics(2), 60,
         "the restarted control plane and both ztunnels back")
    assert (cluster / "ca" / "bundle.pem").read_bytes() == bundle
