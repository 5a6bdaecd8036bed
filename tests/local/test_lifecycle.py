"""`up` and `down` of a cluster of its own: nothing of it may remain, and the host is untouched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from shoal.local.layout import Layout

from .conftest import Cluster, needs_root
from .test_cluster import host_network_state

pytestmark = needs_root


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


def test_down_leaves_nothing_and_the_host_never_changes():
    name = f"tl{os.getpid() % 100000}"
    cluster, layout = Cluster(name), Layout(name)
    before = host_network_state()
    rules_before = host_iptables()

    cluster("up", "--nodes", "2", "--redirect", "iptables")
    cluster.apply("""
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
    assert host_network_state() == before, "the cluster changed the host's links or routes"
    assert host_iptables() == rules_before

    netns_names = [n for n in os.listdir("/run/netns") if n.startswith(layout.prefix)]
    assert len(netns_names) == 4  # underlay, two nodes, one pod
    assert Path("/etc/netns", os.path.basename(pod["status"]["shoal"]["netns"]), "hosts").exists()

    out = cluster("down").stdout
    assert "removed" in out

    assert not [n for n in os.listdir("/run/netns") if n.startswith(layout.prefix)]
    assert not layout.cgroup_dir.exists()
    assert not layout.run_dir.exists()
    assert not list(Path("/etc/netns").glob(f"{layout.prefix}*")) if Path("/etc/netns").exists() else True
    for pid in pids:
        assert not alive(pid), f"pod process {pid} survived down"
    leftovers = subprocess.run(["pgrep", "-f", f"shoal.local.daemon --cluster {name}$"], capture_output=True)
    assert leftovers.returncode == 1, "the daemon survived down"
    assert host_network_state() == before
    assert host_iptables() == rules_before

    again = cluster("down").stdout
    assert "nothing to remove" in again


def test_down_cleans_up_after_a_crashed_daemon():
    name = f"tc{os.getpid() % 100000}"
    cluster, layout = Cluster(name), Layout(name)
    cluster("up", "--nodes", "1", "--redirect", "iptables")
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
