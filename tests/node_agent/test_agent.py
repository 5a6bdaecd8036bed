"""The `shoal node-agent` process end to end, in both modes, against a local store.

The agent runs as a real process in the test node's netns and watches a
store in a temporary run root; the test plays the ztunnel with the real
HandoffClient (listeners 15001/15006 in the pod's netns) and drives pods and
namespaces through the store, the way `shoal local apply` does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading

import pytest

from shoal import netns, store
from shoal.contracts import NODE_AGENT_PORT
from shoal.handoff_io import HandoffClient

from na_topology import (POD_IPS, Server, bpftool_cgroup, client_code, listen_in, original_dst, sockhash_cookie,
                         socket_cookie)
from node_agent import libbpf, netfilter
from support import metrics
from support.cli import SHOAL
from support.net import http_get
from support.polling import eventually
from support.rules import shoal_rules
from support.root import needs_root

pytestmark = needs_root("network namespaces, iptables, eBPF")

CLUSTER = "natest"


class PlayedZtunnel:
    """A ztunnel stand-in: the real HandoffClient in a thread, listeners in each pod's netns."""

    def __init__(self, socket_path):
        self.listeners: dict[str, tuple[socket.socket, socket.socket]] = {}
        self.adds: list[str] = []
        self.deletes: list[str] = []
        self.inodes: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.client = None
        self.path = socket_path
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.client = HandoffClient(self.path, self, retry_seconds=0.05, max_retry_seconds=0.2)
        self.loop.run_until_complete(self.client.run())

    async def add_workload(self, workload, netns_fd):
        try:
            self.adds.append(workload.uid)
            self.inodes[workload.uid] = os.fstat(netns_fd).st_ino
            if workload.uid not in self.listeners:
                self.listeners[workload.uid] = (listen_in(netns_fd, 15001), listen_in(netns_fd, 15006))
            return self.listeners[workload.uid][1]
        finally:
            os.close(netns_fd)

    async def del_workload(self, uid):
        self.deletes.append(uid)
        for sock in self.listeners.pop(uid, ()):
            sock.close()

    def stop(self):
        if self.client:
            self.loop.call_soon_threadsafe(self.client.stop)
        self.thread.join(5)
        for pair in self.listeners.values():
            for sock in pair:
                sock.close()


@pytest.fixture
def cluster_store(tmp_path, topo):
    s = store.Store(CLUSTER, root=tmp_path / "run")
    s.init()
    s.apply({"kind": "Namespace", "metadata": {"name": "demo"}})
    for key, pod in topo.pods.items():
        s.apply({"kind": "Pod", "metadata": {"name": pod.name, "namespace": "demo"},
                 "spec": {"nodeName": "node1", "serviceAccountName": f"sa-{key}", "containers": []}})
        stored = s.get("Pod", "demo", pod.name)
        topo.pods[key] = type(pod)(stored["metadata"]["uid"], "demo", pod.name, pod.ip, pod.netns, pod.cgroup,
                                   f"sa-{key}")
        s.update_status("Pod", "demo", pod.name, {
            "phase": "Running", "podIP": pod.ip, "hostIP": "198.18.0.1",
            "shoal": {"netns": pod.netns, "cgroup": pod.cgroup}})
    return s


