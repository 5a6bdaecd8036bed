"""Which pods of this node belong in the mesh, and what to do about it. Sans-IO.

Kubernetes objects become `PodInfo` / namespace flags at the edge
(`pod_info`, `namespace_enrolled`); `plan()` is a pure function from what is
observed and what is in place to a `Plan`, which the agent carries out.

Enrollment (DESIGN.md): a Namespace with `shoal.io/dataplane-mode: ambient`
(annotation or label) or the label `istio.io/dataplane-mode: ambient` enrolls
its pods; a Pod with `shoal.io/dataplane-mode: none` (annotation or label) or
`istio.io/dataplane-mode: none` opts out; hostNetwork pods are never enrolled.
A pod is acted on once it runs and the kubelet reported its IP and netns.

The order for a pod joining: the ztunnel is told first (AddWorkload) and the
redirection goes in once it acked, so traffic is never sent to a ztunnel that
does not serve the pod. Leaving: redirection out first, then DelWorkload.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from node_agent.model import PodTarget

MODE_KEYS = ("shoal.io/dataplane-mode", "istio.io/dataplane-mode")
AMBIENT, NONE = "ambient", "none"


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    host_network: bool
    phase: str
    ip: str | None
    netns: str | None
    cgroup: str | None
    mode: str | None  # the pod's own dataplane-mode, if set
    service_account: str
    terminating: bool

    def target(self) -> PodTarget:
        return PodTarget(self.uid, self.namespace, self.name, self.ip, self.netns, self.cgroup, self.service_account)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _mode(meta: Mapping, *, labels_only_for_istio: bool = True) -> str | None:
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    shoal = annotations.get(MODE_KEYS[0]) or labels.get(MODE_KEYS[0])
    istio = labels.get(MODE_KEYS[1]) if labels_only_for_istio else labels.get(MODE_KEYS[1]) or annotations.get(MODE_KEYS[1])
    return shoal or istio


def namespace_enrolled(namespace: Mapping) -> bool:
    return _mode(namespace.get("metadata") or {}) == AMBIENT


def pod_info(pod: Mapping) -> PodInfo:
    """A Kubernetes-shaped Pod (local store or API server) as the agent sees it."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    local = status.get("shoal") or {}
    return PodInfo(
        uid=meta.get("uid", ""),
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        node=spec.get("nodeName", ""),
        host_network=bool(spec.get("hostNetwork")),
        phase=status.get("phase", ""),
        ip=status.get("podIP") or None,
        netns=local.get("netns") or None,
        cgroup=local.get("cgroup") or None,
        mode=_mode(meta, labels_only_for_istio=False),
        service_account=spec.get("serviceAccountName") or spec.get("serviceAccount") or "default",
        terminating=bool(meta.get("deletionTimestamp")),
    )


def wants_mesh(pod: PodInfo, namespace_in_mesh: bool) -> bool:
    if pod.host_network or pod.terminating or pod.mode == NONE:
        return False
    return namespace_in_mesh or pod.mode == AMBIENT


def ready(pod: PodInfo) -> bool:
    return pod.phase == "Running" and bool(pod.ip and pod.netns and pod.uid) and problem(pod) is None


def problem(pod: PodInfo) -> str | None:
    """What makes a running pod impossible to mesh, in words; None when nothing does."""
    if pod.ip:
        try:
            ipaddress.IPv4Address(pod.ip)
        except ValueError:
            return f"status.podIP {pod.ip!r} is not an IPv4 address; shoal meshes IPv4 pods only"
    if pod.netns and not pod.netns.startswith("/"):
        return f"status.shoal.netns {pod.netns!r} is not an absolute path"
    return None


def desired(pods: Iterable[PodInfo], enrolled_namespaces: set[str], node: str) -> dict[str, PodTarget]:
    """uid -> target of every pod on `node` that should be meshed and can be."""
    out = {}
    for pod in pods:
        if pod.node == node and ready(pod) and wants_mesh(pod, pod.namespace in enrolled_namespaces):
            out[pod.uid] = pod.target()
    return out


def problems(pods: Iterable[PodInfo], enrolled_namespaces: set[str], node: str) -> dict[str, str]:
    """uid -> why, for the pods that should be meshed but cannot be (the agent logs these)."""
    return {pod.uid: why for pod in pods
            if pod.node == node and pod.phase == "Running" and wants_mesh(pod, pod.namespace in enrolled_namespaces)
            and (why := problem(pod)) is not None}


@dataclass(frozen=True)
class Plan:
    tell_ztunnel: tuple[PodTarget, ...] = ()  # AddWorkload, then install on ack
    install: tuple[PodTarget, ...] = ()  # acked but not (or no longer) redirected
    remove: tuple[PodTarget, ...] = ()  # redirected but no longer wanted
    untell_ztunnel: tuple[str, ...] = ()  # DelWorkload

    def __bool__(self) -> bool:
        return bool(self.tell_ztunnel or self.install or self.remove or self.untell_ztunnel)


def plan(want: Mapping[str, PodTarget], installed: Mapping[str, PodTarget], acked: Iterable[str],
         in_flight: Iterable[str], ztunnel_connected: bool) -> Plan:
    """What to do next, from what is wanted, installed, acked and awaiting an ack."""
    acked, in_flight = set(acked), set(in_flight)
    tell = tuple(want[uid] for uid in sorted(want)
                 if ztunnel_connected and uid not in acked and uid not in in_flight)
    # A pod whose target changed (a new netns after a sandbox restart) is installed again.
    install = tuple(want[uid] for uid in sorted(want)
                    if uid in acked and (uid not in installed or installed[uid] != want[uid]))
    remove = tuple(installed[uid] for uid in sorted(installed) if uid not in want)
    untell = tuple(uid for uid in sorted(acked) if uid not in want) if ztunnel_connected else ()
    return Plan(tell, install, remove, untell)
