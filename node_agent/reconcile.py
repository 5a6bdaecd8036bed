"""Which pods of this node belong in the mesh, and what to do about it. Sans-IO.

Kubernetes objects become `PodInfo` at the edge (`pod_info`, `pod_infos`),
each with its enrollment decided there; `plan()` is a pure function from what
is observed and what is in place to a `Plan`, which the agent carries out.

Enrollment is `shoal.contracts.enrollment(namespace, pod)`, the one decision
the control plane also makes when it publishes a pod as HBONE (its docstring
gives the precedence: hostNetwork never, then the pod's own dataplane-mode,
then its Namespace's; shoal's and Istio's keys, labels and annotations
alike). A terminating pod leaves the mesh whatever it says. A pod is acted on
once it runs and the kubelet reported its IP and netns.

The order for a pod joining: the ztunnel is told first (AddWorkload) and the
redirection goes in once it acked, so traffic is never sent to a ztunnel that
does not serve the pod. Leaving: redirection out first, then DelWorkload. A
pod in a new sandbox: its redirection in the new netns, DelWorkload and
AddWorkload again (the new netns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from shoal.contracts import Enrollment, dns_capture, enrollment

from node_agent.model import PodTarget, canonical_addresses


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    phase: str
    ip: str | None  # status.podIP, the primary address
    netns: str | None
    cgroup: str | None
    service_account: str
    terminating: bool
    enrollment: Enrollment  # from the pod and its Namespace, by the contract
    dns_capture: bool = False  # from the pod, its Namespace and the mesh option, by the contract
    ips: tuple[str, ...] = ()  # status.podIPs, every family's address, the primary first

    def target(self) -> PodTarget:
        return PodTarget(self.uid, self.namespace, self.name, self.ip, self.netns, self.cgroup, self.service_account,
                         self.dns_capture, self.ips)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_info(pod: Mapping, namespace: Mapping | None, dns_default: bool = False) -> PodInfo:
    """A Kubernetes-shaped Pod (local store or API server), with its Namespace, as the agent sees it."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    local = status.get("shoal") or {}
    ips = _pod_ips(status)
    return PodInfo(
        uid=meta.get("uid", ""),
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        node=spec.get("nodeName", ""),
        phase=status.get("phase", ""),
        ip=ips[0] if ips else None,
        netns=local.get("netns") or None,
        cgroup=local.get("cgroup") or None,
        service_account=spec.get("serviceAccountName") or spec.get("serviceAccount") or "default",
        terminating=bool(meta.get("deletionTimestamp")),
        enrollment=enrollment(namespace, pod),
        dns_capture=dns_capture(namespace, pod, dns_default),
        ips=ips,
    )


def _pod_ips(status: Mapping) -> tuple[str, ...]:
    """status.podIP, then every status.podIPs[].ip (Kubernetes lists the primary first in both), as given:
    `problem` judges them."""
    ips = [status.get("podIP") or ""]
    for entry in status.get("podIPs") or []:
        ips.append(entry.get("ip", "") if isinstance(entry, Mapping) else str(entry))
    return tuple(dict.fromkeys(str(ip).strip() for ip in ips if ip and str(ip).strip()))


def pod_infos(pods: Iterable[Mapping], namespaces: Mapping[str, Mapping],
              dns_default: bool = False) -> list[PodInfo]:
    """Every pod with its Namespace (by name; a pod whose Namespace is unknown has only its own say)."""
    return [pod_info(pod, namespaces.get((pod.get("metadata") or {}).get("namespace", "default")), dns_default)
            for pod in pods]


def wants_mesh(pod: PodInfo) -> bool:
    return pod.enrollment.enrolled and not pod.terminating


def ready(pod: PodInfo) -> bool:
    return pod.phase == "Running" and bool(pod.ip and pod.netns and pod.uid) and problem(pod) is None


def problem(pod: PodInfo) -> str | None:
    """What makes a running pod impossible to mesh, in words; None when nothing does."""
    if pod.ips:
        try:
            canonical_addresses(pod.ips)
        except ValueError as e:
            return f"status.podIP or podIPs: {e}; check the addresses the CNI's IPAM gave the pod"
    if pod.netns and not pod.netns.startswith("/"):
        return f"status.shoal.netns {pod.netns!r} is not an absolute path"
    return None


def desired(pods: Iterable[PodInfo], node: str) -> dict[str, PodTarget]:
    """uid -> target of every pod on `node` that should be meshed and can be."""
    return {pod.uid: pod.target() for pod in pods if pod.node == node and ready(pod) and wants_mesh(pod)}


NO_SANDBOX = ("its sandbox was not found (no shoal-cni call for it, no sandbox in the container runtime, no "
              "process of the pod in /proc), so it runs outside the mesh; check that shoal-cni is chained into the "
              "node's CNI config and that the node agent sees the host's /proc, /sys/fs/cgroup and runtime socket")


def problems(pods: Iterable[PodInfo], node: str) -> dict[str, str]:
    """uid -> why, for the running pods that should be meshed but cannot be (the agent reports these)."""
    out = {}
    for pod in pods:
        if pod.node != node or pod.phase != "Running" or not wants_mesh(pod):
            continue
        why = problem(pod) or (None if pod.netns else NO_SANDBOX)
        if why is not None:
            out[pod.uid] = why
    return out


@dataclass(frozen=True)
class Plan:
    tell_ztunnel: tuple[PodTarget, ...] = ()  # AddWorkload, then install on ack
    install: tuple[PodTarget, ...] = ()  # acked but not (or no longer) redirected
    remove: tuple[PodTarget, ...] = ()  # redirected but no longer wanted
    untell_ztunnel: tuple[str, ...] = ()  # DelWorkload

    def __bool__(self) -> bool:
        return bool(self.tell_ztunnel or self.install or self.remove or self.untell_ztunnel)


def plan(want: Mapping[str, PodTarget], installed: Mapping[str, PodTarget], acked: Iterable[str],
         in_flight: Iterable[str], ztunnel_connected: bool, told: Mapping[str, PodTarget] | None = None) -> Plan:
    """What to do next, from what is wanted, installed, acked and awaiting an ack, and each pod as the
    ztunnel was last told of it (`told`)."""
    acked, in_flight, told = set(acked), set(in_flight), told or {}
    # An acked pod in a new sandbox (netns) since it was told: the ztunnel's listeners are in the old netns,
    # and a pod it holds is kept as it is when told again. It is told to let go, then told anew. Its
    # redirection goes in the new netns at once, as before: its traffic is refused until the ztunnel serves
    # it there, rather than flowing around the mesh.
    moved = {uid for uid in want if ztunnel_connected and uid in acked and uid not in in_flight and uid in told
             and told[uid].netns != want[uid].netns}
    # An acked pod whose addresses changed is told again: the ztunnel reads the pod's addresses (which
    # it serves inbound, and the return path's families) when it is told, and would not know the new one.
    tell = tuple(want[uid] for uid in sorted(want)
                 if ztunnel_connected and uid not in in_flight
                 and (uid not in acked or uid in moved or (uid in told and told[uid].ips != want[uid].ips)))
    # A pod whose target changed (its addresses, a new netns) is installed again.
    install = tuple(want[uid] for uid in sorted(want)
                    if uid in acked and (uid not in installed or installed[uid] != want[uid]))
    remove = tuple(installed[uid] for uid in sorted(installed) if uid not in want)
    untell = tuple(uid for uid in sorted(acked) if uid not in want or uid in moved) if ztunnel_connected else ()
    return Plan(tell, install, remove, untell)
