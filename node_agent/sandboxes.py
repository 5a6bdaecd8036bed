"""Pod sandboxes the runtime announced through shoal-cni, merged into what the pod source says. Sans-IO.

The netns path comes from the CNI call, not from a guess: a sandbox announced
by ADD overrides the pod's `status.shoal.netns`, gives it its addresses (both
families, from the CNI result) when the API has none yet, and makes it ready for capture before its containers start
(a Pending pod whose sandbox network is set up is captured then, which is the
point: its init containers and first connections are the mesh's). A pod the
source has not shown yet (its watch lags the kubelet) is taken from the CNI
call alone, its enrollment decided from its Namespace.

A sandbox released by DEL keeps its pod out of the mesh until a new ADD (a new
sandbox) brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from shoal.contracts import enrollment

from node_agent.reconcile import PodInfo


@dataclass(frozen=True)
class Sandbox:
    uid: str
    namespace: str
    name: str
    netns: str
    ip: str | None  # the primary address
    container_id: str = ""
    cgroup: str | None = None  # the pod-level cgroup the kubelet made before the sandbox (discover.pod_cgroup_dir)
    ips: tuple[str, ...] = ()  # every address the CNI result gave, both families, the primary first

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _uid(pod: Mapping) -> str:
    return (pod.get("metadata") or {}).get("uid", "")


def overlay(pods: Mapping[str, dict], sandboxes: Mapping[str, Sandbox], released: Iterable[str],
            node: str) -> dict[str, dict]:
    """The source's pods (key -> Pod), with what the CNI calls said about their sandboxes."""
    released = set(released)
    by_uid = {_uid(pod): key for key, pod in pods.items()}
    out: dict[str, dict] = {}
    for key, pod in pods.items():
        uid = _uid(pod)
        if uid in released and uid not in sandboxes:
            continue
        sandbox = sandboxes.get(uid)
        out[key] = _with_sandbox(pod, sandbox) if sandbox is not None else pod
    for uid, sandbox in sandboxes.items():
        if uid in by_uid:
            continue
        out.setdefault(sandbox.key, _with_sandbox(
            {"metadata": {"uid": uid, "namespace": sandbox.namespace, "name": sandbox.name},
             "spec": {"nodeName": node}}, sandbox))
    return out


def _with_sandbox(pod: dict, sandbox: Sandbox) -> dict:
    status = dict(pod.get("status") or {})
    local = dict(status.get("shoal") or {})
    local["netns"] = sandbox.netns
    if sandbox.cgroup and not local.get("cgroup"):
        local["cgroup"] = sandbox.cgroup
    status["shoal"] = local
    if sandbox.ip and not status.get("podIP"):
        status["podIP"] = sandbox.ip
    if sandbox.ips and not status.get("podIPs"):
        # Kubernetes lists podIP first in podIPs; the CNI's addresses of the other family follow.
        ordered = dict.fromkeys([status["podIP"], *sandbox.ips] if status.get("podIP") else sandbox.ips)
        status["podIPs"] = [{"ip": ip} for ip in ordered]
    if status.get("phase") in (None, "", "Pending"):
        status["phase"] = "Running"  # for capture: the sandbox's network is up; its containers start next
    return {**pod, "status": status}


def enrollment_view(infos: Iterable[PodInfo], namespaces: Mapping[str, Mapping], node: str) -> dict:
    """What shoal-cni reads when the agent cannot answer: the enrolled namespaces, and this node's pods that
    decide for themselves (their own dataplane-mode, or hostNetwork)."""
    enrolled_namespaces = sorted(name for name, ns in namespaces.items() if enrollment(ns, {}).enrolled)
    pods = {}
    for info in infos:
        if info.node != node:
            continue
        by_namespace = info.namespace in enrolled_namespaces
        if info.enrollment.enrolled != by_namespace:
            pods[info.key] = info.enrollment.enrolled
    return {"namespaces": enrolled_namespaces, "pods": dict(sorted(pods.items()))}
