"""The node agent inside `shoal local`, in both modes: enrollment by annotation with no restart,
traffic through the real ztunnels, un-enrollment, and nothing left after `down`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal import netns
from shoal.local.layout import Layout

from na_topology import bpftool_cgroup
from node_agent import netfilter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: shoal local builds network namespaces")

REPO = Path(__file__).resolve().parents[2]

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo}
spec:
  nodeName: node2
  containers:
  - name: app
    command: ["python3", "-m", "http.server", "8080"]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec:
  nodeName: node1
  containers:
  - name: app
    command: ["sleep", "3600"]
"""


def shoal(*args: str, cluster: str, check: bool = True, input: str | None = None, timeout: float = 120):
    argv = [*args[:2], "--cluster", cluster, *args[2:]]  # before any `--` of exec
    result = subprocess.run([sys.executable, "-m", "shoal", *argv], capture_output=True,
                            text=True, cwd=REPO, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} failed ({result.returncode}): {result.stderr}{result.stdout}")
    return result


def agent_metric(layout: Layout, node: int, name: str) -> float | None:
    try:
        sock = netns.socket_in(layout.node_netns(node))
        sock.settimeout(2)
        sock.connect(("127.0.0.1", 15022))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
    except OSError:
        return None
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def curl(cluster: str) -> str:
    result = shoal("local", "exec", "-n", "demo", "client", "--", "curl", "-s", "-m", "8", "-o", "/dev/null",
                   "-w", "%{http_code}", "http://198.19.2.2:8080/", cluster=cluster, check=False, timeout=30)
    return result.stdout.strip()


def capture_in(layout: Layout, pod: str) -> bool:
    ns = layout.pod_netns("demo", pod)
    if "SHOAL_OUTPUT" in netfilter.save(ns):
        return True
    return bool(bpftool_cgroup(str(layout.pod_cgroup("demo", pod))))


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_enroll_by_annotation_in_a_local_cluster(mode):
    cluster = f"na{mode[:3]}{os.getpid() % 10000}"
    layout = Layout(cluster)
    try:
        shoal("local", "up", "--nodes", "2", "--redirect", mode, cluster=cluster, timeout=180)
        shoal("local", "apply", "-f", "-", cluster=cluster, input=MANIFEST)
        wait_until(lambda: curl(cluster) == "200", 30, "the server to answer outside the mesh")
        assert not capture_in(layout, "client") and not capture_in(layout, "server")

        # Enrolling a namespace of running pods: no restart, and traffic flows through the ztunnels.
        shoal("local", "apply", "-f", "-", cluster=cluster, input=MANIFEST.replace(
            "name: demo\n---", "name: demo\n  annotations: {shoal.io/dataplane-mode: ambient}\n---", 1))
        for node in (1, 2):
            wait_until(lambda: agent_metric(layout, node, "shoal_node_agent_enrolled_pods") == 1, 30,
                       f"the pod on node{node} enrolled")
        assert capture_in(layout, "client") and capture_in(layout, "server")
        assert curl(cluster) == "200"
        pods = shoal("local", "get", "pods", "-n", "demo", cluster=cluster).stdout
        assert " 0 " in pods.splitlines()[1] and " 0 " in pods.splitlines()[2]  # no restarts
        ztunnel_log = shoal("local", "logs", "-n", "shoal-system", "ztunnel-node2", cluster=cluster).stdout
        assert '"dst_addr": "198.19.2.2:8080"' in ztunnel_log and '"mtls": true' in ztunnel_log

        # Leaving: redirection removed, traffic goes straight again.
        shoal("local", "apply", "-f", "-", cluster=cluster, input=MANIFEST)
        wait_until(lambda: not capture_in(layout, "client") and not capture_in(layout, "server"), 30,
                   "redirection removed")
        assert curl(cluster) == "200"
    finally:
        shoal("local", "down", cluster=cluster, check=False, timeout=120)
    assert not netns.names(layout.prefix)
    assert not list(Path("/sys/fs/bpf/shoal").glob(f"{cluster}-node*")) if Path("/sys/fs/bpf/shoal").exists() else True
