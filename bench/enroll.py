"""Enrollment: from annotating a namespace to capture active, and to the first mTLS connection.

    python -m bench.enroll [--pods 20] [--repeats 3] [--modes iptables,ebpf] [--cases capture,mtls]

Two cases, each for every redirect mode:
- `capture` (below): annotation to capture active in each of N running pods,
  on a bed of network namespaces made here, the agent alone.
- `mtls` (BENCHMARKS.md's "Enrollment"): annotation to each pod's first mTLS
  connection, through a whole `shoal local` cluster (control plane, agents,
  ztunnels). The server's namespace is enrolled and STRICT, so a client pod's
  request succeeds only once it goes through its ztunnel over mTLS.

Bed (made here, removed at the end, even on failure): one node netns and N
pod netns on veths (198.19.251.0/24, wired as the local cluster wires its
pods), a cgroup per pod with a running process in it, a store in a temporary
run root with the pods Running, the real `shoal node-agent` process in the
node's netns, and a stand-in ztunnel (the real HandoffClient) that opens
15001/15006 in each pod it is handed.

Measure: each pod's process waits, then at t0 (the instant the namespace is
annotated) starts connecting every 2 ms to the node (169.254.1.1:7777), where
nothing listens: the node's kernel refuses, at no cost to the bench. Once
capture is active the connection lands on the ztunnel's 15001 listener, which
answers "Z". The first "Z" is the moment capture is active in that pod; the pod
reports its CLOCK_MONOTONIC time, the same clock as t0. Each repeat removes the
annotation and waits for every pod to be out before the next one.

Reported per mode: p50, p99 and max (all pods active) over the pods, each the
median over the repeats with min and max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.report import Run, percentile, summarize, table
from shoal import log, netns, store
from shoal.contracts import NODE_AGENT_PORT
from shoal.handoff_io import HandoffClient
from shoal.local.layout import POD_GATEWAY, Layout
from shoal.local.network import ensure_pod_sandbox, remove_pod_sandbox

CLUSTER = "bench-enroll"
NODE_PORT = 7777
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
PROBE_INTERVAL = 0.002
PROBE_WINDOW = 20.0

PROBER = f"""
import socket, sys, time
sys.stdin.readline()                       # wait for t0
deadline = time.monotonic() + {PROBE_WINDOW}
while time.monotonic() < deadline:
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("{POD_GATEWAY}", {NODE_PORT}))
        answer = s.recv(1)
    except OSError:
        answer = b""
    finally:
        s.close()
    if answer == b"Z":
        print(time.monotonic(), flush=True)
        break
    time.sleep({PROBE_INTERVAL})
else:
    print("timeout", flush=True)
sys.stdin.readline()                       # stay a running pod until told to go
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Bed:
    def __init__(self, pods: int, workdir: Path) -> None:
        self.count = pods
        self.dir = workdir
        self.layout = Layout(f"benrl{os.getpid()}")
        self.node = self.layout.node_netns(1)
        self.cgroup_dir = CGROUP_ROOT / f"shoal-bench-{os.getpid()}"
        self.pods: list[dict] = []
        self.store = store.Store(CLUSTER, root=workdir / "run")
        self.bpffs = workdir / "bpffs"

    def create(self) -> None:
        netns.create(self.node)
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.cgroup_dir.mkdir()
        self.bpffs.mkdir()
        sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        self.store.init()
        self.store.apply({"kind": "Namespace", "metadata": {"name": "bench"}})
        for i in range(self.count):
            name, ip = f"app-{i}", f"198.19.251.{i + 2}"
            ns = ensure_pod_sandbox(self.layout, 1, "bench", name, ip)
            cgroup = self.cgroup_dir / f"p{i}"
            cgroup.mkdir()
            self.store.apply({"kind": "Pod", "metadata": {"name": name, "namespace": "bench"},
                              "spec": {"nodeName": "node1", "containers": [{"name": "app"}]}})
            self.store.update_status("Pod", "bench", name, {
                "phase": "Running", "podIP": ip, "hostIP": "198.18.0.1",
                "shoal": {"netns": str(netns.path(ns)), "cgroup": str(cgroup)}})
            self.pods.append({"name": name, "netns": ns, "ip": ip, "cgroup": str(cgroup)})

    def destroy(self) -> None:
        for pod in self.pods:
            cgroup = Path(pod["cgroup"])
            if cgroup.exists():
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for i in range(self.count):
            remove_pod_sandbox(self.layout, "bench", f"app-{i}")
        netns.remove(self.node)
        if self.cgroup_dir.exists():
            for child in self.cgroup_dir.iterdir():
                if child.is_dir():
                    for _ in range(50):
                        try:
                            child.rmdir()
                            break
                        except OSError:
                            time.sleep(0.02)
            self.cgroup_dir.rmdir()
        if self.bpffs.exists():
            subprocess.run(["umount", str(self.bpffs)], capture_output=True)


