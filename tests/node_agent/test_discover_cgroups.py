"""Discovery's last resort, /proc, on the cgroup layouts this machine can make, with real processes.

This machine's cgroups are hybrid: v1 controllers under /sys/fs/cgroup/<controller> and the v2
tree at /sys/fs/cgroup/unified. A runtime with the cgroupfs driver on a v1 or hybrid node puts a
pod in v1 controllers (`.../kubepods/besteffort/pod<uid>/<container>`); on a v2 node, with
either driver, in the v2 tree (`.../kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`
with systemd). A sleeping process in a netns of its own, placed in such a cgroup, stands for
the pod's sandbox: it must be found, with its netns (the same inode), and the pod's v2 cgroup
when it has one. And a pod the agent should mesh but cannot find is reported, not left out silently.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from node_agent import reconcile
from node_agent.discover import find_sandbox, pod_cgroup_dir
from node_agent.sources import KubeSource
from support.polling import eventually
from support.root import IS_ROOT

V1 = Path("/sys/fs/cgroup/pids")  # a v1 controller on this hybrid machine
V2 = Path("/sys/fs/cgroup/unified")
TOP = f"shoal-disc-{os.getpid()}"


@pytest.fixture
def sandbox_process():
    """`start(cgroup_dir)`: a process in a new netns, moved into that cgroup (made for it); all removed after."""
    if not IS_ROOT:
        pytest.skip("needs root: cgroups and network namespaces")
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(cgroup: Path) -> subprocess.Popen:
        cgroup.mkdir(parents=True)
        process = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        started.append((process, cgroup))
        # unshare execs sleep in the same process: it is the pid to move.
        (cgroup / "cgroup.procs").write_text(str(process.pid))
        eventually(lambda: os.readlink(f"/proc/{process.pid}/ns/net") != os.readlink("/proc/self/ns/net"), 10,
                   "the process to be in its own netns")
        return process

    yield start
    for process, cgroup in started:
        process.kill()
        process.wait()
    for base in (V1, V2):
        top = base / TOP
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            directory.rmdir()
        if top.exists():
            top.rmdir()


def needs_layout(base: Path) -> None:
    if not (base / "cgroup.procs").exists():
        pytest.skip(f"this machine has no cgroup hierarchy at {base}")


def test_a_pod_in_v1_controllers_only_is_found_without_a_v2_cgroup(sandbox_process):
    needs_layout(V1)
    uid = str(uuid.uuid4())
    process = sandbox_process(V1 / TOP / "kubepods" / "besteffort" / f"pod{uid}" / "sandbox")
    found = find_sandbox(uid)
    assert found is not None and found.pid == process.pid
    assert os.stat(found.netns).st_ino == os.stat(f"/proc/{process.pid}/ns/net").st_ino == found.inode
    assert found.cgroup is None  # v1 only: the iptables mode exempts by the mark alone, eBPF cannot attach


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_a_pod_in_the_v2_tree_is_found_with_its_pod_level_cgroup(sandbox_process, driver):
    needs_layout(V2)
    uid = str(uuid.uuid4())
    if driver == "cgroupfs":
        pod_dir = V2 / TOP / "kubepods" / "burstable" / f"pod{uid}"
        container = pod_dir / "c0ffee"
    else:
        pod_dir = (V2 / TOP / "kubepods.slice" / "kubepods-burstable.slice" /
                   f"kubepods-burstable-pod{uid.replace('-', '_')}.slice")
        container = pod_dir / "cri-containerd-c0ffee.scope"
    process = sandbox_process(container)
    found = find_sandbox(uid)
    assert found is not None and found.pid == process.pid
    assert found.cgroup == str(pod_dir)
    assert os.stat(found.netns).st_ino == os.stat(f"/proc/{process.pid}/ns/net").st_ino


def test_a_recreated_sandbox_is_looked_for_again(sandbox_process):
    needs_layout(V2)
    uid = str(uuid.uuid4())
    pod = {"metadata": {"uid": uid, "namespace": "demo", "name": "web"}, "spec": {"nodeName": "node1"},
           "status": {"phase": "Running", "podIP": "198.19.1.5"}}
    source = KubeSource("node1", api_client=object())
    first = sandbox_process(V2 / TOP / "kubepods" / f"pod{uid}" / "one")
    assert source._with_sandbox(pod)["status"]["shoal"]["netns"] == f"/proc/{first.pid}/ns/net"
    first.kill()
    first.wait()
    second = sandbox_process(V2 / TOP / "kubepods" / f"pod{uid}" / "two")
    assert source._with_sandbox(pod)["status"]["shoal"]["netns"] == f"/proc/{second.pid}/ns/net"


def test_a_running_pod_that_should_be_meshed_but_has_no_sandbox_is_reported():
    namespace = {"metadata": {"name": "demo", "labels": {"shoal.io/dataplane-mode": "ambient"}}}
    pods = [{"metadata": {"uid": "u1", "namespace": "demo", "name": "lost"}, "spec": {"nodeName": "node1"},
             "status": {"phase": "Running", "podIP": "198.19.1.5"}},
            {"metadata": {"uid": "u2", "namespace": "demo", "name": "starting"}, "spec": {"nodeName": "node1"},
             "status": {"phase": "Pending"}}]
    infos = reconcile.pod_infos(pods, {"demo": namespace})
    assert reconcile.problems(infos, "node1") == {"u1": reconcile.NO_SANDBOX}
    assert reconcile.desired(infos, "node1") == {}


@pytest.mark.parametrize("layout", [
    ("kubepods", "pod{uid}"),  # cgroupfs, a Guaranteed pod
    ("kubepods", "besteffort", "pod{uid}"),  # cgroupfs
    ("kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-pod{uid_}.slice"),  # systemd
])
def test_the_pod_cgroup_the_kubelet_made_before_the_sandbox_is_found_by_name(tmp_path, layout):
    uid = str(uuid.uuid4())
    other = tmp_path.joinpath("kubepods", "besteffort", f"pod{uuid.uuid4()}")
    other.mkdir(parents=True)
    pod_dir = tmp_path.joinpath(*(part.format(uid=uid, uid_=uid.replace("-", "_")) for part in layout))
    (pod_dir / "some-container").mkdir(parents=True)
    assert pod_cgroup_dir(uid, tmp_path) == str(pod_dir)
    assert pod_cgroup_dir(str(uuid.uuid4()), tmp_path) is None
