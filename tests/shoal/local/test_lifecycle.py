"""`up` and `down` of a cluster of its own: nothing of it may remain, and the host is untouched."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.cluster import LocalCluster, unique_name
from support.polling import eventually
from support.root import needs_root

from .test_cluster import host_network_state

pytestmark = needs_root("creates network namespaces, veths, cgroups")


def alive(pid: str) -> bool:
    """True while the process runs; a zombie waiting for its reaper is not running."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def host_iptables() -> str:
    out = subprocess.run(["iptables-legacy-save"], capture_output=True, text=True).stdout
    return "\n".join(l for l in out.splitlines() if not l.startswith("#"))


@contextmanager
def torn_down(cluster: LocalCluster):
    """Downs the cluster after the body if the body stopped before its own `down` (a failed
    assertion): a failing test must not leave a running cluster behind."""
    try:
        yield
    finally:
        layout = cluster.layout
        netns_left = os.path.isdir("/run/netns") and any(n.startswith(layout.prefix) for n in os.listdir("/run/netns"))
        if layout.run_dir.exists() or netns_left:
            cluster.down()


def bpf_program_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out.strip() or "[]")}


def cgroup_program_ids(cgroup: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out.strip() or "[]")}


def redirection_active(pod: dict, mode: str) -> bool:
    netns_name = os.path.basename(pod["status"]["shoal"]["netns"])
    if mode == "iptables":
        rules = subprocess.run(["ip", "netns", "exec", netns_name, "iptables-legacy-save"],
                               capture_output=True, text=True).stdout
        return "SHOAL" in rules
    out = subprocess.run(["bpftool", "cgroup", "show", pod["status"]["shoal"]["cgroup"]],
                         capture_output=True, text=True).stdout
    return "shoal_connect4" in out


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_down_leaves_nothing_and_the_host_never_changes(mode):
    """With the whole mesh up and a pod enrolled: down removes every netns, cgroup, process,
    rule, eBPF program and pin, and file; the host's links, routes and rules never change."""
    cluster = LocalCluster(unique_name(f"tl{mode[0]}"))
    name, layout = cluster.name, cluster.layout
    before = host_network_state()
    rules_before = host_iptables()

    with torn_down(cluster):
        cluster.up(2, mode)
        cluster.apply("""
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {shoal.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers: [{name: main, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  selector: {app: none}
  ports: [{port: 80}]
""")
        pod = cluster.wait_pods_ready("default", 1)["sleeper"]
        pids = Path(pod["status"]["shoal"]["cgroup"], "cgroup.procs").read_text().split()
        assert pids
        eventually(lambda: redirection_active(pod, mode), 30, f"the pod to be enrolled ({mode})", interval=0.2)
        assert host_network_state() == before, "the cluster changed the host's links or routes"
        assert host_iptables() == rules_before

        netns_names = [n for n in os.listdir("/run/netns") if n.startswith(layout.prefix)]
        assert len(netns_names) == 4  # underlay, two nodes, one pod
        # This cluster's own programs (on the pod's cgroup), so that other clusters may come and go meanwhile.
        programs = cgroup_program_ids(pod["status"]["shoal"]["cgroup"])
        assert bool(programs) == (mode == "ebpf")
        system_pids = [pid for cg in (layout.cgroup_dir / "pods").glob("shoal-system_*")
                       for pid in (cg / "cgroup.procs").read_text().split()]
        assert len(system_pids) >= 5  # control plane, and an agent and a ztunnel per node
        assert Path("/etc/netns", os.path.basename(pod["status"]["shoal"]["netns"]), "hosts").exists()

        out = cluster("down").stdout
        assert "removed" in out

        assert not [n for n in os.listdir("/run/netns") if n.startswith(layout.prefix)]
        assert not layout.cgroup_dir.exists()
        assert not layout.run_dir.exists()
        assert not list(Path("/etc/netns").glob(f"{layout.prefix}*")) if Path("/etc/netns").exists() else True
        for pid in pids + system_pids:
            assert not alive(pid), f"process {pid} survived down"
        assert not list(Path("/sys/fs/bpf").glob(f"shoal/{name}-*")), "pinned eBPF objects survived down"
        # Programs are freed once the last reference goes, a little later.
        eventually(lambda: not programs & bpf_program_ids(), 5,
                   lambda: f"eBPF programs {programs & bpf_program_ids()} to go after down")
        leftovers = subprocess.run(["pgrep", "-f", f"shoal.local.daemon --cluster {name}$"], capture_output=True)
        assert leftovers.returncode == 1, "the daemon survived down"
        assert host_network_state() == before
        assert host_iptables() == rules_before

        again = cluster("down").stdout
        assert "nothing to remove" in again


def test_down_cleans_up_after_a_crashed_daemon():
    cluster = LocalCluster(unique_name("tc"))
    layout = cluster.layout
    with torn_down(cluster):
        cluster.up(1)
        cluster.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
                      "spec: {containers: [{name: m, command: [sleep, infinity]}]}\n")
        pod = cluster.wait_pods_ready("default", 1)["p"]
        pids = Path(pod["status"]["shoal"]["cgroup"], "cgroup.procs").read_text().split()
        daemon = int(layout.daemon_pidfile.read_text())
        os.kill(daemon, 9)
        cluster("down")
        assert not [n for n in os.listdir("/run/netns") if n.startswith(layout.prefix)]
        assert not layout.cgroup_dir.exists()
        assert not layout.run_dir.exists()
        for pid in pids:
            assert not alive(pid)