class StandInZtunnel:
    """Serves the hand-off and answers "Z" on each pod's 15001 (and holds its 15006)."""

    def __init__(self, socket_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.listeners: dict[str, list[socket.socket]] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.client: HandoffClient | None = None
        self.path = socket_path
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.client = HandoffClient(self.path, self, retry_seconds=0.02, max_retry_seconds=0.2)
        self.loop.run_until_complete(self.client.run())
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def add_workload(self, workload, netns_fd):
        try:
            if workload.uid not in self.listeners:
                socks = []
                for port in (15001, 15006):
                    sock = netns.socket_in(netns_fd)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("0.0.0.0", port))
                    sock.listen(64)
                    sock.setblocking(False)
                    socks.append(sock)
                self.listeners[workload.uid] = socks
                self.tasks[workload.uid] = asyncio.get_running_loop().create_task(_answer(socks[0], b"Z"))
            return self.listeners[workload.uid][1]
        finally:
            os.close(netns_fd)

    async def del_workload(self, uid):
        task = self.tasks.pop(uid, None)
        if task:  # before closing: a pending sock_accept must drop its reader first
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for sock in self.listeners.pop(uid, []):
            sock.close()

    def stop(self) -> None:
        if self.client:
            self.loop.call_soon_threadsafe(self.client.stop)
        self.thread.join(5)


