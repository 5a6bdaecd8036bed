"""Each missing prerequisite gets one message naming it and what to do; auto mode falls back and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from node_agent import netfilter, redirect
from node_agent.errors import NodeAgentError, PrerequisiteMissing
from node_agent.iptables import IptablesRedirector

from support.cli import shoal
from support.root import needs_root


@pytest.fixture
def no_bcc(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc now raises ImportError


def test_missing_bcc_is_named_with_its_package(no_bcc):
    with pytest.raises(PrerequisiteMissing) as info:
        redirect.check_ebpf()
    assert info.value.what == "bcc"
    assert "apt install python3-bpfcc" in str(info.value)


def test_missing_kernel_headers_name_the_path(monkeypatch):
    monkeypatch.setattr(redirect.platform, "release", lambda: "0.0.0-no-such-kernel")
    with pytest.raises(PrerequisiteMissing) as info:
        redirect.check_ebpf()
    assert info.value.what == "kernel headers"
    assert "/lib/modules/0.0.0-no-such-kernel/build" in str(info.value)
    assert "/usr/src" in str(info.value)


def test_missing_bpf_privilege(monkeypatch):
    monkeypatch.setattr(redirect, "_capabilities", lambda: 0)
    with pytest.raises(PrerequisiteMissing) as info:
        redirect.check_ebpf()
    assert info.value.what == "BPF privilege"
    assert "CAP_BPF" in str(info.value) and "privileged" in str(info.value)


def test_missing_cgroup_v2(tmp_path):
    with pytest.raises(PrerequisiteMissing) as info:
        redirect.check_ebpf(cgroup_root=tmp_path)
    assert info.value.what == "cgroup v2"
    assert str(tmp_path) in str(info.value)


def test_missing_iptables_legacy(monkeypatch):
    monkeypatch.setattr(netfilter.shutil, "which", lambda name: None)
    with pytest.raises(PrerequisiteMissing) as info:
        IptablesRedirector().load()
    assert info.value.what == "iptables-legacy"
    assert "apt install iptables" in str(info.value)


def test_ebpf_mode_refuses_without_bcc(no_bcc):
    with pytest.raises(PrerequisiteMissing, match="bcc"):
        redirect.choose("ebpf", "test-prereq")


def test_auto_falls_back_to_iptables_and_says_why(no_bcc):
    with capture_logs() as logs:
        capture = redirect.choose("auto", "test-prereq")
    assert capture.mode == "iptables"
    chosen = [entry for entry in logs if entry["event"] == "redirect mode chosen"]
    assert len(chosen) == 1
    assert chosen[0]["mode"] == "iptables" and "bcc" in chosen[0]["why"]


@needs_root("loads eBPF programs")
def test_auto_takes_ebpf_where_it_works_and_says_why(test_bpffs):
    with capture_logs() as logs:
        capture = redirect.choose("auto", f"test-auto-{os.getpid()}", bpffs=test_bpffs)
    try:
        assert capture.mode == "ebpf"
        chosen = [entry for entry in logs if entry["event"] == "redirect mode chosen"]
        assert chosen[0]["mode"] == "ebpf" and "loaded" in chosen[0]["why"]
    finally:
        capture.unload()


def test_unknown_mode_is_refused():
    with pytest.raises(NodeAgentError, match="unknown redirect mode 'nft'"):
        redirect.choose("nft", "x")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return shoal("node-agent", *args, check=False, timeout=60, env=env)


def test_cli_names_a_bad_node_and_a_missing_node():
    result = run_cli("--source", "local", "--node", "worker-a")
    assert result.returncode == 2
    assert "'worker-a' is not a local-cluster node name" in result.stderr
    env_free = run_cli("--source", "kube", env={"NODE_NAME": None})
    assert env_free.returncode == 2 and "--node is required" in env_free.stderr


def test_a_pod_target_with_a_bad_address_names_it():
    from node_agent.model import PodTarget
    with pytest.raises(ValueError, match="198.19.1.300"):
        PodTarget("u", "ns", "p", "198.19.1.300", "/run/netns/x")


def test_cgroup2_is_found_where_it_is_mounted(tmp_path):
    from node_agent.hostmounts import cgroup2_root
    hybrid = tmp_path / "hybrid"
    hybrid.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    unified = tmp_path / "unified"
    unified.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n")
    none = tmp_path / "none"
    none.write_text("sysfs /sys sysfs rw 0 0\n")
    assert cgroup2_root(str(hybrid)) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_root(str(unified)) == Path("/sys/fs/cgroup")
    assert cgroup2_root(str(none)) is None


@needs_root("mounts bpffs")
def test_a_bpffs_shoal_mounted_is_unmounted_once_empty_and_only_then(tmp_path):
    from node_agent.ebpf import bpffs_mounted, ensure_bpffs, release_bpffs
    path = tmp_path / "bpf"
    path.mkdir()
    try:
        ensure_bpffs(path)
        assert bpffs_mounted(path)
        (path / "shoal").mkdir()  # an agent's pins
        release_bpffs(path)
        assert bpffs_mounted(path)  # still in use
        (path / "shoal").rmdir()
        release_bpffs(path)
        assert not bpffs_mounted(path)
    finally:
        if bpffs_mounted(path):
            subprocess.run(["umount", str(path)], check=True)


@needs_root("mounts bpffs")
def test_a_bpffs_someone_else_mounted_is_left_alone(test_bpffs):
    from node_agent.ebpf import bpffs_mounted, release_bpffs
    release_bpffs(test_bpffs)
    assert bpffs_mounted(test_bpffs)


@needs_root("the agent runs iptables")
def test_cli_without_a_cluster_says_so_and_exits_1(tmp_path):
    result = run_cli("--cluster", "absent", "--node", "node1", "--redirect", "iptables", "--metrics-port", "0",
                     "--socket", str(tmp_path / "z.sock"), "--state-dir", str(tmp_path / "state"),
                     env={"SHOAL_RUN_ROOT": str(tmp_path)})
    assert result.returncode == 1
    assert "cluster 'absent' has no store" in result.stderr and "shoal local up" in result.stderr
