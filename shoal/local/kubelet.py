"""The local kubelet: pod sandboxes, container processes, restarts, status.

For each pod bound to a node of the cluster it:
- builds the sandbox: a netns wired to the node (or the node's own netns for
  hostNetwork pods), a cgroup v2 directory, and /etc/netns/<netns>/{hosts,resolv.conf};
- runs each container's command inside the netns and the cgroup, with stdout
  and stderr appended to a log file;
- restarts a container that exits, per restartPolicy, with exponential backoff
  (CrashLoopBackOff), and counts a restart when the container starts again
  (as Kubernetes' restartCount does: not when it exits, nor during the back-off);
- probes readiness (httpGet or tcpSocket), and writes status back to the store
  the way the kubelet does: phase, podIP, hostIP, conditions, containerStatuses,
  plus `status.shoal.{netns,cgroup}` for the node agent.

Stopping a pod sends SIGTERM to every process of its cgroup, waits the grace
period, then kills what is left with cgroup.kill, so nothing escapes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal import log, netns
from shoal.local import network, services
from shoal.local.errors import LocalClusterError
from shoal.local.layout import Layout, node_index, node_ips, pod_cidr, pod_ips
from shoal.model.addresses import join_host_port
from shoal.store import Store, now_rfc3339

logger = log.get("shoal.local.kubelet")

BACKOFF_START = 0.2
BACKOFF_MAX = 10.0
BACKOFF_RESET_AFTER = 10.0  # a container that ran this long starts its backoff over
GRACE_MAX = 10.0
PROBE_PERIOD = 0.5          # while a container is not ready: start-up (what `up` and rollouts wait for) is seen soon
READY_PROBE_PERIOD = 2.0    # once it is: each probe wakes the kubelet and the probed process (the proxies, the agents)


class KubeletError(LocalClusterError):
    """A pod's sandbox, cgroup or address could not be made or removed."""


# -- cgroups ------------------------------------------------------------------

def cgroup_pids(path: Path) -> list[int]:
    """The processes in the cgroup; none once it is gone, or while the kernel is removing it (ENODEV)."""
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno == errno.ENODEV:
            return []
        raise


