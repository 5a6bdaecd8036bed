"""`shoal local rollout restart ztunnel`: what a DaemonSet rolling update with maxSurge 1 and
maxUnavailable 0 does on Kubernetes, node by node.

On each node: a new ztunnel pod starts beside the old one; it binds the node's
ports and, once its config is whole, takes the node agent's hand-off, and with
it new connections in every pod (`ztunnel.takeover`); when its readiness probe
passes (answered by that pod's own process, at /healthz/ready/<pod name>), the
old pod is deleted. The kubelet sends the old one SIGTERM: it closes its
listeners, sends GOAWAY to its HBONE peers and lets open connections run until
its drain deadline. The rollout then waits for its processes to be gone and
goes on to the next node. A new pod that does not get ready in time leaves the
old one serving, as maxUnavailable 0 promises, and the rollout stops there;
run again, it takes up where it stopped (the newer of the node's two pods is
the one to wait for, the older the one to stop), as a Deployment's rollout
resumes.

Planning is pure (`plan`); `restart` carries a plan out against the store.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable

from shoal.local import components
from shoal.local.errors import LocalClusterError
from shoal.local.kubelet import cgroup_pids
from shoal.local.layout import Layout, node_index, node_name
from shoal.local.services import pod_ready

ROLLABLE = ("ztunnel",)
READY_TIMEOUT = 180.0
GONE_TIMEOUT = 60.0

Progress = Callable[[str], None]


class RolloutError(LocalClusterError):
    """A rollout could not be planned or did not complete; the message says where it stopped."""


@dataclass(frozen=True)
class NodeStep:
    node: int
    old: tuple[str, ...]       # the component's pods on the node now (deleted once the new one is ready)
    new: str                   # the pod started beside them, or the surge pod an earlier rollout left
    revision: int              # the new pod's
    start: bool = True         # False: the new pod exists already (a rollout taken up again)


def component_name(word: str) -> str:
    """`ztunnel`, `daemonset/ztunnel`, `ds/shoal-ztunnel`: kubectl's spellings of the one rollable part."""
    kind, _, name = word.rpartition("/")
    if kind not in ("", "daemonset", "daemonsets", "ds"):
        raise RolloutError(f"cannot roll out a {kind}: only the ztunnel DaemonSet is rolled out here "
                           f"(`shoal local rollout restart ztunnel`)")
    name = name.removeprefix("shoal-")
    if name not in ROLLABLE:
        raise RolloutError(f"{word!r} cannot be rolled out: choose one of {', '.join(ROLLABLE)} (the node agent and "
                           "the control plane restart in place; the kubelet restarts them when they exit)")
    return name


def plan(pods: list[dict], nodes: int, component: str, only: list[int] | None = None,
         suffix: Callable[[], str] = lambda: secrets.token_hex(3)) -> list[NodeStep]:
    """One step per node (all of them, or `only`), in node order; `suffix` names the new pods."""
    wanted = sorted(set(only)) if only else list(range(1, nodes + 1))
    for node in wanted:
        if not 1 <= node <= nodes:
            raise RolloutError(f"node{node} is not a node of this cluster (node1 to node{nodes})")
    steps = []
    for node in wanted:
        running = sorted(((revision(p), p["metadata"]["name"]) for p in pods
                          if components.component_of(p) == (component, node_name(node))
                          and p["metadata"].get("namespace") == components.SYSTEM_NAMESPACE))
        if len(running) > 2:
            raise RolloutError(f"{node_name(node)} runs {len(running)} {component} pods "
                               f"({', '.join(n for _, n in running)}); at most two may (the old one and its "
                               "successor): delete the extra ones first")
        if len(running) == 2:                    # an earlier rollout stopped here: take it up again
            (_, old), (newest, new) = running
            steps.append(NodeStep(node, (old,), new, newest, start=False))
        else:
            last = running[0][0] if running else 0
            steps.append(NodeStep(node, tuple(n for _, n in running), f"{component}-{node_name(node)}-{suffix()}",
                                  last + 1))
    return steps


def revision(pod: dict) -> int:
    try:
        return int((pod["metadata"].get("annotations") or {}).get(components.REVISION, 0))
    except ValueError:
        return 0


def restart(layout: Layout, component: str, only: list[int] | None = None, progress: Progress = print,
            ready_timeout: float = READY_TIMEOUT) -> list[NodeStep]:
    """Rolls `component` out node by node; returns the steps done."""
    store = layout.store()
    if not store.exists():
        raise RolloutError(f"cluster {layout.cluster!r} is not up; run `shoal local up --cluster {layout.cluster}`")
    nodes = len(store.list("Node")[0])
    steps = plan(store.list("Pod")[0], nodes, component, only)
    for step in steps:
        if step.start:
            progress(f"{node_name(step.node)}: starting {step.new} beside {', '.join(step.old) or 'no old pod'}")
            store.apply(components.ztunnel_pod(layout, step.node, step.new, step.revision))
        else:
            progress(f"{node_name(step.node)}: taking up the rollout left there: waiting for {step.new}")
        _wait_ready(layout, step, ready_timeout)
        progress(f"{node_name(step.node)}: {step.new} is ready; stopping {', '.join(step.old) or 'nothing'}")
        if step.old:
            store.delete_many([("Pod", components.SYSTEM_NAMESPACE, name) for name in step.old])
            _wait_gone(layout, step)
        progress(f"{node_name(step.node)}: rolled out")
    return steps


def _wait_ready(layout: Layout, step: NodeStep, timeout: float) -> None:
    store = layout.store()
    deadline = time.monotonic() + timeout
    while True:
        pod = store.get("Pod", components.SYSTEM_NAMESPACE, step.new)
        if pod is not None and pod_ready(pod):
            return
        if time.monotonic() > deadline:
            raise RolloutError(f"{step.new} was not ready after {timeout:.0f}s; {', '.join(step.old) or 'no pod'} "
                               f"still serves {node_name(step.node)}. See `shoal local logs -n "
                               f"{components.SYSTEM_NAMESPACE} {step.new} --cluster {layout.cluster}`")
        time.sleep(0.1)


def _wait_gone(layout: Layout, step: NodeStep) -> None:
    """The old pods' processes have ended (the kubelet waited their drain, then their grace period)."""
    deadline = time.monotonic() + GONE_TIMEOUT
    cgroups = [layout.pod_cgroup(components.SYSTEM_NAMESPACE, name) for name in step.old]
    while any(cgroup_pids(c) for c in cgroups):
        if time.monotonic() > deadline:
            raise RolloutError(f"{', '.join(step.old)} still had processes {GONE_TIMEOUT:.0f}s after deletion")
        time.sleep(0.1)


def parse_nodes(words: list[str] | None) -> list[int] | None:
    if not words:
        return None
    try:
        return [node_index(w) for w in words]
    except ValueError as e:
        raise RolloutError(str(e)) from None
