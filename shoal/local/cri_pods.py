"""The local kubelet's CRI backend: a pod's sandbox and containers made by its node's containerd.

With `--runtime containerd` the kubelet (kubelet.py) hands every pod that is not hostNetwork
to this backend, which does what a kubelet does over CRI:
- makes the pod-level cgroup, then RunPodSandbox (the CRI runs the CNI chain: bridge,
  host-local, then shoal-cni, which holds ADD until the pod is captured). A failed
  sandbox is retried with backoff; meanwhile the pod is Pending, its containers waiting
  in ContainerCreating, and the runtime's message is a FailedCreatePodSandBox event;
- CreateContainer + StartContainer for each container, with the toolbox image when the
  manifest names none, and the pod's hosts and resolv.conf files (the local cluster's
  names) mounted over the CRI's;
- watches ContainerStatus, restarts per restartPolicy with backoff (the next attempt is
  a new container), copies the CRI log into the kubelet's log file (so `logs` reads
  both runtimes alike), probes readiness as the netns runtime does;
- writes status the same way, with `status.shoal.{netns,cgroup}` from the sandbox, and
  `container_pid`, which `shoal local exec` enters.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal import log, netns
from shoal.local import services
from shoal.local import shoal_image
from shoal.local.cri_client import CONTAINER_EXITED, PROPAGATION, ContainerSpec, Cri, CriError
from shoal.local.kubelet import (BACKOFF_MAX, BACKOFF_RESET_AFTER, BACKOFF_START, GRACE_MAX, ContainerState,
                                 _stamp_once, own_env, restart_marker)
from shoal.local.layout import CGROUP_ROOT, Layout, node_index, node_ip
from shoal.local.runtime_containerd import socket_of, toolbox_image
from shoal.store import now_rfc3339

logger = log.get("shoal.local.cri")

REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.3
SANDBOX_BACKOFF_START = 1.0


@dataclass
class CriContainer(ContainerState):
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    container_id: str | None = None
    pid: int | None = None
    copied: int = 0  # bytes of the current attempt's CRI log already copied
    mounts: tuple[tuple, ...] = ()  # (host path, container path, read-only, propagation) beyond DNS's
    privileged: bool = False
    run_as_user: int | None = None
    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    config_error: str | None = None  # why the manifest's container cannot be made (it waits, with an event)

    def status(self) -> dict:
        out = {**super().status(), "image": self.image}
        if self.container_id:
            out["containerID"] = f"containerd://{self.container_id}"
        return out


@dataclass
class CriPod:
    """One pod on containerd, as the kubelet sees it (the fields its status writer, events and probes read)."""
    namespace: str
    name: str
    uid: str
    node: int
    node_netns: str
    cgroup: Path
    restart_policy: str
    grace: float
    cri: "CriPods"
    files: Path  # the pod's hosts and resolv.conf, mounted into each container
    logs: Path   # the sandbox's CRI log directory
    host_network: bool = False
    host_pid: bool = False
    ip: str = ""
    containers: list[CriContainer] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    started_at: str = field(default_factory=now_rfc3339)
    stopping: bool = False
    sandbox_id: str | None = None
    sandbox_config: object = None
    netns_path: str | None = None

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip,) if self.ip else ()

    def phase(self) -> str:
        if self.sandbox_id is None:
            return "Pending"
        if not self.containers:
            return "Running"  # an empty sandbox, to exec into
        if all(c.done for c in self.containers):
            return "Succeeded" if all(c.last_exit == 0 for c in self.containers) else "Failed"
        if any(c.running or c.last_exit is not None for c in self.containers):
            return "Running"
        return "Pending"

    def status(self) -> dict:
        ready = bool(self.containers) and all(c.ready for c in self.containers) and not self.stopping
        out = {"phase": self.phase(), "hostIP": node_ip(self.node), "startTime": self.started_at,
               "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
               "containerStatuses": [c.status() for c in self.containers]}
        if self.ip:
            out.update(podIP=self.ip, podIPs=[{"ip": self.ip}])
        if self.netns_path:
            pid = next((c.pid for c in self.containers if c.running and c.pid), None)
            out["shoal"] = {"netns": self.netns_path, "cgroup": str(self.cgroup), "runtime": "containerd",
                            **({"container_pid": pid} if pid else {})}
        return out

    def write_dns(self, services_list: list[dict]) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        for name, content in (("hosts", services.hosts_file(self.namespace, services_list)),
                              ("resolv.conf", services.resolv_conf(self.namespace))):
            path = self.files / name
            # Rewritten in place, never replaced: the containers see it through a bind mount.
            if not path.exists() or path.read_text() != content:
                with open(path, "w") as f:
                    f.write(content)


def volume_mounts(spec: dict, container: dict) -> tuple[tuple, ...]:
    """The container's volumeMounts of hostPath volumes, as CRI mounts (host path, container path, read-only,
    propagation). Other volume kinds are refused: the local cluster has nothing to fill them from."""
    volumes = {v["name"]: v for v in spec.get("volumes") or ()}
    out = []
    for mount in container.get("volumeMounts") or ():
        volume = volumes.get(mount["name"])
        if volume is None or "hostPath" not in volume:
            raise CriError(f"container {container['name']!r} mounts volume {mount['name']!r}, which is not a "
                           "hostPath volume of the pod; the local cluster's containerd runtime mounts hostPath "
                           "volumes only")
        host = volume["hostPath"]["path"]
        wanted = shoal_image.propagation(host, mount.get("mountPropagation"))
        out.append((host, mount["mountPath"], bool(mount.get("readOnly")), PROPAGATION[wanted]))
    return tuple(out)


class CriPods:
    """Runs the kubelet's non-hostNetwork pods through each node's containerd."""

    def __init__(self, layout: Layout, kubelet, toolbox_image: str) -> None:
        self.layout = layout
        self.kubelet = kubelet
        self.toolbox_image = toolbox_image
        self.clients: dict[int, Cri] = {}

    def client(self, node: int) -> Cri:
        if node not in self.clients:
            self.clients[node] = Cri(socket_of(self.layout, node))
        return self.clients[node]

    @staticmethod
    def runs(pod: dict) -> bool:
        """Pods with their own network, and hostNetwork pods that name an image (the node agent and the ztunnel
        from the shoal image: shoal_image.py); other hostNetwork pods stay processes in the node's netns."""
        spec = pod.get("spec", {})
        return not spec.get("hostNetwork") or any(c.get("image") for c in spec.get("containers", []))

    async def start(self, pod: dict, services_list: list[dict]) -> CriPod:
        meta, spec = pod["metadata"], pod.get("spec", {})
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        node = node_index(spec["nodeName"])
        cgroup = self.layout.cgroup_dir / "kubepods" / f"pod{uid}"
        run_dir = self.layout.run_dir / "pods" / f"{namespace}_{name}"
        runtime = CriPod(
            namespace=namespace, name=name, uid=uid, node=node, node_netns=self.layout.node_netns(node),
            cgroup=cgroup, restart_policy=spec.get("restartPolicy", "Always"),
            grace=min(float(spec.get("terminationGracePeriodSeconds", 5)), GRACE_MAX),
            cri=self, files=run_dir / "etc", logs=run_dir / "cri-logs",
            host_network=bool(spec.get("hostNetwork")), host_pid=bool(spec.get("hostPID")))
        base_env = {"POD_NAME": name, "POD_NAMESPACE": namespace, "NODE_NAME": f"node{node}", "HOSTNAME": name,
                    "PYTHONUNBUFFERED": "1"}
        for container in spec.get("containers", []):
            env = {**base_env, **{e["name"]: str(e.get("value", "")) for e in container.get("env") or ()}}
            command = tuple(str(a) for a in container.get("command") or ())
            args = tuple(str(a) for a in container.get("args") or ())
            own = self._shoals_own(command)
            if own:
                env = {**own_env(), **env}
            elif container.get("image") == shoal_image.REF:  # the cluster's paths, which its argv names
                env = {**{k: os.environ[k] for k in shoal_image.PASSED_ENV if k in os.environ}, **env}
            try:
                mounts, config_error = own or volume_mounts(spec, container), None
            except CriError as e:
                mounts, config_error = (), str(e)
            security = container.get("securityContext") or {}
            capabilities = security.get("capabilities") or {}
            runtime.containers.append(CriContainer(
                container["name"], [*command, *args], container.get("readinessProbe"),
                image=container.get("image") or self.toolbox_image, command=command, args=args,
                env=tuple(env.items()), mounts=mounts, config_error=config_error,
                privileged=bool(security.get("privileged")), run_as_user=security.get("runAsUser"),
                add_capabilities=tuple(capabilities.get("add") or ()),
                drop_capabilities=tuple(capabilities.get("drop") or ())))
        runtime.write_dns(services_list)
        runtime.tasks.append(asyncio.create_task(self._run(runtime)))
        logger.info("pod handed to containerd", pod=f"{namespace}/{name}", node=f"node{node}")
        self.kubelet._mark(runtime)
        return runtime

    def _shoals_own(self, command: tuple[str, ...]) -> tuple[tuple[str, str, bool], ...]:
        """The mounts of a container that runs shoal from this checkout, as the mesh's pods that are not
        hostNetwork do (the waypoints: control_plane/waypoints.py runs them with the daemon's interpreter):
        the checkout and its venv read-only, and the cluster's run directory (store, CA bundle, sockets).
        The toolbox is the same Debian release, so the venv's interpreter and wheels run there as they do
        on the host."""
        if not command or command[0] != sys.executable:
            return ()
        places = {REPO, Path(sys.prefix)}
        return (*((str(p), str(p), True) for p in sorted(places) if not any(p != q and q in p.parents for q in places)),
                (str(self.layout.run_dir), str(self.layout.run_dir), False))

    async def _run(self, runtime: CriPod) -> None:
        cri = self.client(runtime.node)
        runtime.cgroup.mkdir(parents=True, exist_ok=True)  # before the sandbox, as the kubelet does
        runtime.logs.mkdir(parents=True, exist_ok=True)
        runtime.sandbox_config = Cri.sandbox_config(
            runtime.namespace, runtime.name, runtime.uid, log_directory=str(runtime.logs),
            cgroup_parent="/" + str(runtime.cgroup.relative_to(CGROUP_ROOT)),
            dns_searches=(f"{runtime.namespace}.svc.{services.CLUSTER_DOMAIN}",
                          f"svc.{services.CLUSTER_DOMAIN}", services.CLUSTER_DOMAIN),
            host_network=runtime.host_network, host_pid=runtime.host_pid,
            privileged=any(c.privileged for c in runtime.containers))
        backoff = SANDBOX_BACKOFF_START
        while runtime.sandbox_id is None:
            try:
                await asyncio.to_thread(self._remove_earlier, cri, runtime)
                runtime.sandbox_id = await asyncio.to_thread(cri.run_sandbox, runtime.sandbox_config)
            except CriError as e:
                for c in runtime.containers:
                    c.waiting_reason = "ContainerCreating"
                self.kubelet._event(runtime, "sandbox", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e}")
                self.kubelet._mark(runtime)
                logger.warning("pod sandbox not made; retrying", pod=f"{runtime.namespace}/{runtime.name}",
                               error=str(e), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        info = await asyncio.to_thread(cri.sandbox, runtime.sandbox_id)
        runtime.ip, runtime.netns_path = info.ip, info.netns
        if runtime.host_network:  # the node's netns, where containerd runs: no CNI, the node's address
            runtime.ip, runtime.netns_path = node_ip(runtime.node), str(netns.path(runtime.node_netns))
        logger.info("pod sandbox ready", pod=f"{runtime.namespace}/{runtime.name}", ip=info.ip, netns=info.netns)
        self.kubelet._mark(runtime)
        await asyncio.gather(*(self._run_container(runtime, c) for c in runtime.containers))

    @staticmethod
    def _remove_earlier(cri: Cri, runtime: CriPod) -> None:
        """Removes the pod's sandboxes an earlier kubelet left (a daemon that was killed and started again):
        the pod starts over, as the netns runtime kills the processes an earlier kubelet left."""
        for sandbox_id, namespace, name in cri.sandboxes():
            if (namespace, name) == (runtime.namespace, runtime.name):
                logger.info("removing the sandbox an earlier kubelet left", pod=f"{namespace}/{name}",
                            sandbox=sandbox_id)
                cri.remove_sandbox(sandbox_id)

    async def _run_container(self, runtime: CriPod, c: CriContainer) -> None:
        cri = self.client(runtime.node)
        log_path = self.layout.pod_log(runtime.namespace, runtime.name, c.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        (runtime.logs / c.name).mkdir(parents=True, exist_ok=True)
        backoff, attempt, stamped = BACKOFF_START, 0, 0
        if c.config_error:
            c.waiting_reason = "CreateContainerConfigError"
            self.kubelet._event(runtime, f"{c.name}.failed", "Failed", f"Error: {c.config_error}")
            self.kubelet._mark(runtime)
            return
        mounts = ((str(runtime.files / "hosts"), "/etc/hosts", False),
                  (str(runtime.files / "resolv.conf"), "/etc/resolv.conf", False), *c.mounts)
        while not runtime.stopping:
            env = (*c.env, ("POD_IP", runtime.ip))
            spec = ContainerSpec(c.name, attempt, c.image, c.command, c.args, env, mounts, f"{c.name}/{attempt}.log",
                                 privileged=c.privileged, host_network=runtime.host_network, host_pid=runtime.host_pid,
                                 run_as_user=c.run_as_user, add_capabilities=c.add_capabilities,
                                 drop_capabilities=c.drop_capabilities)
            restart = c.last_exit is not None  # it ran before: this start is a restart, counted once it starts
            if restart:
                with open(log_path, "ab") as f:
                    f.write(restart_marker(c.name, c.restart_count + 1, c.last_exit).encode())
            try:
                c.container_id = await asyncio.to_thread(cri.create_container, runtime.sandbox_id,
                                                         runtime.sandbox_config, spec)
                await asyncio.to_thread(cri.start_container, c.container_id)
            except CriError as e:
                c.waiting_reason = "CreateContainerError"
                hint = ("; the local cluster pulls from no registry: leave `image` out to run the toolbox, or see "
                        "`shoal local images`") if "not found" in str(e) else ""
                self.kubelet._event(runtime, f"{c.name}.failed", "Failed", f"Error: {e}{hint}")
                self.kubelet._mark(runtime)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            c.copied = 0
            if restart:
                c.restart_count += 1
            c.running, c.waiting_reason, c.started_at = True, None, now_rfc3339()
            started = time.monotonic()
            probe = asyncio.create_task(self.kubelet._probe(runtime, c))
            try:  # the probe ends with the run, also when the pod is stopped (this task cancelled)
                status = await asyncio.to_thread(cri.container, c.container_id)
                c.pid = status.pid
                self.kubelet._mark(runtime)
                while status.state != CONTAINER_EXITED and not runtime.stopping:
                    await asyncio.sleep(POLL_SECONDS)
                    self._copy_log(runtime, c, attempt, log_path)
                    stamped = _stamp_once(log_path, stamped)
                    try:
                        status = await asyncio.to_thread(cri.container, c.container_id)
                    except CriError:
                        continue  # containerd busy or restarting: ask again
            finally:
                probe.cancel()
            self._copy_log(runtime, c, attempt, log_path)
            if runtime.stopping:
                return
            c.running, c.ready, c.pid = False, False, None
            c.last_exit, c.last_finished_at = status.exit_code, now_rfc3339()
            logger.info("container exited", pod=f"{runtime.namespace}/{runtime.name}", container=c.name,
                        exit_code=status.exit_code)
            try:
                await asyncio.to_thread(cri.remove_container, c.container_id)
            except CriError as e:
                logger.warning("exited container not removed", container=c.container_id, error=str(e))
            c.container_id = None
            if time.monotonic() - started > BACKOFF_RESET_AFTER:
                backoff = BACKOFF_START
            if runtime.restart_policy == "Never" or (runtime.restart_policy == "OnFailure" and c.last_exit == 0):
                c.done = True
                self.kubelet._mark(runtime)
                return
            attempt += 1
            c.waiting_reason = "CrashLoopBackOff"
            self.kubelet._event(runtime, f"{c.name}.backoff", "BackOff", f"Back-off restarting container {c.name}: "
                                f"it exited with code {c.last_exit} (restart {c.restart_count + 1}, next in {backoff:g}s)")
            self.kubelet._mark(runtime)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    @staticmethod
    def _copy_log(runtime: CriPod, c: CriContainer, attempt: int, log_path: Path) -> None:
        """Appends what the CRI logged since last time (`<time> <stream> <F|P> <text>` lines) as plain text."""
        source = runtime.logs / c.name / f"{attempt}.log"
        try:
            with open(source, "rb") as f:
                f.seek(c.copied)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        if not end:
            return
        out = bytearray()
        for line in data[:end].splitlines():
            parts = line.split(b" ", 3)
            if len(parts) == 4:
                out += parts[3] + (b"\n" if parts[2] == b"F" else b"")
            elif len(parts) == 3:  # an empty line
                out += b"\n"
        with open(log_path, "ab") as f:
            f.write(out)
        c.copied += end

    async def stop(self, runtime: CriPod) -> None:
        """Stops the pod's containers (SIGTERM, the grace period, then SIGKILL: the CRI's StopContainer) and
        removes its sandbox (CNI DEL), then its cgroup and files."""
        runtime.stopping = True
        for task in runtime.tasks:
            task.cancel()
        for task in runtime.tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        cri = self.client(runtime.node)
        try:
            await asyncio.gather(*(asyncio.to_thread(cri.stop_container, c.container_id, runtime.grace)
                                   for c in runtime.containers if c.container_id))
            if runtime.sandbox_id:
                await asyncio.to_thread(cri.remove_sandbox, runtime.sandbox_id)
        except CriError as e:  # `down` removes what containerd kept
            logger.warning("pod not removed through CRI", pod=f"{runtime.namespace}/{runtime.name}", error=str(e))
        try:
            runtime.cgroup.rmdir()
        except OSError:
            pass
        logger.info("pod stopped", pod=f"{runtime.namespace}/{runtime.name}")


def backend(layout: Layout, kubelet) -> CriPods:
    """The CRI backend of a cluster whose pods run on containerd (the daemon sets it on its kubelet)."""
    return CriPods(layout, kubelet, toolbox_image(layout))