async def _answer(listener: socket.socket, byte: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            conn, _ = await loop.sock_accept(listener)
            try:
                conn.send(byte)
            except OSError:
                pass
            conn.close()
    except (OSError, asyncio.CancelledError):
        return


def agent_metric(bed: Bed, name: str) -> float | None:
    return _metric_in(bed.node, name)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def run_mode(bed: Bed, mode: str, repeats: int) -> dict:
    agent_dir = bed.dir / mode
    agent_dir.mkdir()
    socket_path = agent_dir / "ztunnel.sock"
    argv = [sys.executable, "-m", "shoal", "--log-format", "json", "node-agent", "--source", "local",
            "--cluster", CLUSTER, "--node", "node1", "--redirect", mode, "--socket", str(socket_path),
            "--state-dir", str(agent_dir / "state"), "--bpffs", str(bed.bpffs)]
    env = {**os.environ, "SHOAL_RUN_ROOT": str(bed.dir / "run")}
    agent_log = open(agent_dir / "agent.log", "w")
    agent = netns.popen(bed.node, argv, env=env, stdout=agent_log, stderr=subprocess.STDOUT)
    ztunnel = StandInZtunnel(socket_path)
    per_repeat = []
    try:
        wait_for(lambda: agent_metric(bed, "shoal_node_agent_enrolled_pods") == 0, 30, "the node agent")
        wait_for(lambda: ztunnel.client is not None and ztunnel.client.synced.is_set(), 10, "the hand-off")
        for _ in range(repeats):
            probers = [netns.popen(p["netns"], [sys.executable, "-I", "-S", "-c", PROBER], cgroup=p["cgroup"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for p in bed.pods]
            time.sleep(0.5)  # every prober started and waiting
            t0 = time.monotonic()
            bed.store.patch_metadata("Namespace", None, "bench", annotations={"shoal.io/dataplane-mode": "ambient"})
            for prober in probers:
                prober.stdin.write("go\n")
                prober.stdin.flush()
            latencies = []
            for prober in probers:
                line = prober.stdout.readline().strip()
                if line in ("", "timeout"):
                    agent_log.flush()
                    tail = "\n".join((agent_dir / "agent.log").read_text().splitlines()[-40:])
                    raise RuntimeError(f"a pod never saw capture within {PROBE_WINDOW:.0f}s; the agent's log ends:\n{tail}")
                latencies.append((float(line) - t0) * 1000)
            for prober in probers:
                prober.stdin.write("bye\n")
                prober.stdin.close()
                prober.wait(5)
            latencies.sort()
            per_repeat.append({"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                               "max": latencies[-1]})
            bed.store.patch_metadata("Namespace", None, "bench", annotations={"shoal.io/dataplane-mode": None})
            wait_for(lambda: agent_metric(bed, "shoal_node_agent_enrolled_pods") == 0, 30, "every pod out again")
            wait_for(lambda: not ztunnel.listeners, 10, "the ztunnel to drop every pod")
    finally:
        ztunnel.stop()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        subprocess.run(["ip", "netns", "exec", bed.node, *argv, "--cleanup"], env=env, capture_output=True)
        agent_log.close()
    row = {"setup": f"node-agent-{mode}", "case": "enrollment-capture", "redirect": mode, "pods": bed.count,
           "repeats": repeats}
    for key in ("p50", "p99", "max"):
        row.update(summarize([r[key] for r in per_repeat], f"{key}_ms"))
    return row


# -- the mtls case: through a local cluster -------------------------------------

LOCAL_PROBER = """
import os, socket, sys, time
trigger, out, ip, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for r in range(repeats):
    while not os.path.exists(f"{trigger}.{r}"):
        time.sleep(0.005)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((ip, 8080))
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = s.recv(12)
        except OSError:
            data = b""
        finally:
            s.close()
        if data.startswith(b"HTTP/"):
            with open(f"{out}.{r}.tmp", "w") as f:
                f.write(repr(time.monotonic()))
            os.rename(f"{out}.{r}.tmp", f"{out}.{r}")  # whole, or not there
            break
        time.sleep(0.005)
time.sleep(3600)
"""

SERVER_MANIFEST = """
apiVersion: v1
kind: Namespace
metadata:
  name: srv
  annotations: {shoal.io/dataplane-mode: ambient}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: srv}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: srv}
spec:
  nodeName: node2
  containers:
  - name: app
    command: ["python3", "-m", "http.server", "8080"]
"""


def shoal_cli(*args: str, cluster: str, input: str | None = None, timeout: float = 180) -> str:
    argv = [sys.executable, "-m", "shoal", *args[:2], "--cluster", cluster, *args[2:]]
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"shoal {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def run_local(mode: str, pods: int, repeats: int, workdir: Path) -> dict:
    from shoal.local.layout import Layout
    cluster = f"benroll{mode[:3]}{os.getpid() % 10000}"
    layout = Layout(cluster)
    files = workdir / f"mtls-{mode}"
    files.mkdir()
    agent_metric_node1 = lambda: _metric_in(layout.node_netns(1), "shoal_node_agent_enrolled_pods")  # noqa: E731
    per_repeat = []
    try:
        shoal_cli("local", "up", "--nodes", "2", "--redirect", mode, cluster=cluster)
        shoal_cli("local", "apply", "-f", "-", cluster=cluster, input=SERVER_MANIFEST)
        wait_for(lambda: (layout.store().get("Pod", "srv", "server") or {}).get("status", {}).get("podIP"), 60,
                 "the server pod")
        server_ip = layout.store().get("Pod", "srv", "server")["status"]["podIP"]
        clients = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}"]
        for i in range(pods):
            args = ", ".join(f'"{a}"' for a in ["python3", "-c", "PROBER", str(files / "go"), str(files / f"p{i}"),
                                                  server_ip, str(repeats)])
            clients.append(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: client-{i}, namespace: bench}}\n"
                           f"spec:\n  nodeName: node1\n  containers:\n  - name: app\n    command: [{args}]")
        manifest = "\n---\n".join(clients).replace('"PROBER"', json.dumps(LOCAL_PROBER))
        shoal_cli("local", "apply", "-f", "-", cluster=cluster, input=manifest)
        wait_for(lambda: sum(1 for p in layout.store().list("Pod", "bench")[0]
                             if (p.get("status") or {}).get("phase") == "Running") == pods, 120, "the client pods")
        store_ = layout.store()
        for r in range(repeats):
            (files / f"go.{r}").touch()
            time.sleep(0.3)  # every prober is refused (STRICT, not yet in the mesh)
            if any((files / f"p{i}.{r}").exists() for i in range(pods)):
                raise RuntimeError("a client reached the STRICT server before enrollment; is STRICT enforced?")
            t0 = time.monotonic()
            store_.patch_metadata("Namespace", None, "bench", annotations={"shoal.io/dataplane-mode": "ambient"})
            wait_for(lambda: all((files / f"p{i}.{r}").exists() for i in range(pods)), 60,
                     "every client's first mTLS connection")
            latencies = sorted((float((files / f"p{i}.{r}").read_text()) - t0) * 1000 for i in range(pods))
            per_repeat.append({"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                               "max": latencies[-1]})
            store_.patch_metadata("Namespace", None, "bench", annotations={"shoal.io/dataplane-mode": None})
            wait_for(lambda: agent_metric_node1() == 0, 60, "every client out of the mesh again")
    finally:
        try:
            shoal_cli("local", "down", cluster=cluster)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"warning: {e}", file=sys.stderr)
    row = {"setup": f"ambient-{mode}", "case": "enrollment-mtls", "redirect": mode, "pods": pods, "repeats": repeats}
    for key in ("p50", "p99", "max"):
        row.update(summarize([r[key] for r in per_repeat], f"{key}_ms"))
    return row


def _metric_in(ns: str, name: str) -> float | None:
    """A metric of the node agent in netns `ns`; None if it cannot be read or is not there."""
    def read() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{NODE_AGENT_PORT}/metrics", timeout=2) as response:
            return response.read().decode()
    try:
        text = netns.run_in(ns, read)
    except OSError:
        return None
    return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == name), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enroll", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="iptables,ebpf")
    parser.add_argument("--cases", default="capture,mtls")
    args = parser.parse_args(argv)
    log.setup("console", "warning")
    if os.geteuid() != 0:
        print("bench.enroll needs root (network namespaces, iptables, eBPF)", file=sys.stderr)
        return 2
    if not 1 <= args.pods <= 200 or not 1 <= args.repeats <= 20:
        print("bench.enroll: --pods must be 1..200 and --repeats 1..20", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - {"capture", "mtls"} or set(modes) - {"iptables", "ebpf"}:
        print("bench.enroll: --cases takes capture,mtls and --modes iptables,ebpf", file=sys.stderr)
        return 2
    run = Run("enroll", {"pods": args.pods, "repeats": args.repeats, "modes": modes, "cases": cases,
                         "probe_interval_ms": PROBE_INTERVAL * 1000})
    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-enroll-"))
    try:
        if "capture" in cases:
            bed = Bed(args.pods, workdir)
            try:
                print(f"capture: building {args.pods} running pods in network namespaces ...", flush=True)
                bed.create()
                for mode in modes:
                    print(f"capture: measuring {mode} ({args.repeats} repeats) ...", flush=True)
                    run.add(**run_mode(bed, mode, args.repeats))
            finally:
                bed.destroy()
        if "mtls" in cases:
            for mode in modes:
                print(f"mtls: a local cluster in {mode} mode, {args.pods} client pods ...", flush=True)
                run.add(**run_local(mode, args.pods, args.repeats, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(run.results, ["case", "redirect", "pods", "p50_ms", "p99_ms", "max_ms", "max_ms_min", "max_ms_max"],
                title="time from annotating the namespace to capture active (capture) and to the first "
                      "mTLS connection (mtls), per pod (ms)"))
    print(f"results: {run.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
