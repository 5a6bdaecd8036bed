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
pods that would be enrolled wait. ADD is answered once the pod is enrolled
(the ztunnel acked it and capture is in place), or with the reason it is not.

Nothing is decided before the source's first full list: an empty `want` at
start would otherwise remove every redirection. On SIGTERM the agent stops
without touching redirection (traffic must not escape the mesh while it
restarts); `cleanup()` (`shoal node-agent --cleanup`) removes it all.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from shoal import log
from shoal.contracts import NODE_AGENT_PORT
from shoal.handoff import Acked, Workload, ZtunnelGreeted
from shoal.handoff_io import HandoffServer

from node_agent import cni_install, reconcile, sandboxes
from node_agent.cni_server import CniReply, CniRequest, CniServer
from node_agent.discover import pod_cgroup_dir
from node_agent.errors import NodeAgentError
from node_agent.metrics import Metrics, serve
from node_agent.model import PodTarget
from node_agent.redirect import Redirection

logger = log.get("node_agent")

RESYNC_SECONDS = 10.0
CNI_WAIT_SECONDS = 60.0  # how long an ADD or DEL waits for the pod's capture to be in place (or gone)
POD_WAIT_SECONDS = 10.0  # how long an ADD without K8S_POD_UID waits for the pod to appear in the source


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
        self.last_error: dict[str, str] = {}  # uid -> the last failed step for it (for CNI replies)
        self.enrollment_view: dict | None = None
        self.cni_server = CniServer(config.cni.socket, self._on_cni) if config.cni else None

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
                    self._ensure_cni()
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
        for uid, why in problems.items():
            if self.reported.get(uid) != why:
                self.metrics.reconcile_errors.labels(step="invalid-pod").inc()
                logger.warning("pod cannot be meshed", uid=uid, reason=why)
        self.reported = problems
        self.metrics.unmeshable.set(len(problems))
        now = self.clock()
        for uid in want:
            self.seen_at.setdefault(uid, now)
        for uid in set(self.seen_at) - set(want):
            del self.seen_at[uid]
        self.want = want
        if self.config.cni:
            self._write_enrollment_view(sandboxes.enrollment_view(infos, self.namespaces, self.config.node))

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
                self._ensure_cni()  # a CNI that rewrote its conflist is chained again
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
                              self.server.connected)
        for pod in plan.remove:
            try:
                self.redirection.remove(pod, sync_probes=False)
                logger.info("pod left the mesh", pod=pod.key)
            except (NodeAgentError, OSError) as e:
                self._error("remove", pod, e)
        for uid in plan.untell_ztunnel:
            self.server.delete(uid)
            self.acked.discard(uid)
        for uid in set(self.netns_fds) - set(self.want):
            os.close(self.netns_fds.pop(uid))
        for pod in plan.tell_ztunnel:
            fd = self._netns_fd(pod)
            if fd is None:
                continue
            if self.server.add(_workload(pod), fd):
                self.in_flight.add(pod.uid)
        installed = [pod for pod in plan.install if self._install(pod)]
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

    # -- shoal-cni -------------------------------------------------------------------

    def _ensure_cni(self) -> None:
        try:
            conflist = cni_install.ensure(self.config.cni)
            logger.debug("shoal-cni chained", conflist=str(conflist))
        except (NodeAgentError, OSError) as e:
            self.metrics.reconcile_errors.labels(step="cni-install").inc()
            logger.warning("cannot install shoal-cni; new pods are captured only once seen running",
                           error=str(e))

    def _write_enrollment_view(self, view: dict) -> None:
        """The file shoal-cni reads when the agent does not answer (written only when it changes)."""
        if view == self.enrollment_view:
            return
        path = self.config.cni.enrollment_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(view))
            os.replace(tmp, path)
            self.enrollment_view = view
        except OSError as e:
            self.metrics.reconcile_errors.labels(step="cni-enrollment-file").inc()
            logger.warning("cannot write the enrollment file shoal-cni reads", path=str(path), error=str(e))

    def _uid_for(self, request: CniRequest) -> str | None:
        if request.uid:
            return request.uid
        for pod in self.pods.values():
            meta = pod.get("metadata") or {}
            if meta.get("namespace") == request.namespace and meta.get("name") == request.name:
                return meta.get("uid")
        for uid, sandbox in self.sandboxes.items():
            if sandbox.key == request.key:
                return uid
        return None

    async def _on_cni(self, request: CniRequest) -> CniReply:
        handler = {"ADD": self._cni_add, "DEL": self._cni_del, "CHECK": self._cni_check}[request.command]
        reply = await handler(request)
        if not reply.ok:
            self.metrics.reconcile_errors.labels(step=f"cni-{request.command.lower()}").inc()
            logger.warning("shoal-cni call failed", command=request.command, pod=request.key, error=reply.error)
        return reply

    async def _cni_add(self, request: CniRequest) -> CniReply:
        uid = self._uid_for(request)
        deadline = self.clock() + POD_WAIT_SECONDS
        while uid is None and self.clock() < deadline:
            await asyncio.sleep(0.1)  # the watch has not brought the pod yet
            uid = self._uid_for(request)
        if uid is None:
            return CniReply(False, error=f"pod {request.key} is not known to the API server yet, and CNI_ARGS has "
                                         f"no K8S_POD_UID; the kubelet will retry")
        self.sandboxes[uid] = sandboxes.Sandbox(uid, request.namespace, request.name, request.netns,
                                                request.ipv4, request.container_id, pod_cgroup_dir(uid))
        self.released.discard(uid)
        self.last_error.pop(uid, None)
        self._recompute()
        if uid not in self.want:
            if uid in self.reported:
                return CniReply(False, enrolled=True, error=f"pod {request.key} cannot be meshed: {self.reported[uid]}")
            return CniReply(True, enrolled=False)
        logger.info("pod sandbox announced by shoal-cni", pod=request.key, netns=request.netns, ip=request.ipv4)
        self.changed.set()
        # The eBPF mode attaches to the pod's cgroup, which the runtime makes only after ADD:
        # there ADD waits for the hand-off alone, and capture follows once the cgroup is found.
        cgroup_first = self.redirection.mode == "ebpf" and not self.want[uid].cgroup
        if await self._until(lambda: uid in self.acked and (cgroup_first or self._captured(uid))):
            if cgroup_first:
                logger.warning("eBPF mode: pod handed to the ztunnel at ADD; its capture starts once its cgroup "
                               "exists", pod=request.key)
            return CniReply(True, enrolled=True)
        return CniReply(False, enrolled=True, error=self._why_not_enrolled(uid))

    def _captured(self, uid: str) -> bool:
        """Is the pod's capture in the kernel? If the ledger has it but the kernel does not (an install that
        failed), it is installed again here: an ADD must not return on a capture that is not there."""
        pod = self.want.get(uid)
        if pod is None or uid not in self.redirection.recorded():
            return False
        try:
            if self.redirection.installed(pod):
                return True
        except (NodeAgentError, OSError) as e:
            self._error("check", pod, e)
            return False
        return self._install(pod) and self.redirection.installed(pod)

    async def _cni_del(self, request: CniRequest) -> CniReply:
        uid = self._uid_for(request)
        if uid is None:
            return CniReply(True)
        current = self.sandboxes.get(uid)
        if current is not None and request.container_id and current.container_id != request.container_id:
            return CniReply(True)  # an older sandbox of the pod; the current one stays captured
        self.sandboxes.pop(uid, None)
        self.released.add(uid)
        self._recompute()
        self.changed.set()
        if await self._until(lambda: uid not in self.redirection.recorded() and uid not in self.acked):
            logger.info("pod sandbox released by shoal-cni", pod=request.key)
            return CniReply(True)
        return CniReply(False, error=f"capture of pod {request.key} could not be removed: "
                                     f"{self.last_error.get(uid, 'see the node agent log')}")

    async def _cni_check(self, request: CniRequest) -> CniReply:
        uid = self._uid_for(request)
        pod = self.want.get(uid) if uid else None
        if pod is None:
            return CniReply(True, enrolled=False)
        if pod.netns != request.netns:
            return CniReply(False, enrolled=True, error=f"the agent holds netns {pod.netns} for the pod, not "
                                                        f"{request.netns}")
        try:
            present = uid in self.enrolled() and self.redirection.installed(pod)
        except (NodeAgentError, OSError) as e:
            return CniReply(False, enrolled=True, error=f"capture could not be checked: {e}")
        if not present:
            why = self._why_not_enrolled(uid)
            if uid in self.acked and self._install(pod):  # reported, and put back
                logger.warning("capture of a pod was missing; installed again", pod=pod.key)
            return CniReply(False, enrolled=True, error=f"capture is missing in {pod.netns}: {why}")
        return CniReply(True, enrolled=True)

    async def _until(self, done) -> bool:
        deadline = self.clock() + self.config.cni_wait_seconds
        while not done():
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _why_not_enrolled(self, uid: str) -> str:
        if uid in self.last_error:
            return self.last_error[uid]
        if not self.server.connected:
            return (f"no ztunnel is connected to the hand-off socket {self.config.socket}; check the shoal-ztunnel "
                    f"pod of this node")
        if uid in self.in_flight:
            return "the ztunnel has not acknowledged the pod yet"
        if uid not in self.acked:
            return "the pod was not handed to the ztunnel yet"
        return "its redirection is not (or no longer) in place"

    # -- the hand-off -------------------------------------------------------------

    def _snapshot(self):
        """The replay at a ztunnel's Hello: every wanted pod (Keep when its netns cannot be opened)."""
        self.acked.clear()
        self.in_flight.clear()
        if not self.synced:
            return []
        items = []
        for uid, pod in sorted(self.want.items()):
            fd = self._netns_fd(pod)
            items.append((_workload(pod), fd))
            if fd is not None:
                self.in_flight.add(uid)
        return items

    async def _on_handoff(self, event, server: HandoffServer) -> None:
        if event is None:
            logger.info("ztunnel gone; redirection stays, new pods wait for it")
            self.acked.clear()
            self.in_flight.clear()
        elif isinstance(event, ZtunnelGreeted):
            if server.peer_pid:
                self._attach_ztunnel(server.peer_pid)
        elif isinstance(event, Acked) and event.kind == "add":
            self.in_flight.discard(event.uid)
            pod = self.want.get(event.uid)
            try:
                if event.error:
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
