"""shoal-cni in a real CNI chain, against a real node agent, as a runtime runs it.

The node: a network namespace where Debian's `bridge` (or `ptp`) and `host-local` plugins, then
shoal-cni, run with the CNI_* environment and their config on stdin (support.cni
plays the runtime's part, libcni's order and cached results included). The node
agent runs as `shoal node-agent --cni` in that netns against a local store, installs
shoal-cni into a bin dir and chains it into the conflist of the test's own; the
ztunnel's part is played with the real hand-off client, which holds 15001 in each
pod it is given.

It shows: ADD returns only once the pod's capture is in place and the ztunnel has the
pod (the first connection after ADD is captured); a pod not enrolled passes at once;
with the agent stopped, ADD of an enrolled pod fails naming the cause, while a pod
not enrolled still starts, and once the agent is back the same pod starts captured;
CHECK finds capture that went missing; DEL takes capture out and tells the ztunnel;
and --cleanup leaves the conflist byte-for-byte as it was and the plugin gone. All of it twice:
on a node that holds legacy rules, and on one that holds only nft rules, where the pods' rules
must land in the node's backend and never in the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from shoal import netns, store
from shoal.contracts import NODE_AGENT_PORT
from shoal.handoff_io import HandoffClient

from na_topology import listen_in, original_dst
from support.cli import SHOAL
from support.cni import SYSTEM_PLUGINS, CniFailed, Runtime, Sandbox
from support.net import http_get
from support.polling import eventually
from support.rules import shoal_rules
from support.root import needs_root

pytestmark = needs_root("network namespaces, CNI plugins, iptables")

TAG = f"cni{os.getpid()}"
NODE = f"shoal-{TAG}-node1"
CGROUP = Path("/sys/fs/cgroup/unified") / f"shoal-{TAG}"
KUBEPODS = CGROUP / "kubepods"  # where a kubelet whose cgroupRoot is CGROUP (cgroupfs driver) puts pods
SUBNET = "198.19.200.0/24"
OUTSIDE = ("198.18.99.1", 8080)  # an address nobody serves: only capture can answer it


class ZtunnelStandIn:
    """The hand-off client in a thread; for each pod it is given it listens on 15001 in the pod's netns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.added: dict[str, int] = {}  # uid -> inode of the netns received
        self.deleted: list[str] = []
        self.outbound: dict[str, socket.socket] = {}
        self.loop = asyncio.new_event_loop()
        self.client: HandoffClient | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.client = HandoffClient(self.path, self, retry_seconds=0.05, max_retry_seconds=0.2)
        self.loop.run_until_complete(self.client.run())

    async def add_workload(self, workload, netns_fd):
        try:
            self.added[workload.uid] = os.fstat(netns_fd).st_ino
            if workload.uid not in self.outbound:
                self.outbound[workload.uid] = listen_in(netns_fd, 15001)
            return None  # REDIRECT needs no inbound listener handed back
        finally:
            os.close(netns_fd)

    async def del_workload(self, uid):
        self.deleted.append(uid)
        sock = self.outbound.pop(uid, None)
        if sock:
            sock.close()

    def stop(self) -> None:
        if self.client:
            self.loop.call_soon_threadsafe(self.client.stop)
        self.thread.join(10)
        for sock in self.outbound.values():
            sock.close()


