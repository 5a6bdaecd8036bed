"""Finding a Kubernetes pod's sandbox (netns, cgroup) from /proc, for both cgroup drivers."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.discover import find_sandbox, with_sandbox

UID = "3f1c2a9e-1111-4c3b-9d2e-abcdefabcdef"


def fake_proc(tmp_path: Path, processes: dict[int, str]) -> Path:
    proc = tmp_path / "proc"
    for pid, cgroup in processes.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
    (proc / "self").mkdir(parents=True, exist_ok=True)  # not a pid: ignored
    return proc


@pytest.mark.parametrize("sandbox_cgroup, container_cgroup, pod_cgroup", [
    (f"/kubepods/burstable/pod{UID}/aaaa", f"/kubepods/burstable/pod{UID}/bbbb", f"kubepods/burstable/pod{UID}"),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-a.scope",
     f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-b.scope",
     f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice"),
])
def test_the_oldest_process_of_the_pod_is_its_sandbox(tmp_path, sandbox_cgroup, container_cgroup, pod_cgroup):
    proc = fake_proc(tmp_path, {120: sandbox_cgroup, 340: container_cgroup, 99: "/system.slice/kubelet.service",
                                77: "/kubepods/burstable/podOTHER/cccc"})
    sandbox = find_sandbox(UID, proc, Path("/sys/fs/cgroup"))
    assert sandbox.pid == 120
    assert sandbox.netns == str(proc / "120" / "ns" / "net")
    assert sandbox.cgroup == f"/sys/fs/cgroup/{pod_cgroup}"


def test_a_pod_not_on_this_node_has_no_sandbox(tmp_path):
    proc = fake_proc(tmp_path, {5: "/kubepods/burstable/podOTHER/x"})
    assert find_sandbox(UID, proc) is None
    pod = {"metadata": {"uid": UID}, "status": {"phase": "Running"}}
    assert with_sandbox(pod, proc) is pod


def test_with_sandbox_fills_status_and_keeps_what_the_kubelet_wrote(tmp_path):
    proc = fake_proc(tmp_path, {42: f"/kubepods/pod{UID}/c"})
    pod = {"metadata": {"uid": UID}, "status": {"phase": "Running", "podIP": "10.0.0.5"}}
    filled = with_sandbox(pod, proc, Path("/cg"))
    assert filled["status"]["shoal"] == {"netns": str(proc / "42" / "ns" / "net"), "cgroup": f"/cg/kubepods/pod{UID}"}
    assert filled["status"]["podIP"] == "10.0.0.5" and "shoal" not in pod["status"]
    local = {"metadata": {"uid": UID}, "status": {"shoal": {"netns": "/run/netns/x", "cgroup": "/c"}}}
    assert with_sandbox(local, proc) is local
