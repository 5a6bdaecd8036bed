"""The mesh's own processes in a local cluster: the plug point for each part.

`shoal local up` runs every component here as a hostNetwork Pod in the
`shoal-system` namespace, pinned to its node, so the local kubelet supervises
it like any other pod (restarts with backoff, logs under `shoal local logs`).
A component is a function from (layout, node, settings) to a Pod manifest, or
None where it does not run on that node.

Each later part appends its component to COMPONENTS, in start order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from shoal.contracts import (CONTROL_PLANE_GRPC_PORT, CONTROL_PLANE_HTTP_PORT, INGRESS_METRICS_PORT,
                             INGRESS_READINESS_PORT, METRICS_PORT, NODE_AGENT_PORT, READINESS_PORT)
from shoal.local import ingress_gateway as ingress
from shoal.local import containerd_down, runtime_containerd, shoal_image
from shoal.local.errors import ClusterError
from shoal.local.layout import BPFFS, Layout, node_ip, node_name
from shoal.observe.targets import scrape_annotations

SYSTEM_NAMESPACE = "shoal-system"


@dataclass(frozen=True)
class Settings:
    nodes: int
    redirect: str  # iptables, ebpf or auto


def shoal_argv(*args: str) -> list[str]:
    """How a component runs the shoal CLI from the same interpreter as `up`."""
    return [sys.executable, "-m", "shoal", "--log-format", "json", *args]


def system_pod(layout: Layout, node: int, name: str, argv: list[str], *,
               ready_port: int | None = None, ready_path: str = "/healthz/ready",
               pod_name: str | None = None, metrics_port: int | None = None) -> dict:
    container = {"name": name, "command": argv}
    if ready_port:
        container["readinessProbe"] = {"httpGet": {"port": ready_port, "path": ready_path}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name or f"{name}-{node_name(node)}",
            "namespace": SYSTEM_NAMESPACE,
            "labels": {"app": name, "shoal.io/component": name},
            # What a Prometheus finds it by (shoal.observe.targets, as Kubernetes SD would).
            "annotations": scrape_annotations(metrics_port) if metrics_port else {},
        },
        "spec": {"nodeName": node_name(node), "hostNetwork": True, "containers": [container]},
    }


def component_of(pod: dict) -> tuple[str, str] | None:
    """(component, node) of a system pod, whatever its name (a rollout names its pods anew)."""
    component = (pod["metadata"].get("labels") or {}).get("shoal.io/component")
    node = pod.get("spec", {}).get("nodeName")
    return (component, node) if component and node else None


def not_replaced(system: list[dict], existing: list[dict]) -> list[dict]:
    """The system pods `up` applies: all but those whose component a rollout replaced on their node
    by a pod of another name (applying the original name again would run a second one)."""
    names = {p["metadata"]["name"] for p in existing if p["metadata"].get("namespace") == SYSTEM_NAMESPACE}
    running = {component_of(p) for p in existing if p["metadata"].get("namespace") == SYSTEM_NAMESPACE}
    return [p for p in system if p["metadata"]["name"] in names or component_of(p) not in running]


Component = Callable[[Layout, int, Settings], "dict | None"]

COMPONENTS: list[Component] = []


def control_plane(layout: Layout, node: int, settings: Settings) -> dict | None:
    """The CA and config server, on node 1; other nodes reach it at 198.18.0.1:15012. With IPv6 in the cluster
    its gRPC listens on [::] (both families): an IPv6-only cluster's waypoint pods reach [fd73:686f:616c::1]:15012."""
    if node != 1:
        return None
    ipv6 = any(":" in r for r in layout.store().service_ranges())
    listen = ("--listen", f"[::]:{CONTROL_PLANE_GRPC_PORT}") if ipv6 else ()
    return system_pod(layout, node, "control-plane",
                      shoal_argv("control-plane", "--source", "local", "--cluster", layout.cluster, *listen),
                      ready_port=CONTROL_PLANE_HTTP_PORT, metrics_port=CONTROL_PLANE_HTTP_PORT)


COMPONENTS.append(control_plane)

# What a part must remove at `shoal local down` beyond what goes with the
# cluster's netns, cgroups and run directory (pinned BPF objects, say).
# Each is called with the Layout after the daemon and the pods have stopped.
CLEANUPS: list[Callable[[Layout], None]] = []


def node_agent(layout: Layout, node: int, settings: Settings) -> dict | None:
    """The node agent, one per node: enrollment, redirection, the hand-off socket to the ztunnel. On
    containerd it also chains shoal-cni into the node's CNI config and asks the node's CRI, and runs as its
    DaemonSet's container of the shoal image (shoal_image.py)."""
    return _on_runtime(layout, node, "node-agent", system_pod(layout, node, "node-agent",
                      shoal_argv("node-agent", "--source", "local", "--cluster", layout.cluster,
                                 "--node", node_name(node), "--redirect", settings.redirect,
                                 "--socket", str(layout.ztunnel_socket(node)),
                                 *runtime_containerd.node_agent_args(layout, node)),
                      ready_port=NODE_AGENT_PORT, metrics_port=NODE_AGENT_PORT))


def _on_runtime(layout: Layout, node: int, component: str, pod: dict) -> dict:
    """On --runtime containerd the node's parts are containers of the shoal image, as their DaemonSets run them."""
    if runtime_containerd.runtime_of(layout) != "containerd":
        return pod
    return shoal_image.as_container(layout, runtime_containerd.NodePaths.of(layout, node), component, pod)


