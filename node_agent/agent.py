"""The node agent: watch the node's pods, hand them to the ztunnel, redirect their traffic.

State (one store, this class; invariants):
- `want`: uid -> PodTarget of every pod of the node that should be meshed,
  recomputed from the source's objects on every change.
- `acked`: uids the connected ztunnel acked an AddWorkload for; `in_flight`:
  uids sent and not yet acked. Both are emptied when the ztunnel leaves, and
  `in_flight` is refilled with the whole set when it says Hello (the replay).
- what is redirected lives in the Redirection's ledger (on disk), so that it
  survives a restart; the kernel is asked, not trusted, at start.
- `netns_fds`: one open fd per wanted pod, for AddWorkload.
A pod is enrolled when it is in want, acked and redirected.
- `sandboxes`: uid -> Sandbox the runtime announced through shoal-cni (ADD),
  merged into the source's pods (sandboxes.overlay); `released`: uids whose
  sandbox DEL took away, kept out until a new ADD.

With CNI (config.cni), the CNI socket opens with the hand-off socket, once the
first list is reconciled: before that, the plugin finds no agent and makes the
pods that would be enrolled wait. cni_enroll.py answers shoal-cni with this
state: ADD once the pod is enrolled (the ztunnel acked it and capture is in
place), or with the reason it is not.

Nothing is decided before the source's first full list: an empty `want` at
start would otherwise remove every redirection. On SIGTERM the agent stops
without touching redirection (traffic must not escape the mesh while it
restarts); `cleanup()` (`shoal node-agent --cleanup`) removes it all.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shoal import log
from shoal.contracts import NODE_AGENT_PORT
from shoal.handoff import Acked, Workload, ZtunnelGreeted
from shoal.handoff_io import HandoffServer

from node_agent import cni_install, reconcile, sandboxes
from node_agent.cni_enroll import CniEnrollment
from node_agent.cni_server import CniServer
from node_agent.errors import NodeAgentError
from node_agent.metrics import Metrics, serve
from node_agent.model import PodTarget
from node_agent.redirect import Redirection

logger = log.get("node_agent")

RESYNC_SECONDS = 10.0
CNI_WAIT_SECONDS = 60.0  # how long an ADD or DEL waits for the pod's capture to be in place (or gone)
# Pods installed side by side in iptables mode (their legacy -restore commits still take turns on the xtables lock).
INSTALL_WORKERS = 4


@dataclass(frozen=True)
class AgentConfig:
    node: str
    socket: Path
    metrics_host: str = "0.0.0.0"
    metrics_port: int = NODE_AGENT_PORT
    resync_seconds: float = RESYNC_SECONDS
    dns_capture: bool = False  # the mesh option: capture DNS of pods whose namespace and pod say nothing
    cni: cni_install.CniSettings | None = None  # shoal-cni installed and served, or not
    cni_wait_seconds: float = CNI_WAIT_SECONDS
    kubelet_cgroup_root: str = "/"  # the kubelet's cgroupRoot: its kubepods tree is below it


class NodeAgent:
    def __init__(self, config: AgentConfig, redirection: Redirection, source, clock=time.monotonic) -> None:
        self.config = config
        self.redirection = redirection
        self.source = source
        self.clock = clock
        self.metrics = Metrics(redirection.mode)
        self.want: dict[str, PodTarget] = {}
        self.acked: set[str] = set()
        self.in_flight: set[str] = set()
        self.told: dict[str, PodTarget] = {}  # uid -> the pod as last sent to the ztunnel
        self.netns_fds: dict[str, int] = {}
        self.seen_at: dict[str, float] = {}
        self.synced = False
        self.server = HandoffServer(config.socket, self._snapshot, self._on_handoff)
        self.changed = asyncio.Event()
        self.first_sync = asyncio.Event()
        self.reported: dict[str, str] = {}  # uid -> the problem already logged for it
        self.reasons: dict[str, str] = {}  # uid -> why a wanted pod is enrolled (for the log)
        self.pods: dict[str, dict] = {}  # the source's, as last given
        self.namespaces: dict[str, dict] = {}
        self.sandboxes: dict[str, sandboxes.Sandbox] = {}
        self.released: set[str] = set()
        self.reports: set[asyncio.Task] = set()  # Events being written
        self.last_error: dict[str, str] = {}  # uid -> the last failed step for it (for CNI replies)
        self.cni = CniEnrollment(self) if config.cni else None
        self.cni_server = CniServer(config.cni.socket, self.cni.handle) if config.cni else None

    # -- running ------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        http = await serve(self.metrics, self.config.metrics_host, self.config.metrics_port) \
            if self.config.metrics_port else None
        tasks = [asyncio.create_task(self.source.run(self._on_source), name="source"),
                 asyncio.create_task(self._resync(), name="resync"),
                 asyncio.create_task(self._reconciler(), name="reconciler")]
        stop = asyncio.create_task(stopping.wait())
        try:
            # The hand-off opens only once the first list is reconciled: a ztunnel
            # greeted before that would get an empty replay and drop every pod.
            first = asyncio.create_task(self.first_sync.wait())
            done, _ = await asyncio.wait([stop, first, *tasks], return_when=asyncio.FIRST_COMPLETED)
            first.cancel()
            if first in done:
                await self.server.start()
                if self.cni_server:
                    await self.cni_server.start()
                    self.cni.ensure()
                self.metrics.ready = True
                done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception():
                    raise task.exception()
        finally:
            for task in [stop, *tasks]:
                task.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
            await self.server.close()
            if self.cni_server:
                await self.cni_server.close()
            if http:
                http.close()
                await http.wait_closed()
            for fd in self.netns_fds.values():
                os.close(fd)
            self.netns_fds.clear()
            logger.info("stopped; redirection left in place", pods=len(self.redirection.recorded()))

    async def _on_source(self, pods: dict[str, dict], namespaces: dict[str, dict]) -> None:
        self.pods, self.namespaces = pods, namespaces
        uids = {(pod.get("metadata") or {}).get("uid") for pod in pods.values()}
        self.released &= uids
        self._recompute()
        if not self.synced:
            self.synced = True
            self._repair_at_start()
            self.reconcile()
            self.first_sync.set()
            logger.info("first list reconciled", wanted=len(self.want), redirected=len(self.redirection.recorded()))
        self.changed.set()

    def _recompute(self) -> None:
        """`want` from the source's pods and the CNI's sandboxes (a sandbox whose netns is gone is forgotten)."""
        for uid, sandbox in list(self.sandboxes.items()):
            if not os.path.exists(sandbox.netns):
                del self.sandboxes[uid]
        pods = sandboxes.overlay(self.pods, self.sandboxes, self.released, self.config.node)
        infos = reconcile.pod_infos(pods.values(), self.namespaces, self.config.dns_capture)
        want = reconcile.desired(infos, self.config.node)
        problems = reconcile.problems(infos, self.config.node)
        self.reasons = {info.uid: info.enrollment.reason for info in infos if info.uid in want}
        by_uid = {info.uid: info for info in infos}
        for uid, why in problems.items():
            if self.reported.get(uid) != why:
                self.metrics.reconcile_errors.labels(step="invalid-pod").inc()
                logger.warning("pod cannot be meshed", uid=uid, reason=why)
                self._report(by_uid[uid], why)
        self.reported = problems
        self.metrics.unmeshable.set(len(problems))
        now = self.clock()
        for uid in want:
            self.seen_at.setdefault(uid, now)
        for uid in set(self.seen_at) - set(want):
            del self.seen_at[uid]
        self.want = want
        if self.cni:
            self.cni.write_view(sandboxes.enrollment_view(infos, self.namespaces, self.config.node))

    def _report(self, pod: reconcile.PodInfo, why: str) -> None:
        """A Warning Event about the pod, where the source can write one (written in the background)."""
        report = getattr(self.source, "report", None)
        if report is None:
            return
        task = asyncio.get_running_loop().create_task(report(pod.namespace, pod.name, pod.uid, why))
        self.reports.add(task)
        task.add_done_callback(self.reports.discard)

    def _repair_at_start(self) -> None:
        """Pods redirected before a restart and still wanted: make sure the kernel has all of it."""
        for uid, pod in self.redirection.recorded().items():
            if uid in self.want and self.want[uid] == pod:
                self.seen_at.pop(uid, None)  # enrolled before; not a new enrollment to time
                try:
                    if not self.redirection.installed(pod):
                        logger.info("redirection incomplete after restart; installing again", pod=pod.key)
                        self.redirection.install(pod)
                except (NodeAgentError, OSError) as e:
                    self._error("repair", pod, e)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            if self.cni_server and self.metrics.ready:
                self.cni.ensure()  # a CNI that rewrote its conflist is chained again
            self.changed.set()

    async def _reconciler(self) -> None:
        """One reconcile per burst of changes: events that arrive meanwhile are batched."""
        while True:
            await self.changed.wait()
            await asyncio.sleep(0)  # let the hand-off send what is queued, and more events arrive
            self.changed.clear()
            self.reconcile()

    # -- deciding and doing ---------------------------------------------------------

    def reconcile(self) -> None:
        if not self.synced:
            return
        plan = reconcile.plan(self.want, self.redirection.recorded(), self.acked, self.in_flight,
                              self.server.connected, self.told)
        for pod in plan.remove:
            try:
                self.redirection.remove(pod, sync_probes=False)
                logger.info("pod left the mesh", pod=pod.key)
            except (NodeAgentError, OSError) as e:
                self._error("remove", pod, e)
        for uid in plan.untell_ztunnel:
            self.server.delete(uid)
            self.acked.discard(uid)
            self.told.pop(uid, None)
        for uid in set(self.netns_fds) - set(self.want):
            os.close(self.netns_fds.pop(uid))
        for pod in plan.tell_ztunnel:
            fd = self._netns_fd(pod)
            if fd is None:
                continue
            if self.server.add(_workload(pod), fd):
                self.in_flight.add(pod.uid)
                self.told[pod.uid] = pod
        installed = self._install_all(plan.install)
        if plan.remove or plan.install or self.redirection.probes_stale():
            try:
                self.redirection.sync_probes()
            except (NodeAgentError, OSError) as e:
                self.metrics.reconcile_errors.labels(step="probe-snat").inc()
                logger.warning("probe SNAT update failed; will retry", error=str(e))
        for pod in installed:
            seen = self.seen_at.pop(pod.uid, None)
            if seen is not None:
                self.metrics.enroll_seconds.observe(self.clock() - seen)
            logger.info("pod enrolled", pod=pod.key, mode=self.redirection.mode, reason=self.reasons.get(pod.uid))
        self._update_gauges()

    def _install_all(self, pods: tuple[PodTarget, ...]) -> list[PodTarget]:
        """The pods installed, those that could be. In iptables mode side by side: a pod's install waits
        mostly on its -save/-restore processes and the kernel, not on this process (bench.enroll)."""
        if len(pods) < 2 or self.redirection.mode != "iptables":
            return [pod for pod in pods if self._install(pod)]
        with ThreadPoolExecutor(min(INSTALL_WORKERS, len(pods)), thread_name_prefix="install") as pool:
            done = list(pool.map(self._install, pods))
        return [pod for pod, ok in zip(pods, done) if ok]

    def _install(self, pod: PodTarget) -> bool:
        try:
            self.redirection.install(pod, sync_probes=False)
            return True
        except (NodeAgentError, OSError) as e:
            self._error("install", pod, e)
            return False

    def _netns_fd(self, pod: PodTarget) -> int | None:
        fd = self.netns_fds.get(pod.uid)
        if fd is not None and os.fstat(fd).st_ino != _inode(pod.netns):
            os.close(fd)  # a new sandbox
            fd = None
        if fd is None:
            try:
                fd = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                self._error("open-netns", pod, e)
                return None
            self.netns_fds[pod.uid] = fd
        return fd

    def _error(self, step: str, pod: PodTarget, error: Exception) -> None:
        self.metrics.reconcile_errors.labels(step=step).inc()
        self.last_error[pod.uid] = f"{step} failed: {error}"
        logger.warning("reconcile step failed; will retry", step=step, pod=pod.key, error=str(error))

    def _update_gauges(self) -> None:
        recorded = self.redirection.recorded()
        enrolled = [uid for uid in self.want if uid in self.acked and uid in recorded]
        self.metrics.enrolled.set(len(enrolled))
        self.metrics.pending.set(len(self.want) - len(enrolled))
        self.metrics.ztunnel_connected.set(1 if self.server.connected else 0)

    def enrolled(self) -> set[str]:
        recorded = self.redirection.recorded()
        return {uid for uid in self.want if uid in self.acked and uid in recorded}

    # -- the hand-off -------------------------------------------------------------

    def _snapshot(self):
        """The replay at a ztunnel's Hello: every wanted pod (Keep when its netns cannot be opened)."""
        self.acked.clear()
        self.told.clear()
        self.in_flight.clear()
        if not self.synced:
            return []
        items = []
        for uid, pod in sorted(self.want.items()):
            fd = self._netns_fd(pod)
            items.append((_workload(pod), fd))
            if fd is not None:
                self.in_flight.add(uid)
                self.told[uid] = pod
        return items

    async def _on_handoff(self, event, server: HandoffServer) -> None:
        if event is None:
            logger.info("ztunnel gone; redirection stays, new pods wait for it")
            self.acked.clear()
            self.told.clear()
            self.in_flight.clear()
        elif isinstance(event, ZtunnelGreeted):
            if server.peer_pid:
                self._attach_ztunnel(server.peer_pid)
        elif isinstance(event, Acked) and event.kind == "add":
            self.in_flight.discard(event.uid)
            pod = self.want.get(event.uid)
            try:
                if event.error:
                    self.acked.discard(event.uid)  # a pod sent again (new addresses) and refused: retried
                    self.metrics.reconcile_errors.labels(step="ztunnel-add").inc()
                    self.last_error[event.uid] = f"the ztunnel refused the pod: {event.error}"
                    logger.warning("ztunnel refused a workload; will retry", uid=event.uid, error=event.error)
                elif pod is not None:
                    self.acked.add(event.uid)
                    for fd in event.fds:
                        try:
                            self.redirection.set_inbound_listener(pod, fd)
                        except (NodeAgentError, OSError) as e:
                            self._error("inbound-listener", pod, e)
            finally:
                for fd in event.fds:
                    os.close(fd)
        self.changed.set()

    def _attach_ztunnel(self, pid: int) -> None:
        if self.redirection.mode != "ebpf":
            return
        from node_agent.ebpf import cgroup_of_pid
        try:
            cgroup = cgroup_of_pid(pid)
            self.redirection.attach_ztunnel(cgroup)
            logger.info("ztunnel cgroup gets the SO_ORIGINAL_DST programs", cgroup=str(cgroup))
        except (NodeAgentError, OSError) as e:
            self.metrics.reconcile_errors.labels(step="ztunnel-cgroup").inc()
            logger.warning("cannot attach to the ztunnel's cgroup; outbound original destinations "
                           "will be unknown to it", pid=pid, error=str(e))


def _workload(pod: PodTarget) -> Workload:
    return Workload(pod.uid, pod.name, pod.namespace, pod.service_account)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
