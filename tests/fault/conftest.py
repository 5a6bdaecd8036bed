"""The fault suite's clusters: a 2-node local cluster per redirect mode, with an enrolled namespace under
STRICT mTLS and a DENY policy, and the faults the tests make (root).

The two clusters are up at the same time, and each test runs the same steps in both at once
(`support.cluster.in_each`): most of a fault test is waiting (an outage, a restart, a paced load), and the waits of one
mode need not follow the other's. Each cluster is checked exactly as alone; a failure names its mode.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from shoal.contracts import PROBE_SOURCE
from shoal.local import components, observe
from shoal.local.kubelet import cgroup_pids
from shoal.local.services import pod_ready

from support.cluster import LocalCluster, running_in_each_mode
from support.polling import eventually

PYTHON = sys.executable
APPS = str(Path(__file__).with_name("fault_apps.py"))
NAMESPACE = "vault"
SERVICE = f"server.{NAMESPACE}.svc.cluster.local"
PORT = 9000
SYSTEM = components.SYSTEM_NAMESPACE


def manifests() -> list[dict]:
    def pod(name, namespace, node, containers, sa=None, labels=None):
        spec = {"nodeName": node, "containers": containers}
        if sa:
            spec["serviceAccountName"] = sa
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "spec": spec}
    sleeper = [{"name": "sh", "command": ["sleep", "infinity"]}]
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NAMESPACE, "labels": {"shoal.io/dataplane-mode": "ambient"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}},
        pod("server", NAMESPACE, "node2", [{"name": "server", "command": [PYTHON, APPS, "server", str(PORT)],
                                            "readinessProbe": {"tcpSocket": {"port": PORT}}}],
            sa="server", labels={"app": "server"}),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": NAMESPACE},
         "spec": {"selector": {"app": "server"}, "ports": [{"name": "tcp", "port": PORT}]}},
        pod("client", NAMESPACE, "node1", sleeper, sa="client"),
        pod("intruder", NAMESPACE, "node1", sleeper, sa="intruder"),
        pod("outsider", "legacy", "node1", sleeper),
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "strict", "namespace": NAMESPACE}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "no-intruder", "namespace": NAMESPACE},
         "spec": {"action": "DENY", "rules": [{"from": [{"source": {
             "principals": [f"cluster.local/ns/{NAMESPACE}/sa/intruder"]}}]}]}},
    ]


class FaultCluster(LocalCluster):
    """The cluster, with the faults: the control plane stopped and started, node agents killed, ztunnels
    restarted or rolled out; and what the tests read: the app's log, every ztunnel's access log."""

    python, apps, namespace, service, port = PYTHON, APPS, NAMESPACE, SERVICE, PORT

    @property
    def mode(self) -> str:
        """The redirect mode it was brought up in."""
        return self.redirect

    def system_pod(self, component: str, node: int) -> str:
        """The name of the component's pod on the node (a rollout gives it a new one)."""
        names = [name for name, p in self.pods(SYSTEM).items()
                 if components.component_of(p) == (component, f"node{node}")]
        assert len(names) == 1, f"expected one {component} pod on node{node}: {names}"
        return names[0]

    def processes(self, pod: str) -> list[int]:
        return cgroup_pids(self.layout.pod_cgroup(SYSTEM, pod))

    def ready(self, pod: str, namespace: str = SYSTEM) -> bool:
        found = self.layout.store().get("Pod", namespace, pod)
        return found is not None and pod_ready(found)

    def restarts(self, pod: str) -> int:
        found = self.layout.store().get("Pod", SYSTEM, pod) or {}
        return sum(c.get("restartCount", 0) for c in (found.get("status") or {}).get("containerStatuses", []))

    # -- faults ----------------------------------------------------------------------

    def stop_control_plane(self) -> None:
        self.layout.store().delete_many([("Pod", SYSTEM, "control-plane-node1")])
        eventually(lambda: not self.processes("control-plane-node1"), 60, "the control plane's processes to end")

    def start_control_plane(self) -> None:
        settings = components.Settings(nodes=2, redirect=self.mode)
        self.layout.store().apply(components.control_plane(self.layout, 1, settings))
        eventually(lambda: self.ready("control-plane-node1"), 120, "the control plane to be ready again",
                   interval=0.2)

    def kill(self, pod: str) -> None:
        """SIGKILL every process of a system pod; the kubelet restarts its container."""
        before = self.restarts(pod)
        pids = self.processes(pod)
        assert pids, f"{pod} has no process to kill"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        eventually(lambda: self.restarts(pod) > before, 60, f"the kubelet to restart {pod}", interval=0.1)

    def kill_node_agents(self) -> None:
        for node in (1, 2):
            self.kill(f"node-agent-node{node}")
        for node in (1, 2):
            eventually(lambda n=node: self.ready(f"node-agent-node{n}"), 120,
                       f"node-agent-node{node} to be ready again", interval=0.2)

    # -- what the tests read -------------------------------------------------------------

    def app_peers(self) -> list[str]:
        """The addresses the server app accepted connections from, in order; not the kubelet's readiness
        probes, which reach the app around the mesh by design (SNATed to PROBE_SOURCE on the node)."""
        return [line.split()[1] for line in self.logs("server", NAMESPACE).splitlines()
                if line.startswith("accepted ") and line.split()[1] != PROBE_SOURCE]

    def ztunnel_records(self, node: int) -> list[dict]:
        """The access-log records of every ztunnel that ran on the node (rolled-out ones too)."""
        return observe.access_log(self.layout, node)

    def once(self, pod: str, namespace: str = NAMESPACE, *options: str, host: str = SERVICE) -> dict:
        """One connection of the digest protocol from a pod; its outcome."""
        result = self.exec(pod, PYTHON, APPS, "once", host, str(PORT), *options, namespace=namespace,
                           check=False, timeout=120)
        lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
        assert lines, f"no outcome from {pod}: {result.stdout}\n{result.stderr}"
        return json.loads(lines[-1])


def prepare(cluster: FaultCluster) -> None:
    cluster.apply(manifests())
    cluster.wait_pods_ready(NAMESPACE, 3, timeout=120)
    eventually(lambda: cluster.once("client")["outcome"] == "ok", 90, "the server to answer through the mesh",
               interval=0.5)


@pytest.fixture(scope="module")
def clusters():
    """Both modes' clusters, brought up (and later down) side by side; down also after a failed up."""
    with running_in_each_mode("fault", kind=FaultCluster, prepare=prepare) as made:
        yield made