class Agent:
    def __init__(self, base: Path, wait_seconds: float = 60, redirect: str = "iptables", bpffs: Path | None = None):
        self.base = base
        self.argv = [*SHOAL, "--log-format", "json", "node-agent", "--source", "local", "--cluster", TAG,
                     "--node", "node1", "--redirect", redirect, "--socket", str(base / "ztunnel.sock"),
                     *(["--bpffs", str(bpffs)] if bpffs else []),
                     "--state-dir", str(base / "state"), "--kubelet-cgroup", str(CGROUP / "kubelet"),
                     "--cni", "--cni-bin-dir", str(base / "bin"), "--cni-conf-dir", str(base / "net.d"),
                     "--cni-socket", str(base / "cni.sock"), "--cni-wait-seconds", str(wait_seconds),
                     "--kubelet-cgroup-root", str(CGROUP.relative_to(CGROUP.parent))]
        self.env = {**os.environ, "SHOAL_RUN_ROOT": str(base / "run")}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.base / "agent.log", "a") as log:
            self.proc = netns.popen(NODE, self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        eventually(lambda: self.ready() or self.proc.poll() is not None, 120, "the node agent to be ready")
        assert self.proc.poll() is None, f"the agent exited:\n{self.log()}"

    def ready(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{NODE_AGENT_PORT}/healthz/ready", netns=NODE, timeout=2)[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return (self.base / "agent.log").read_text()[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(60) == 0, self.log()

    def cleanup(self) -> subprocess.CompletedProcess:
        return netns.run(NODE, [*self.argv, "--cleanup"], check=False, env=self.env)


def conflist_text(plugin: str, ipam_dir: Path) -> bytes:
    """The node's own network: `bridge` (a bridge and a veth per pod) or `ptp` (a veth per pod, routed)."""
    ipam = {"type": "host-local", "subnet": SUBNET, "dataDir": str(ipam_dir), "routes": [{"dst": "0.0.0.0/0"}]}
    first = {"type": "bridge", "bridge": f"br{os.getpid()}"[:15], "isGateway": True, "ipMasq": False, "ipam": ipam} \
        if plugin == "bridge" else {"type": "ptp", "ipMasq": False, "ipam": ipam}
    return json.dumps({"cniVersion": "1.0.0", "name": TAG, "plugins": [first]}, indent=1).encode()


@pytest.fixture(scope="module", params=[("legacy", "bridge"), ("nft", "ptp")], ids=["legacy-bridge", "nft-ptp"])
def node(request, tmp_path_factory):
    """The node, holding one rule of its own in the iptables backend of the param (as kube-proxy would): the
    agent detects it and writes the pods' rules there. Its network is the param's standard plugin."""
    backend, plugin = request.param
    if not (SYSTEM_PLUGINS / plugin).exists():
        pytest.skip(f"no {SYSTEM_PLUGINS}/{plugin}: install containernetworking-plugins (scripts/setup.sh does)")
    base = tmp_path_factory.mktemp("cni")
    for directory in ("bin", "net.d", "ipam"):
        (base / directory).mkdir()
    original = conflist_text(plugin, base / "ipam")  # the bytes --cleanup must give back
    (base / "net.d" / "10-test.conflist").write_bytes(original)
    netns.create(NODE)
    netns.run(NODE, ["ip", "link", "set", "lo", "up"])
    netns.run(NODE, [f"iptables-{backend}", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"])
    (CGROUP / "kubelet").mkdir(parents=True, exist_ok=True)
    cluster = store.Store(TAG, root=base / "run")
    cluster.init()
    cluster.apply({"kind": "Namespace", "metadata": {"name": "demo", "labels": {"shoal.io/dataplane-mode": "ambient"}}})
    cluster.apply({"kind": "Namespace", "metadata": {"name": "plain"}})
    try:
        yield base, cluster, original, backend
    finally:
        netns.remove(NODE)
        for directory in (CGROUP / "kubelet", CGROUP):
            try:
                directory.rmdir()
            except OSError:
                pass


@pytest.fixture
def agent(node):
    base, _, _, _ = node
    running = Agent(base)
    running.start()
    ztunnel = ZtunnelStandIn(base / "ztunnel.sock")
    try:
        yield running, ztunnel
    finally:
        ztunnel.stop()
        if running.proc and running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        running.cleanup()


@pytest.fixture
def agent_without_ztunnel(node):
    base, _, _, _ = node
    running = Agent(base, wait_seconds=3)
    running.start()
    try:
        yield running
    finally:
        if running.proc and running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        running.cleanup()


@pytest.fixture
def pods(node):
    """`pods(namespace, name)` applies a Pod on node1 and makes, as a kubelet and its runtime do before the
    CNI ADD, its pod-level cgroup (kubepods/besteffort/pod<uid> under the test's cgroup root) and its
    sandbox's netns; all go after the test."""
    base, cluster, _, _ = node
    made = []

    def make(namespace: str, name: str) -> Sandbox:
        pod = cluster.apply({"kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                             "spec": {"nodeName": "node1", "containers": [{"name": "app"}]}})
        uid = pod["metadata"]["uid"]
        (KUBEPODS / "besteffort" / f"pod{uid}").mkdir(parents=True)
        sandbox_netns = f"shoal-{TAG}-{name}"
        netns.create(sandbox_netns)
        made.append((namespace, name, sandbox_netns, uid))
        return Sandbox(uuid.uuid4().hex, str(netns.path(sandbox_netns)), namespace, name, uid)

    yield make
    for namespace, name, sandbox_netns, uid in made:  # each step on its own: one failing leaves no other behind
        with contextlib.suppress(Exception):
            cluster.delete("Pod", namespace, name)
        netns.remove(sandbox_netns)
        with contextlib.suppress(FileNotFoundError):
            (KUBEPODS / "besteffort" / f"pod{uid}").rmdir()
    for top in (KUBEPODS / "besteffort", KUBEPODS):
        if top.exists():
            top.rmdir()


def runtime(node) -> Runtime:
    base, _, _, _ = node
    return Runtime(NODE, base / "net.d" / "10-test.conflist", (base / "bin", SYSTEM_PLUGINS))


def rules(node, sandbox: Sandbox) -> str:
    """The pod's rules in the node's backend; asserts there are none of shoal's in the other."""
    used = node[3]
    other = "nft" if used == "legacy" else "legacy"
    saved = {name: subprocess.run(["nsenter", f"--net={sandbox.netns}", f"iptables-{name}-save"], capture_output=True,
                                  text=True, check=True).stdout for name in (used, other)}
    assert "SHOAL" not in saved[other], f"shoal's rules went into {other}, not the node's {used}"
    return saved[used]


def pod_ip(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def connect_outside(sandbox: Sandbox) -> subprocess.CompletedProcess:
    """The pod's app: a process in the pod's netns and in its cgroup (where the eBPF mode's programs act)."""
    code = (f"import socket\ns = socket.create_connection({OUTSIDE!r}, timeout=5)\ns.sendall(b'first')\n"
            f"print(s.recv(100).decode())")
    procs = KUBEPODS / "besteffort" / f"pod{sandbox.uid}" / "cgroup.procs"

    def in_pod_cgroup():
        procs.write_text(str(os.getpid()))
    return subprocess.run(["nsenter", f"--net={sandbox.netns}", "python3", "-c", code], capture_output=True,
                          text=True, timeout=60, preexec_fn=in_pod_cgroup)


def first_connection_is_captured(ztunnel: ZtunnelStandIn, sandbox: Sandbox) -> None:
    listener = ztunnel.outbound[sandbox.uid]
    accepted = {}

    def accept():
        conn, _ = listener.accept()
        accepted["dst"] = original_dst(conn)
        accepted["data"] = conn.recv(100)
        conn.sendall(b"from-ztunnel")
        conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    result = connect_outside(sandbox)
    thread.join(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "from-ztunnel"
    assert accepted == {"dst": OUTSIDE, "data": b"first"}


def checks(chain: Runtime, sandbox: Sandbox) -> bool:
    try:
        chain.check(sandbox)
        return True
    except CniFailed:
        return False


def test_add_returns_with_the_pod_captured_check_finds_missing_capture_del_releases_it(node, agent, pods):
    running, ztunnel = agent
    chain = runtime(node)
    conflist = json.loads(chain.conflist.read_text())
    assert [p["type"] for p in conflist["plugins"]][1:] == ["shoal-cni"], "the agent chains shoal-cni last"

    sandbox = pods("demo", "web")
    result = chain.add(sandbox)
    assert pod_ip(result).startswith("198.19.200."), result  # prevResult passed through: bridge's result
    # Nothing is waited for after ADD returned: the capture and the hand-off are already done.
    assert ztunnel.added.get(sandbox.uid) == os.stat(sandbox.netns).st_ino
    saved = rules(node, sandbox)
    assert "-A SHOAL_OUTPUT -p tcp -j REDIRECT --to-ports 15001" in saved, saved
    # The pod's cgroup, made by the kubelet before the sandbox, is named from the first packet on.
    assert (f'-A SHOAL_OUTPUT -m mark --mark 0x539 -m cgroup ! --path "{CGROUP.name}/kubepods/besteffort/'
            f'pod{sandbox.uid}" -j RETURN') in saved, saved
    first_connection_is_captured(ztunnel, sandbox)
    chain.check(sandbox)

    subprocess.run(["nsenter", f"--net={sandbox.netns}", f"iptables-{node[3]}", "-t", "nat", "-F", "SHOAL_OUTPUT"],
                   check=True)
    with pytest.raises(CniFailed) as failed:
        chain.check(sandbox)
    assert failed.value.plugin == "shoal-cni" and "capture is missing" in failed.value.msg, failed.value.error
    eventually(lambda: checks(chain, sandbox), 60, "the agent to put the capture back")

    chain.delete(sandbox)
    assert sandbox.uid in ztunnel.deleted
    assert shoal_rules(sandbox.netns) == []


def test_a_pod_not_enrolled_passes_at_once_uncaptured(node, agent, pods):
    running, ztunnel = agent
    chain = runtime(node)
    sandbox = pods("plain", "web")
    result = chain.add(sandbox)
    assert pod_ip(result).startswith("198.19.200.")
    assert shoal_rules(sandbox.netns) == []
    assert sandbox.uid not in ztunnel.added
    chain.delete(sandbox)


def test_with_the_agent_stopped_an_enrolled_pod_waits_with_the_cause_and_starts_captured_once_it_is_back(
        node, agent, pods):
    running, ztunnel = agent
    chain = runtime(node)
    running.stop()

    late = pods("demo", "late")
    with pytest.raises(CniFailed) as failed:
        chain.add(late)
    assert failed.value.plugin == "shoal-cni", failed.value
    assert "node agent is not reachable" in failed.value.msg and "demo/late" in failed.value.msg
    assert "would be enrolled" in failed.value.msg
    assert shoal_rules(late.netns) == []
    links = subprocess.run(["nsenter", f"--net={late.netns}", "ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    assert "eth0" not in links, "the runtime's DEL over the failed chain takes the plugin's veth away again"

    plain = pods("plain", "early")
    assert pod_ip(chain.add(plain)).startswith("198.19.200."), "a pod not enrolled does not wait for the agent"
    chain.delete(plain)

    running.start()
    result = chain.add(late)  # the kubelet's retry
    assert pod_ip(result).startswith("198.19.200.")
    assert ztunnel.added.get(late.uid) == os.stat(late.netns).st_ino
    first_connection_is_captured(ztunnel, late)
    chain.delete(late)


def test_cleanup_takes_shoal_cni_out_leaving_the_conflist_byte_for_byte(node, agent):
    running, _ = agent
    base, _, original, _ = node
    assert (base / "bin" / "shoal-cni").exists()
    assert (base / "net.d" / "10-test.conflist").read_bytes() != original
    running.stop()
    result = running.cleanup()
    assert result.returncode == 0, result.stderr
    assert (base / "net.d" / "10-test.conflist").read_bytes() == original
    assert sorted(p.name for p in (base / "bin").iterdir()) == []
    assert not (base / "cni.sock").exists() and not (base / "cni-enrollment.json").exists()


def test_an_agent_that_cannot_capture_fails_add_naming_the_cause(node, agent_without_ztunnel, pods):
    chain = runtime(node)
    sandbox = pods("demo", "alone")
    with pytest.raises(CniFailed) as failed:
        chain.add(sandbox)
    assert failed.value.plugin == "shoal-cni", failed.value
    assert "could not capture pod demo/alone" in failed.value.msg
    assert "no ztunnel is connected to the hand-off socket" in failed.value.msg, failed.value.msg
    assert shoal_rules(sandbox.netns) == []


@pytest.fixture
def ebpf_agent(node, tmp_path):
    """The agent in the eBPF mode, with a bpffs of the test's own; this test process plays the ztunnel from a
    cgroup of its own (the agent attaches the SO_ORIGINAL_DST programs to the ztunnel's cgroup)."""
    base, _, _, _ = node
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    home = next(CGROUP.parent / line[3:].lstrip("/") for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.startswith("0::"))
    ztunnel_cgroup = CGROUP / "ztunnel"
    ztunnel_cgroup.mkdir(exist_ok=True)
    (ztunnel_cgroup / "cgroup.procs").write_text(str(os.getpid()))
    running = Agent(base, redirect="ebpf", bpffs=bpffs)
    ztunnel = None
    try:
        running.start()
        ztunnel = ZtunnelStandIn(base / "ztunnel.sock")
        yield running, ztunnel, bpffs
    finally:
        if ztunnel:
            ztunnel.stop()
        if running.proc and running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        cleaned = running.cleanup()
        (home / "cgroup.procs").write_text(str(os.getpid()))
        ztunnel_cgroup.rmdir()
        left = sorted(str(p) for p in (bpffs / "shoal").rglob("*"))  # the kernel's own *.debug files stay
        subprocess.run(["umount", str(bpffs)], check=True)
        assert cleaned.returncode == 0 and left == [], (cleaned.stderr, left)


@pytest.mark.parametrize("node", [("legacy", "bridge")], indirect=True, ids=["ebpf"])
def test_in_the_ebpf_mode_add_returns_with_the_pods_cgroup_captured(node, ebpf_agent, pods):
    running, ztunnel, _ = ebpf_agent
    chain = runtime(node)
    sandbox = pods("demo", "bpf")
    chain.add(sandbox)
    assert ztunnel.added.get(sandbox.uid) == os.stat(sandbox.netns).st_ino
    assert shoal_rules(sandbox.netns) == [], "the eBPF mode writes no iptables rules"
    first_connection_is_captured(ztunnel, sandbox)
    chain.check(sandbox)
    chain.delete(sandbox)
    assert sandbox.uid in ztunnel.deleted