def cgroup_kill(path: Path) -> None:
    """Kills every process in the cgroup (cgroup.kill where the kernel has it, else one by one)."""
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        kill_file.write_text("1")
        return
    for pid in cgroup_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cgroup_signal(path: Path, sig: int) -> None:
    for pid in cgroup_pids(path):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """Kills what is left in a cgroup (and its children) and removes the directories."""
    if not path.exists():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        remove_cgroup(child, timeout)
    cgroup_kill(path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise KubeletError(f"cgroup {path} still has processes after kill: {cgroup_pids(path)}")
            time.sleep(0.02)


# -- the runtime of one pod ----------------------------------------------------

@dataclass
class ContainerState:
    name: str
    argv: list[str]
    probe: dict | None
    restart_count: int = 0
    running: bool = False
    ready: bool = False
    started_at: str | None = None
    last_exit: int | None = None
    last_finished_at: str | None = None
    waiting_reason: str | None = None
    done: bool = False  # will not run again (restartPolicy)
    process: asyncio.subprocess.Process | None = None

    def status(self) -> dict:
        if self.running:
            state = {"running": {"startedAt": self.started_at}}
        elif self.done:
            state = {"terminated": {"exitCode": self.last_exit, "finishedAt": self.last_finished_at,
                                    "reason": "Completed" if self.last_exit == 0 else "Error"}}
        else:
            state = {"waiting": {"reason": self.waiting_reason or "ContainerCreating"}}
        out = {"name": self.name, "ready": self.ready, "restartCount": self.restart_count, "state": state}
        if self.last_exit is not None and not self.done:
            out["lastState"] = {"terminated": {"exitCode": self.last_exit, "finishedAt": self.last_finished_at}}
        return out


@dataclass
class PodRuntime:
    namespace: str
    name: str
    uid: str
    node: int
    host_network: bool
    netns: str
    node_netns: str
    cgroup: Path
    ips: tuple[str, ...]  # one per family of the cluster, primary first; ips[0] is status.podIP
    restart_policy: str
    grace: float
    containers: list[ContainerState] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    started_at: str = field(default_factory=now_rfc3339)
    stopping: bool = False
    host_ips: tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        return self.ips[0]

    def phase(self) -> str:
        if not self.containers:
            return "Running"  # an empty sandbox, to exec into
        if all(c.done for c in self.containers):
            return "Succeeded" if all(c.last_exit == 0 for c in self.containers) else "Failed"
        if any(c.running or c.last_exit is not None for c in self.containers):
            return "Running"
        return "Pending"

    def status(self) -> dict:
        ready = all(c.ready for c in self.containers) and not self.stopping
        return {
            "phase": self.phase(),
            "podIP": self.ip,
            "podIPs": [{"ip": ip} for ip in self.ips],
            "hostIP": self.host_ips[0],
            "hostIPs": [{"ip": ip} for ip in self.host_ips],
            "startTime": self.started_at,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [c.status() for c in self.containers],
            "shoal": {"netns": str(netns.path(self.netns)), "cgroup": str(self.cgroup)},
        }


class Kubelet:
    """Runs the pods bound to the nodes of one local cluster."""

    def __init__(self, layout: Layout, store: Store, ip_family: str = "ipv4") -> None:
        self.layout = layout
        self.store = store
        self.ip_family = ip_family  # `shoal local up --ip-family`: which addresses pods get
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._status_event = asyncio.Event()
        self._logs: dict[Path, int] = {}  # the logs of running containers -> their size as last stamped
        # With `--runtime containerd`, the CRI backend (shoal.local.cri_pods) the daemon sets: it runs the
        # pods it `runs()` through the node's containerd; this class runs the rest (hostNetwork) as processes.
        self.cri = None

    # -- reconcile ---------------------------------------------------------------

    async def sync(self, pods: list[dict], services_list: list[dict]) -> None:
        """Makes the running pods match `pods` (the store's Pod objects)."""
        wanted = {}
        for pod in pods:
            node_name = pod.get("spec", {}).get("nodeName")
            if node_name:
                wanted[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        for key, runtime in list(self.pods.items()):
            pod = wanted.get(key)
            if pod is None or pod["metadata"]["uid"] != runtime.uid:
                await self.stop(runtime)
        for key, pod in wanted.items():
            if key not in self.pods:
                try:
                    await self.start(pod, services_list)
                except Exception as e:  # one bad pod must not stop the others
                    logger.error("pod sandbox failed", pod=f"{key[0]}/{key[1]}", error=str(e))
                    self._write_failed(pod, str(e))
        for runtime in self.pods.values():
            if getattr(runtime, "cri", None) is not None:
                runtime.write_dns(services_list)
            elif not runtime.host_network:
                self._write_dns(runtime, services_list)

    def _allocate_ips(self, node: int, pod: dict) -> tuple[str, ...]:
        """The pod's addresses: host number n of its node in every family (198.19.<node>.n and
        fd73:686f:616c:<node>::n), the one it had before if still free (a restarted daemon keeps them)."""
        wanted = (pod.get("status") or {}).get("podIP")
        in_use = {ip for r in self.pods.values() if r.node == node for ip in r.ips}
        hosts = range(2, 255)
        for host in hosts:
            ips = pod_ips(node, host, self.ip_family)
            if wanted in ips and not in_use & set(ips):
                return ips
        for host in hosts:
            ips = pod_ips(node, host, self.ip_family)
            if not in_use & set(ips):
                return ips
        raise KubeletError(f"node{node} has no pod address left in {pod_cidr(node)}")

    async def start(self, pod: dict, services_list: list[dict]) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        namespace, name = meta["namespace"], meta["name"]
        if self.cri is not None and self.cri.runs(pod):
            self.pods[(namespace, name)] = await self.cri.start(pod, services_list)
            return
        node = node_index(spec["nodeName"])
        host_network = bool(spec.get("hostNetwork"))
        host_ips = node_ips(node, self.ip_family)
        if host_network:
            ns, ips = self.layout.node_netns(node), host_ips
        else:
            ips = self._allocate_ips(node, pod)
            ns = await asyncio.to_thread(network.ensure_pod_sandbox, self.layout, node, namespace, name, ips)
        cgroup = self.layout.pod_cgroup(namespace, name)
        if cgroup_pids(cgroup):
            logger.info("killing processes left from an earlier kubelet", pod=f"{namespace}/{name}")
            await asyncio.to_thread(remove_cgroup, cgroup)
        cgroup.mkdir(parents=True, exist_ok=True)
        runtime = PodRuntime(
            namespace=namespace, name=name, uid=meta["uid"], node=node, host_network=host_network,
            netns=ns, node_netns=self.layout.node_netns(node), cgroup=cgroup, ips=ips, restart_policy=spec.get("restartPolicy", "Always"),
            grace=min(float(spec.get("terminationGracePeriodSeconds", 5)), GRACE_MAX), host_ips=host_ips,
        )
        for container in spec.get("containers", []):
            argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
            if argv:
                runtime.containers.append(ContainerState(container["name"], argv, container.get("readinessProbe")))
        self.pods[(namespace, name)] = runtime
        if not host_network:
            self._write_dns(runtime, services_list)
        env = self._env(pod, runtime)
        for container in runtime.containers:
            runtime.tasks.append(asyncio.create_task(self._run_container(runtime, container, env)))
        logger.info("pod started", pod=f"{namespace}/{name}", node=f"node{node}", ips=list(ips),
                    containers=[c.name for c in runtime.containers])
        self._mark(runtime)

    async def stop(self, runtime: PodRuntime) -> None:
        if getattr(runtime, "cri", None) is not None:
            await self.cri.stop(runtime)
            self.pods.pop((runtime.namespace, runtime.name), None)
            return
        runtime.stopping = True
        for task in runtime.tasks:
            task.cancel()
        await asyncio.to_thread(self._terminate, runtime)
        for task in runtime.tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if not runtime.host_network:
            await asyncio.to_thread(network.remove_pod_sandbox, self.layout, runtime.namespace, runtime.name)
            remove_etc_netns(runtime.netns)
        self.pods.pop((runtime.namespace, runtime.name), None)
        logger.info("pod stopped", pod=f"{runtime.namespace}/{runtime.name}")

    async def stop_all(self) -> None:
        # containerd's pods first: their sandboxes' CNI DEL asks the node agent and the ztunnel, which stop
        # last, as a drained node keeps its DaemonSet pods.
        first = [r for r in self.pods.values() if getattr(r, "cri", None) is not None and not r.host_network]
        await asyncio.gather(*(self.stop(r) for r in first))
        await asyncio.gather(*(self.stop(r) for r in list(self.pods.values())))

    @staticmethod
    def _terminate(runtime: PodRuntime) -> None:
        cgroup_signal(runtime.cgroup, signal.SIGTERM)
        deadline = time.monotonic() + runtime.grace
        while cgroup_pids(runtime.cgroup) and time.monotonic() < deadline:
            time.sleep(0.05)
        remove_cgroup(runtime.cgroup)

    # -- containers ----------------------------------------------------------------

    def _env(self, pod: dict, runtime: PodRuntime) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": "/root",
            "HOSTNAME": runtime.name,
            "POD_NAME": runtime.name,
            "POD_NAMESPACE": runtime.namespace,
            "POD_IP": runtime.ip,
            "POD_IPS": ",".join(runtime.ips),
            "NODE_NAME": f"node{runtime.node}",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(own_env())
        return env

    async def _run_container(self, runtime: PodRuntime, c: ContainerState, base_env: dict) -> None:
        spec_env = {}
        for container in self.store.get("Pod", runtime.namespace, runtime.name).get("spec", {}).get("containers", []):
            if container["name"] == c.name:
                spec_env = {e["name"]: str(e.get("value", "")) for e in container.get("env", []) or []}
        env = {**base_env, **spec_env}
        log_path = self.layout.pod_log(runtime.namespace, runtime.name, c.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        work_dir = self.layout.run_dir / "pods" / f"{runtime.namespace}_{runtime.name}"
        work_dir.mkdir(parents=True, exist_ok=True)
        backoff = BACKOFF_START
        probe_task = None
        while not runtime.stopping:
            restart = c.last_exit is not None  # it ran before: this start is a restart, counted once it starts
            with open(log_path, "ab", buffering=0) as log_file:
                if restart:
                    log_file.write(restart_marker(c.name, c.restart_count + 1, c.last_exit).encode())
                try:
                    c.process = await asyncio.create_subprocess_exec(
                        *_launch_argv(runtime, c.argv),
                        stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                        cwd=work_dir, env=env, preexec_fn=_enter(runtime), start_new_session=True,
                    )
                except OSError as e:
                    c.waiting_reason = f"StartError: {e}"
                    c.process = None
            if c.process is not None:
                if restart:
                    c.restart_count += 1
                c.running, c.waiting_reason, c.started_at = True, None, now_rfc3339()
                started = time.monotonic()
                probe_task = asyncio.create_task(self._probe(runtime, c))
                self._logs[log_path] = 0  # stamped by log_stamper while it runs
                self._mark(runtime)
                try:
                    code = await c.process.wait()
                finally:  # also when the pod is stopped (this task cancelled): no probe or stamping outlives it
                    probe_task.cancel()
                    _stamp_once(log_path, self._logs.pop(log_path, 0))   # the run's last lines get the time it ended
                c.running, c.ready = False, False
                c.last_exit, c.last_finished_at = code, now_rfc3339()
                if time.monotonic() - started > BACKOFF_RESET_AFTER:
                    backoff = BACKOFF_START
                if runtime.stopping:
                    return
                logger.info("container exited", pod=f"{runtime.namespace}/{runtime.name}",
                            container=c.name, exit_code=code)
            if runtime.restart_policy == "Never" or (runtime.restart_policy == "OnFailure" and c.last_exit == 0):
                c.done = True
                self._mark(runtime)
                return
            if c.process is not None:
                c.waiting_reason = "CrashLoopBackOff"
                self._event(runtime, f"{c.name}.backoff", "BackOff", f"Back-off restarting container {c.name}: "
                            f"it exited with code {c.last_exit} (restart {c.restart_count + 1}, next in {backoff:g}s)")
            self._mark(runtime)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _probe(self, runtime: PodRuntime, c: ContainerState) -> None:
        if not c.probe:
            c.ready = True
            self._mark(runtime)
            return
        while c.running:
            ok = await probe_once(runtime, c.probe)
            if ok != c.ready:
                c.ready = ok
                self._mark(runtime)
            await asyncio.sleep(READY_PROBE_PERIOD if c.ready else PROBE_PERIOD)

    # -- status and DNS ---------------------------------------------------------------

    def _mark(self, runtime: PodRuntime) -> None:
        self._dirty.add((runtime.namespace, runtime.name))
        self._status_event.set()

    async def status_writer(self) -> None:
        """Writes pod status back to the store, coalescing bursts of changes."""
        while True:
            await self._status_event.wait()
            self._status_event.clear()
            await asyncio.sleep(0.01)
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                runtime = self.pods.get(key)
                if runtime is None or runtime.stopping:
                    continue
                try:
                    self.store.update_status("Pod", key[0], key[1], runtime.status())
                except Exception as e:  # the pod was deleted meanwhile
                    logger.debug("status not written", pod=f"{key[0]}/{key[1]}", error=str(e))

    async def log_stamper(self) -> None:
        """Every STAMP_SECONDS, a stamp for each running container's log that grew (`stamps_path`): one timer
        for every container; a log that did not grow costs one stat."""
        while True:
            await asyncio.sleep(STAMP_SECONDS)
            for log_path, last in list(self._logs.items()):
                self._logs[log_path] = _stamp_once(log_path, last)

    def _event(self, runtime: PodRuntime, suffix: str, reason: str, message: str) -> None:
        """A core/v1 Warning Event about the pod, one per `suffix`, its count and time updated as it recurs
        (as the kubelet's are aggregated): `shoal local events` and `describe` show it."""
        name = f"{runtime.name}.{suffix}"
        try:
            old = self.store.get("Event", runtime.namespace, name)
            now = now_rfc3339()
            self.store.apply({
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": runtime.namespace},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": runtime.name,
                                   "namespace": runtime.namespace, "uid": runtime.uid},
                "reason": reason, "message": message, "type": "Warning",
                "source": {"component": "kubelet", "host": f"node{runtime.node}"},
                "firstTimestamp": (old or {}).get("firstTimestamp", now), "lastTimestamp": now,
                "count": int((old or {}).get("count", 0)) + 1})
        except Exception as e:  # an event is a courtesy; the pod's status says the same
            logger.debug("event not written", pod=f"{runtime.namespace}/{runtime.name}", error=str(e))

    def _write_failed(self, pod: dict, reason: str) -> None:
        meta = pod["metadata"]
        try:
            self.store.update_status("Pod", meta["namespace"], meta["name"],
                                     {"phase": "Failed", "reason": "SandboxError", "message": reason})
        except Exception:
            pass

    def _write_dns(self, runtime: PodRuntime, services_list: list[dict]) -> None:
        directory = Path("/etc/netns") / runtime.netns
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in (("hosts", services.hosts_file(runtime.namespace, services_list)),
                              ("resolv.conf", services.resolv_conf(runtime.namespace))):
            path = directory / name
            # Rewritten in place, never replaced: running pods see it through a bind mount.
            if not path.exists() or path.read_text() != content:
                with open(path, "w") as f:
                    f.write(content)


def remove_etc_netns(name: str) -> None:
    directory = Path("/etc/netns") / name
    if directory.exists():
        for f in directory.iterdir():
            f.unlink()
        directory.rmdir()


def _launch_argv(runtime: PodRuntime, argv: list[str]) -> list[str]:
    """A pod's containers run under `ip netns exec`, which also gives them their own /etc/hosts and
    /sys, as a container has. hostNetwork pods share the node's mounts, as they do on a real node
    (the node agent needs the host's cgroup and bpffs mounts); they only enter the node's netns."""
    return list(argv) if runtime.host_network else ["ip", "netns", "exec", runtime.netns, *argv]


RESTART_MARKER = "--- shoal: restart "
STAMP_SECONDS = 1.0


def stamps_path(log_path: Path) -> Path:
    """Beside a container log: `OFFSET TIME` lines, the log's size as the kubelet saw it at that time, so
    `logs --timestamps` can give each line the time it was first seen (to within STAMP_SECONDS)."""
    return log_path.with_name(log_path.name + ".times")


def _stamp_once(log_path: Path, last: int) -> int:
    """Records the log's size now if it grew past `last`; returns the size recorded last."""
    try:
        size = log_path.stat().st_size
        if size > last:
            with open(stamps_path(log_path), "a") as f:
                f.write(f"{size} {now_rfc3339()}\n")
            return size
    except OSError:
        pass  # a time is a convenience; the log itself is what counts
    return last


def restart_marker(container: str, restart: int, last_exit: int | None) -> str:
    """The line written into a container's log before each restart, so `logs` can tell the runs apart
    (`--previous`); it starts with RESTART_MARKER."""
    return (f"{RESTART_MARKER}{restart} of container {container} at {now_rfc3339()}; "
            f"the previous run exited with code {last_exit} ---\n")


def _enter(runtime: PodRuntime):
    """The child's last steps before exec: join the pod's cgroup, and the node's netns for hostNetwork."""
    procs = str(runtime.cgroup / "cgroup.procs")
    netns_path = str(netns.path(runtime.netns)) if runtime.host_network else None

    def preexec():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
        if netns_path:
            fd = os.open(netns_path, os.O_RDONLY)
            netns.setns(fd)
            os.close(fd)

    return preexec


# What the kubelet passes on from its own environment to the processes it starts (both runtimes: cri_pods too).
PASSED_ON_ENV = ("SHOAL_RUN_ROOT", "SHOAL_CGROUP_ROOT", "SHOAL_RELAY", "PYTHONPATH", "VIRTUAL_ENV")


def own_env() -> dict[str, str]:
    """The kubelet's own values of PASSED_ON_ENV, for shoal's processes in the pods it runs."""
    return {key: os.environ[key] for key in PASSED_ON_ENV if key in os.environ}


PROBE_ANSWER_LIMIT = 10 * 1024  # bytes of a probe's answer read, at the most (a kubelet reads 10 KiB)


def probe_request(host: str, port: int, path: str) -> bytes:
    """An httpGet probe's request; an IPv6 host is bracketed in Host (RFC 9110), as a kubelet writes it."""
    return (f"GET {path} HTTP/1.1\r\nHost: {join_host_port(host, port)}\r\nUser-Agent: kube-probe/shoal\r\n"
            f"Connection: close\r\n\r\n").encode()


def probe_passed(answer: bytes) -> bool:
    """A status of 200 to 399, as a kubelet counts success."""
    parts = answer.split(b"\r\n", 1)[0].split(b" ")
    return len(parts) > 1 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


def answer_complete(answer: bytes) -> bool:
    """Has the whole answer arrived: its head, and the body its Content-Length or last chunk says? (Without
    either, only the server's close ends it.)"""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    fields = {name.strip().lower(): value.strip().lower() for name, _, value in
              (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if fields.get(b"content-length", b"").isdigit():
        return len(body) >= int(fields[b"content-length"])
    return fields.get(b"transfer-encoding") == b"chunked" and body.endswith(b"0\r\n\r\n")


PROBE_TIMEOUT = 1.0  # seconds for a whole probe, connect to answer (a kubelet's default timeoutSeconds)


async def http_probe(sock: socket.socket, host: str, port: int, path: str) -> bool:
    """One httpGet probe on a connected non-blocking socket. The answer is read to its end (as its length
    says, or until the server closes), up to PROBE_ANSWER_LIMIT: a probe that closed after the status line
    reset the connection while the server was still writing the rest, and Python's http.server logged a
    ConnectionResetError traceback."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, probe_request(host, port, path))
    answer = b""
    while len(answer) < PROBE_ANSWER_LIMIT and not answer_complete(answer):
        chunk = await loop.sock_recv(sock, PROBE_ANSWER_LIMIT - len(answer))
        if not chunk:
            break
        answer += chunk
    return probe_passed(answer)


async def probe_once(runtime, probe: dict, timeout: float = PROBE_TIMEOUT) -> bool:
    """One readiness probe (httpGet or tcpSocket) from the pod's node, as a real kubelet probes, on the
    running loop: the socket is made in the node's netns (this thread enters it for that call only), and
    the rest is the loop's I/O, with no thread per probe."""
    target = probe.get("httpGet") or probe.get("tcpSocket") or {}
    port = int(target.get("port", 0))
    host = target.get("host") or ("127.0.0.1" if runtime.host_network else runtime.ip)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with netns.entered(runtime.node_netns):
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except (OSError, netns.NetnsError):  # the node's netns is gone (the cluster going down): not ready
        return False
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            return await http_probe(sock, host, port, target.get("path", "/")) if "httpGet" in probe else True
    except (OSError, TimeoutError):
        return False
    finally:
        sock.close()