class AgentProcess:
    def __init__(self, topo, mode, tmp_path, bpffs):
        self.topo, self.mode, self.tmp = topo, mode, tmp_path
        self.socket = tmp_path / "ztunnel.sock"
        self.state = tmp_path / "state"
        self.argv = [*SHOAL, "--log-format", "json", "node-agent", "--source", "local",
                     "--cluster", CLUSTER, "--node", "node1", "--redirect", mode, "--socket", str(self.socket),
                     "--state-dir", str(self.state), "--bpffs", str(bpffs), "--metrics-port", str(NODE_AGENT_PORT),
                     "--kubelet-cgroup", str(topo.kubelet_cgroup)]
        self.env = {**os.environ, "SHOAL_RUN_ROOT": str(tmp_path / "run")}
        self.proc = None
        self.ztunnel = None
        self.log = open(tmp_path / "agent.log", "a")

    def start(self):
        self.proc = netns.popen(self.topo.node, self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        eventually(lambda: self.http("/healthz/ready")[0] == 200, 20, "agent readiness", interval=0.02)

    def http(self, path):
        return http_get(f"http://127.0.0.1:{NODE_AGENT_PORT}{path}", netns=self.topo.node, timeout=2)

    def metric(self, name):
        return metrics.value(self.http("/metrics")[1], name)

    def enrolled(self):
        """The pods it has redirected and the ztunnel has acked; None while it does not answer."""
        return self.metric("shoal_node_agent_enrolled_pods")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(10) == 0

    def cleanup(self):
        result = netns.run(self.topo.node, [a for a in self.argv if a] + ["--cleanup"], check=False, env=self.env)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def start_agent(topo, cluster_store, tmp_path, test_bpffs):
    """`start_agent(mode)` runs `shoal node-agent` on the test node against `cluster_store`, then a played
    ztunnel on its socket, and returns both. After the test, whatever state it left them in, the
    ztunnel stops, the agent is killed if it still runs, and `--cleanup` removes what it installed."""
    started = []

    def start(mode):
        agent = AgentProcess(topo, mode, tmp_path, test_bpffs)
        started.append(agent)
        agent.start()
        agent.ztunnel = PlayedZtunnel(agent.socket)
        return agent, agent.ztunnel

    yield start
    for agent in started:
        if agent.ztunnel:
            agent.ztunnel.stop()
        if agent.proc and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        agent.cleanup()
        agent.log.close()


def outbound_works(topo, ztunnel, uid, port=8080) -> None:
    outbound = ztunnel.listeners[uid][0]
    server = Server(outbound, b"via-ztunnel")
    result = topo.run_in_pod("a", client_code(POD_IPS["b"], port))
    server.result()
    assert result.returncode == 0, result.stderr
    assert server.data == b"hello"
    assert original_dst(server.conn) == (POD_IPS["b"], port)
    server.conn.close()


def counts(topo, pod) -> tuple[int, int]:
    """(SHOAL jump rules in the pod's nat table, shoal programs on the pod's cgroup)."""
    saved = netfilter.save(topo.pod_netns("a"))
    return saved.count("-j SHOAL_"), len(bpftool_cgroup(pod.cgroup))


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_agent_enrolls_survives_kill9_and_unenrolls(mode, topo, cluster_store, test_bpffs, start_agent):
    agent, ztunnel = start_agent(mode)
    pod_a, pod_b = topo.pods["a"], topo.pods["b"]
    assert agent.enrolled() == 0

    # Annotating the namespace enrolls its running pods; pod b opts out.
    cluster_store.patch_metadata("Pod", "demo", pod_b.name, labels={"istio.io/dataplane-mode": "none"})
    cluster_store.patch_metadata("Namespace", None, "demo", annotations={"shoal.io/dataplane-mode": "ambient"})
    eventually(lambda: agent.enrolled() == 1, what="pod a enrolled")
    assert ztunnel.adds == [pod_a.uid]
    assert ztunnel.inodes[pod_a.uid] == os.stat(pod_a.netns).st_ino  # the fd received is the pod's netns
    assert agent.metric("shoal_node_agent_enroll_seconds_count") == 1
    outbound_works(topo, ztunnel, pod_a.uid)
    assert shoal_rules(topo.pod_netns("b")) == []
    before = counts(topo, pod_a)

    # kill -9: redirection stays, capture goes on while the agent is away.
    agent.kill9()
    outbound_works(topo, ztunnel, pod_a.uid)
    agent.start()
    eventually(lambda: ztunnel.adds.count(pod_a.uid) == 2, what="replay to the reconnected ztunnel")
    eventually(lambda: agent.enrolled() == 1, what="enrolled after restart")
    assert counts(topo, pod_a) == before  # nothing installed twice
    assert agent.metric("shoal_node_agent_enroll_seconds_count") == 0  # not a new enrollment
    outbound_works(topo, ztunnel, pod_a.uid, port=8081)

    # SIGTERM: clean exit, redirection left in place.
    agent.stop()
    assert counts(topo, pod_a) == before
    agent.start()
    eventually(lambda: agent.enrolled() == 1, what="enrolled after SIGTERM")

    # The pod opts out: redirection removed, the ztunnel told.
    cluster_store.patch_metadata("Pod", "demo", pod_a.name, annotations={"shoal.io/dataplane-mode": "none"})
    eventually(lambda: pod_a.uid in ztunnel.deletes, what="DelWorkload")
    eventually(lambda: counts(topo, pod_a) == (0, 0), what="redirection removed")
    assert agent.enrolled() == 0

    # Back in, then the namespace annotation goes: out again.
    cluster_store.patch_metadata("Pod", "demo", pod_a.name, annotations={"shoal.io/dataplane-mode": None})
    eventually(lambda: agent.enrolled() == 1, what="re-enrolled")
    assert counts(topo, pod_a) == before
    outbound_works(topo, ztunnel, pod_a.uid, port=8082)
    cluster_store.patch_metadata("Namespace", None, "demo", annotations={"shoal.io/dataplane-mode": None})
    eventually(lambda: counts(topo, pod_a) == (0, 0), what="removed with the namespace annotation")

    # Enrolled again, then the agent is told to clean up: nothing of it is left.
    cluster_store.patch_metadata("Namespace", None, "demo", labels={"istio.io/dataplane-mode": "ambient"})
    eventually(lambda: agent.enrolled() == 1, what="enrolled by Istio's label")
    assert counts(topo, pod_a) == before
    agent.stop()
    agent.cleanup()
    assert counts(topo, pod_a) == (0, 0)
    assert shoal_rules(topo.node) == []
    assert not (test_bpffs / "shoal").exists() or not any((test_bpffs / "shoal").iterdir())
    assert bpftool_cgroup(str(topo.ztunnel_cgroup)) == []


def test_deleting_a_pod_unenrolls_it(topo, cluster_store, start_agent):
    cluster_store.patch_metadata("Namespace", None, "demo", annotations={"shoal.io/dataplane-mode": "ambient"})
    agent, ztunnel = start_agent("iptables")
    eventually(lambda: agent.enrolled() == 2, what="both pods enrolled")
    pod_b = topo.pods["b"]
    cluster_store.delete("Pod", "demo", pod_b.name)
    eventually(lambda: pod_b.uid in ztunnel.deletes, what="DelWorkload for the deleted pod")
    eventually(lambda: shoal_rules(topo.pod_netns("b")) == [], what="rules removed")
    assert agent.enrolled() == 1


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_a_pod_deleted_while_the_agent_was_down_is_cleaned_up_at_restart(mode, topo, cluster_store, test_bpffs,
                                                                         start_agent):
    cluster_store.patch_metadata("Namespace", None, "demo", annotations={"shoal.io/dataplane-mode": "ambient"})
    agent, ztunnel = start_agent(mode)
    eventually(lambda: agent.enrolled() == 2, what="both pods enrolled")
    pod_a, pod_b = topo.pods["a"], topo.pods["b"]
    agent.kill9()
    cluster_store.delete("Pod", "demo", pod_b.name)  # its netns and cgroup stay: only the ledger knows
    agent.start()
    eventually(lambda: pod_b.uid in ztunnel.deletes, what="the replay to leave pod b out")
    eventually(lambda: agent.enrolled() == 1, what="pod a enrolled again")
    assert shoal_rules(topo.pod_netns("b")) == []
    assert bpftool_cgroup(pod_b.cgroup) == []
    if mode == "iptables":
        assert netfilter.save(topo.pod_netns("a")).count("-j SHOAL_") == 2
    else:
        assert len(bpftool_cgroup(pod_a.cgroup)) == 6
        sockhash = libbpf.get_pinned(str(next(test_bpffs.glob("shoal/*/*/sockhash"))))
        try:  # the removed pod's address steers nowhere; pod a's steers to its listener, and carries traffic
            assert sockhash_cookie(sockhash, pod_b.ip) is None
            eventually(lambda: sockhash_cookie(sockhash, pod_a.ip) == socket_cookie(ztunnel.listeners[pod_a.uid][1]),
                       what="pod a's key holding its listener")
        finally:
            os.close(sockhash)
        inbound = Server(ztunnel.listeners[pod_a.uid][1], b"inbound")
        result = topo.run_in_pod("b", client_code(pod_a.ip, 8080))
        inbound.result()
        assert result.returncode == 0, result.stderr
        assert inbound.data == b"hello" and original_dst(inbound.conn) == (pod_a.ip, 8080)
        inbound.conn.close()
    outbound_works(topo, ztunnel, pod_a.uid)


@pytest.mark.parametrize("first,then", [("iptables", "ebpf"), ("ebpf", "iptables")])
def test_a_restart_in_another_mode_leaves_nothing_of_the_old_one(first, then, topo, cluster_store, test_bpffs,
                                                                  start_agent):
    agent, ztunnel = start_agent(first)
    pod_a, pod_b = topo.pods["a"], topo.pods["b"]
    cluster_store.patch_metadata("Pod", "demo", pod_b.name, labels={"istio.io/dataplane-mode": "none"})
    cluster_store.patch_metadata("Namespace", None, "demo", annotations={"shoal.io/dataplane-mode": "ambient"})
    eventually(lambda: agent.enrolled() == 1, what=f"enrolled in {first} mode")
    rules, programs = counts(topo, pod_a)
    assert (rules > 0, programs > 0) == (first == "iptables", first == "ebpf")
    agent.stop()  # SIGTERM leaves the first mode's redirection in place

    agent.argv[agent.argv.index(first)] = then
    agent.start()
    eventually(lambda: agent.enrolled() == 1, what=f"enrolled in {then} mode")
    eventually(lambda: (lambda r, p: (r > 0, p > 0) == (then == "iptables", then == "ebpf"))(*counts(topo, pod_a)),
               what=f"only {then} redirection in the pod")
    outbound_works(topo, ztunnel, pod_a.uid, port=8083)
    if then == "iptables":
        assert not (test_bpffs / "shoal").exists() or not any((test_bpffs / "shoal").iterdir())
