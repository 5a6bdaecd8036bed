"""Enrollment by Istio's annotation, end to end on the local cluster (root).

A Namespace ANNOTATED (not labelled) `istio.io/dataplane-mode: ambient`: the
control plane has always published its pods as HBONE, and the node agent now
captures them too, because both call `shoal.contracts.enrollment`. Before,
the agent counted Istio's key only as a label: the pods were never captured
and their traffic went around the mesh, so no ztunnel saw it. Here the
capture appears in both pods' netns, nothing restarts, and a request from one
pod to the other shows in both ztunnels' access logs as mTLS between the
namespace's identities.

Uses the package's shared cluster (`--redirect iptables`, tests/shoal/local/conftest.py)
and removes what it applied.
"""

from __future__ import annotations

import json

import pytest

from node_agent import netfilter
from shoal.contracts import ISTIO_DATAPLANE_MODE

from support.cluster import LocalCluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

NAMESPACE = "istio-annotated"

MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NAMESPACE}}}
spec:
  nodeName: node2
  containers:
  - name: http
    command: ["python3", "-m", "http.server", "8080"]
    readinessProbe: {{tcpSocket: {{port: 8080}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}}}
spec:
  nodeName: node1
  containers: [{{name: sh, command: ["sleep", "infinity"]}}]
"""


def captured(cluster: LocalCluster, pod: str) -> bool:
    """The node agent's iptables capture is in the pod's netns (this package's cluster redirects with iptables)."""
    return "SHOAL_OUTPUT" in netfilter.save(cluster.layout.pod_netns(NAMESPACE, pod))


def connections(cluster: LocalCluster, node: int) -> list[dict]:
    """The access-log records of ztunnel-node<N>, read as an operator would: `shoal local logs`."""
    text = cluster.logs(f"ztunnel-node{node}", namespace="shoal-system")
    return [json.loads(line) for line in text.splitlines()
            if line.startswith("{") and '"connection complete"' in line]


def agent_log(cluster: LocalCluster, node: int) -> str:
    """The node agent's log lines about this namespace, for a failure's message."""
    text = cluster.logs(f"node-agent-node{node}", namespace="shoal-system")
    return "\n".join(line for line in text.splitlines() if NAMESPACE in line)[-3000:] or "(nothing about it)"


def restarts(cluster: LocalCluster) -> int:
    return sum(status.get("restartCount", 0) for pod in cluster.pods(NAMESPACE).values()
               for status in (pod.get("status") or {}).get("containerStatuses", []))


@pytest.fixture
def pods(cluster: LocalCluster):
    cluster.apply(MANIFEST)
    try:
        yield cluster.wait_pods_ready(NAMESPACE, 2)
    finally:
        cluster.delete(MANIFEST, check=False)


def test_a_namespace_annotated_with_istios_key_has_its_pods_captured_and_their_traffic_in_mtls(cluster, pods):
    server_ip = pods["server"]["status"]["podIP"]
    url = f"http://{server_ip}:8080/"
    assert not captured(cluster, "client") and not captured(cluster, "server")
    assert cluster.curl("client", url, namespace=NAMESPACE).returncode == 0  # outside the mesh, it works too

    cluster("annotate", "namespace", NAMESPACE, f"{ISTIO_DATAPLANE_MODE}=ambient")
    eventually(lambda: captured(cluster, "client") and captured(cluster, "server"), 60,
               lambda: (f"the node agents to capture both pods of the annotated namespace (client: "
                        f"{captured(cluster, 'client')}, server: {captured(cluster, 'server')}); node1's agent says:\n"
                        f"{agent_log(cluster, 1)}\nnode2's agent says:\n{agent_log(cluster, 2)}"))
    assert restarts(cluster) == 0  # enrolled in place

    last = {}

    def through_the_mesh():
        answer = last["curl"] = cluster.curl("client", url, namespace=NAMESPACE)
        outbound = [r for r in connections(cluster, 1) if r.get("direction") == "outbound"
                    and r.get("dst_addr") == f"{server_ip}:8080" and r.get("mtls")]
        inbound = [r for r in connections(cluster, 2) if r.get("direction") == "inbound"
                   and r.get("dst_addr") == f"{server_ip}:8080" and r.get("mtls")]
        return answer.returncode == 0 and outbound and inbound and (outbound[-1], inbound[-1])

    def state():
        records = [r for node in (1, 2) for r in connections(cluster, node) if r.get("dst_addr") == f"{server_ip}:8080"]
        return (f"an mTLS connection client -> server in the ztunnels' access logs (node1 outbound, node2 inbound); "
                f"the last curl: {last['curl'].returncode} {last['curl'].stderr.strip()!r}; records: {records[-4:]}")

    outbound, inbound = eventually(through_the_mesh, 60, state, interval=0.5)
    identity = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/default"
    assert outbound["src_identity"] == identity and outbound["src_workload"] == "client"
    assert inbound["src_identity"] == identity and inbound["dst_workload"] == "server"
    assert inbound["dst_namespace"] == NAMESPACE and not inbound.get("error")
