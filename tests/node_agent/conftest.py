"""Fixtures of the node agent's tests: a real two-pod node, a private bpffs, both redirect modes."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.root import IS_ROOT


@pytest.fixture(scope="session")
def topo():
    if not IS_ROOT:
        pytest.skip("needs root: network namespaces, iptables, eBPF, cgroups")
    from na_topology import Topology
    topology = Topology()
    try:
        topology.create()
        topology.enter_ztunnel_cgroup()
        yield topology
    finally:
        topology.destroy()


@pytest.fixture(scope="session")
def test_bpffs(tmp_path_factory):
    """A bpffs of our own, so tests pin nothing in the host's /sys/fs/bpf."""
    if not IS_ROOT:
        pytest.skip("needs root to mount bpffs")
    path = tmp_path_factory.mktemp("bpffs")
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# Module scope, not session: alive, it keeps pins in the shared bpffs and its program on the topology's
# ztunnel cgroup, which test_agent's node agent (detaching every other shoal program there) and its
# "nothing left" checks would meet in any module that ran after one of its users.
@pytest.fixture(scope="module", params=["iptables", "ebpf"])
def redirection(request, topo, test_bpffs, tmp_path_factory):
    from node_agent.redirect import Redirection, choose
    capture = choose(request.param, f"test-{os.getpid()}", bpffs=test_bpffs)
    r = Redirection(capture, tmp_path_factory.mktemp(f"state-{request.param}"), node_netns=topo.node,
                    kubelet_cgroup=str(topo.kubelet_cgroup))
    r.attach_ztunnel(topo.ztunnel_cgroup)
    try:
        yield r
    finally:
        r.cleanup()
        r.close()