def node_agent_cleanup(layout: Layout) -> None:
    """Removes what each node's agent installed (pinned eBPF objects, rules, probe SNAT)."""
    import subprocess

    from shoal import netns

    nodes = {p.parent.name for p in layout.run_dir.glob("node*/node-agent")}
    nodes |= {p.name[len(layout.cluster) + 1:] for p in layout.bpf_pins()}
    failed = []
    for node in sorted(nodes):
        # An agent still alive (say, restarted and still loading) would pin again behind the cleanup.
        _kill_cgroup(layout.pod_cgroup(SYSTEM_NAMESPACE, f"node-agent-{node}"))
        argv = shoal_argv("node-agent", "--cleanup", "--source", "local", "--cluster", layout.cluster, "--node", node)
        ns = layout.node_netns(int(node[4:])) if node[4:].isdigit() else None
        if ns and netns.exists(ns):
            argv = ["ip", "netns", "exec", ns, *argv]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            failed.append(f"node agent cleanup on {node} failed: {result.stderr.strip()}; its pinned eBPF objects "
                          f"({BPFFS}/shoal/{layout.node_agent_id(node)}) may remain: retry with `shoal node-agent "
                          f"--cleanup --source local --cluster {layout.cluster} --node {node}`")
    if failed:
        raise ClusterError("; ".join(failed))


def _kill_cgroup(cgroup) -> None:
    import time
    if not (cgroup / "cgroup.kill").exists():
        return
    (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 5
    while (cgroup / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)


COMPONENTS.append(node_agent)
CLEANUPS.append(node_agent_cleanup)
CLEANUPS.append(containerd_down.cleanup)  # after the agents: their shoal-cni is in its CNI dirs


# A draining ztunnel lets open connections run this long; the kubelet's grace period is longer, so
# the drain's own deadline, not SIGKILL, ends them. A draining ztunnel with nothing open exits at
# once, so the deadline costs a rollout only what its connections take.
ZTUNNEL_DRAIN_SECONDS = 13
ZTUNNEL_GRACE_SECONDS = 15


REVISION = "shoal.io/revision"     # which rollout made a system pod: 0 for `up`'s, then 1, 2, ...


def ztunnel_pod(layout: Layout, node: int, pod_name: str | None = None, revision: int = 0) -> dict:
    """The ztunnel of a node, as `up` starts it and as `shoal local rollout restart ztunnel` starts the
    next one beside it. Readiness is probed at /healthz/ready/<pod name>: the node port is shared with
    the other ztunnel during a rollout, and only this pod's process answers that path."""
    pod_name = pod_name or f"ztunnel-{node_name(node)}"
    pod = system_pod(layout, node, "ztunnel",
                     shoal_argv("ztunnel", "--cluster", layout.cluster, "--node", node_name(node),
                                "--control-plane", f"{node_ip(1)}:{CONTROL_PLANE_GRPC_PORT}",
                                "--socket", str(layout.ztunnel_socket(node)),
                                "--token-file", str(layout.node_token(node)),
                                "--ca-bundle", str(layout.ca_bundle),
                                "--drain-seconds", str(ZTUNNEL_DRAIN_SECONDS)),
                     ready_port=READINESS_PORT, ready_path=f"/healthz/ready/{pod_name}", pod_name=pod_name,
                     metrics_port=METRICS_PORT)
    pod["spec"]["terminationGracePeriodSeconds"] = ZTUNNEL_GRACE_SECONDS
    pod["metadata"]["annotations"][REVISION] = str(revision)
    return _on_runtime(layout, node, "ztunnel", pod)


def ztunnel(layout: Layout, node: int, settings: Settings) -> dict | None:
    """The ztunnel, one per node: HBONE/mTLS, L4 policy, TCP telemetry (admin 15000, metrics 15020)."""
    return ztunnel_pod(layout, node)


COMPONENTS.append(ztunnel)


def ingress_gateway(layout: Layout, node: int, settings: Settings) -> dict | None:
    """The ingress gateway on node 1 (shoal.local.ingress_gateway): the pod Istio Gateways select."""
    if node != ingress.NODE:
        return None
    pod = system_pod(layout, node, "ingress-gateway", shoal_argv(*ingress.argv(layout, SYSTEM_NAMESPACE)),
                     ready_port=INGRESS_READINESS_PORT, metrics_port=INGRESS_METRICS_PORT,
                     pod_name=f"{ingress.NAME}-{node_name(node)}")
    return ingress.as_selected(pod)


COMPONENTS.append(ingress_gateway)


def system_services() -> list[dict]:
    """The Services of system components, which `up` creates once, as it does the namespaces."""
    return [ingress.service(SYSTEM_NAMESPACE)]


def system_pods(layout: Layout, settings: Settings) -> list[dict]:
    pods = []
    for component in COMPONENTS:
        for node in range(1, settings.nodes + 1):
            pod = component(layout, node, settings)
            if pod is not None:
                pods.append(pod)
    return pods


__all__ = ["CLEANUPS", "COMPONENTS", "Settings", "SYSTEM_NAMESPACE", "component_of", "not_replaced", "shoal_argv",
           "system_pod", "system_pods", "node_ip", "ztunnel_pod"]
