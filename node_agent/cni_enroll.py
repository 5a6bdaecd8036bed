"""The node agent's answers to shoal-cni (cni_plugin.py), and shoal-cni's place in the node's CNI config.

`CniEnrollment` serves the agent's CNI socket (cni_server.py) with the agent's own state: an
ADD puts the sandbox in the agent's `sandboxes` (merged into its pods by sandboxes.overlay) and
is answered once the ztunnel acked the pod and its capture is in the kernel, or with what is
missing when `cni_wait_seconds` pass; DEL takes the sandbox out and answers once its capture is
removed and the ztunnel told; CHECK says whether the capture is in place (and puts it back). It
also keeps the plugin installed and chained (cni_install.py) and writes the enrollment file the
plugin reads when the agent does not answer.
"""

from __future__ import annotations

import asyncio
import json
import os

from shoal import log

from node_agent import cni_install, sandboxes
from node_agent.cni_server import CniReply, CniRequest
from node_agent.discover import pod_cgroup_dir
from node_agent.errors import NodeAgentError
from node_agent.hostmounts import cgroup2_root

logger = log.get("node_agent")

POD_WAIT_SECONDS = 10.0  # how long an ADD without K8S_POD_UID waits for the pod to appear in the source


class CniEnrollment:
    def __init__(self, agent) -> None:
        self.agent = agent  # a NodeAgent: its state is the one store; this reads and changes it
        self.view: dict | None = None  # the enrollment file's content, as last written

    def ensure(self) -> None:
        try:
            conflist = cni_install.ensure(self.agent.config.cni)
            logger.debug("shoal-cni chained", conflist=str(conflist))
        except (NodeAgentError, OSError) as e:
            self.agent.metrics.reconcile_errors.labels(step="cni-install").inc()
            logger.warning("cannot install shoal-cni; new pods are captured only once seen running",
                           error=str(e))

    def write_view(self, view: dict) -> None:
        """The file shoal-cni reads when the agent does not answer (written only when it changes)."""
        if view == self.view:
            return
        path = self.agent.config.cni.enrollment_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(view))
            os.replace(tmp, path)
            self.view = view
        except OSError as e:
            self.agent.metrics.reconcile_errors.labels(step="cni-enrollment-file").inc()
            logger.warning("cannot write the enrollment file shoal-cni reads", path=str(path), error=str(e))

    def _pod_cgroup(self, uid: str) -> str | None:
        root = cgroup2_root()
        if root is None:
            return None
        return pod_cgroup_dir(uid, root / self.agent.config.kubelet_cgroup_root.strip("/"))

    def _uid_for(self, request: CniRequest) -> str | None:
        if request.uid:
            return request.uid
        for pod in self.agent.pods.values():
            meta = pod.get("metadata") or {}
            if meta.get("namespace") == request.namespace and meta.get("name") == request.name:
                return meta.get("uid")
        for uid, sandbox in self.agent.sandboxes.items():
            if sandbox.key == request.key:
                return uid
        return None

    async def handle(self, request: CniRequest) -> CniReply:
        handler = {"ADD": self._add, "DEL": self._del, "CHECK": self._check}[request.command]
        reply = await handler(request)
        if not reply.ok:
            self.agent.metrics.reconcile_errors.labels(step=f"cni-{request.command.lower()}").inc()
            logger.warning("shoal-cni call failed", command=request.command, pod=request.key, error=reply.error)
        return reply

    async def _add(self, request: CniRequest) -> CniReply:
        uid = self._uid_for(request)
        deadline = self.agent.clock() + POD_WAIT_SECONDS
        while uid is None and self.agent.clock() < deadline:
            await asyncio.sleep(0.1)  # the watch has not brought the pod yet
            uid = self._uid_for(request)
        if uid is None:
            return CniReply(False, error=f"pod {request.key} is not known to the API server yet, and CNI_ARGS has "
                                         f"no K8S_POD_UID; the kubelet will retry")
        addresses = request.addresses
        self.agent.sandboxes[uid] = sandboxes.Sandbox(uid, request.namespace, request.name, request.netns,
                                                      addresses[0] if addresses else None, request.container_id,
                                                      self._pod_cgroup(uid), addresses)
        self.agent.released.discard(uid)
        self.agent.last_error.pop(uid, None)
        self.agent._recompute()
        if uid not in self.agent.want:
            if uid in self.agent.reported:
                why = self.agent.reported[uid]
                return CniReply(False, enrolled=True, error=f"pod {request.key} cannot be meshed: {why}")
            return CniReply(True, enrolled=False)
        logger.info("pod sandbox announced by shoal-cni", pod=request.key, netns=request.netns, ips=list(addresses))
        self.agent.changed.set()
        # The eBPF mode attaches to the pod's cgroup, which the runtime makes only after ADD:
        # there ADD waits for the hand-off alone, and capture follows once the cgroup is found.
        cgroup_first = self.agent.redirection.mode == "ebpf" and not self.agent.want[uid].cgroup
        if await self._until(lambda: uid in self.agent.acked and (cgroup_first or self._captured(uid))):
            if cgroup_first:
                logger.warning("eBPF mode: pod handed to the ztunnel at ADD; its capture starts once its cgroup "
                               "exists", pod=request.key)
            return CniReply(True, enrolled=True)
        return CniReply(False, enrolled=True, error=self.why_not_enrolled(uid))

    def _captured(self, uid: str) -> bool:
        """Is the pod's capture in the kernel? If the ledger has it but the kernel does not (an install that
        failed), it is installed again here: an ADD must not return on a capture that is not there."""
        pod = self.agent.want.get(uid)
        if pod is None or uid not in self.agent.redirection.recorded():
            return False
        try:
            if self.agent.redirection.installed(pod):
                return True
        except (NodeAgentError, OSError) as e:
            self.agent._error("check", pod, e)
            return False
        return self.agent._install(pod) and self.agent.redirection.installed(pod)

    async def _del(self, request: CniRequest) -> CniReply:
        uid = self._uid_for(request)
        if uid is None:
            return CniReply(True)
        current = self.agent.sandboxes.get(uid)
        if current is not None and request.container_id and current.container_id != request.container_id:
            return CniReply(True)  # an older sandbox of the pod; the current one stays captured
        self.agent.sandboxes.pop(uid, None)
        self.agent.released.add(uid)
        self.agent._recompute()
        self.agent.changed.set()
        if await self._until(lambda: uid not in self.agent.redirection.recorded() and uid not in self.agent.acked):
            logger.info("pod sandbox released by shoal-cni", pod=request.key)
            return CniReply(True)
        return CniReply(False, error=f"capture of pod {request.key} could not be removed: "
                                     f"{self.agent.last_error.get(uid, 'see the node agent log')}")

    async def _check(self, request: CniRequest) -> CniReply:
        uid = self._uid_for(request)
        pod = self.agent.want.get(uid) if uid else None
        if pod is None:
            return CniReply(True, enrolled=False)
        if pod.netns != request.netns:
            return CniReply(False, enrolled=True, error=f"the agent holds netns {pod.netns} for the pod, not "
                                                        f"{request.netns}")
        try:
            present = uid in self.agent.enrolled() and self.agent.redirection.installed(pod)
        except (NodeAgentError, OSError) as e:
            return CniReply(False, enrolled=True, error=f"capture could not be checked: {e}")
        if not present:
            why = self.why_not_enrolled(uid)
            if uid in self.agent.acked and self.agent._install(pod):  # reported, and put back
                logger.warning("capture of a pod was missing; installed again", pod=pod.key)
            return CniReply(False, enrolled=True, error=f"capture is missing in {pod.netns}: {why}")
        return CniReply(True, enrolled=True)

    async def _until(self, done) -> bool:
        deadline = self.agent.clock() + self.agent.config.cni_wait_seconds
        while not done():
            if self.agent.clock() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def why_not_enrolled(self, uid: str) -> str:
        if uid in self.agent.last_error:
            return self.agent.last_error[uid]
        if not self.agent.server.connected:
            return (f"no ztunnel is connected to the hand-off socket {self.agent.config.socket}; check the "
                    f"shoal-ztunnel pod of this node")
        if uid in self.agent.in_flight:
            return "the ztunnel has not acknowledged the pod yet"
        if uid not in self.agent.acked:
            return "the pod was not handed to the ztunnel yet"
        return "its redirection is not (or no longer) in place"
