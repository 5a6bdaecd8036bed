"""`shoal local down` of a `--runtime containerd` cluster: what each node's containerd made, found by path.

Runs after the daemon stopped (its kubelet removed the pods through CRI) or after it was killed
(then nothing was removed through CRI, and everything is found here by where it lives): the pods'
processes by the cgroup tree, containerd and its shims by the run directory named in their command
lines, the overlay and netns mounts below the run directory, the v1 cgroups runc made beside the v2
ones, libcni's cache entries by the cluster's network names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from shoal.local.errors import ClusterError
from shoal.local.layout import CGROUP_ROOT, Layout
from shoal.local.runtime_containerd import CNI_CACHE, SHIM_STATE, NodePaths, containerd_pid, mounts_under

CGROUP_V1 = Path("/sys/fs/cgroup")
STOP_TIMEOUT = 10.0


def cleanup(layout: Layout) -> None:
    """Removes every node's containerd and what it made: the containers' processes, containerd and its shims,
    its mounts (overlay rootfs, netns pins), the v1 cgroups runc made, libcni's cache entries of the cluster's
    networks, and /run/containerd and /var/lib/cni when this cluster made them and they are empty. The daemon
    has removed the pods through CRI when it stopped; after a crash everything is found by path instead."""
    failures = []
    nodes = sorted(int(p.parent.name[4:]) for p in layout.run_dir.glob("node*/containerd")
                   if p.parent.name[4:].isdigit())
    if not nodes:
        return  # a netns cluster: nothing of containerd's
    # The pods' processes first (their sandboxes' network goes with the node's netns, their IPAM state with
    # the run directory), then containerd and its shims, which then have nothing left to wait for.
    _kill_tree(layout.cgroup_dir / "kubepods")
    for node in nodes:
        paths = NodePaths.of(layout, node)
        pid = containerd_pid(paths)
        if pid is not None:
            _stop(pid)
        for shim in _processes_naming(str(paths.socket)):
            _stop(shim, grace=0)
    for node in nodes:
        _kill_tree(layout.cgroup_dir / f"containerd-node{node}")
    for mount_point in sorted(mounts_under(layout.run_dir), key=len, reverse=True):
        result = subprocess.run(["umount", mount_point], capture_output=True, text=True)
        if result.returncode != 0:
            result = subprocess.run(["umount", "--lazy", mount_point], capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"unmounting {mount_point}: {result.stderr.strip()}")
    relative = layout.cgroup_dir.relative_to(CGROUP_ROOT)
    for controller in _v1_controllers():
        remove_empty_tree(controller / relative)
        remove_empty_tree(controller / relative.parent, only_if_empty=True)
    for node in nodes:
        for entry in (CNI_CACHE / "results").glob(f"{NodePaths.of(layout, node).network}-*"):
            entry.unlink(missing_ok=True)
    record = layout.run_dir / "containerd-outside.json"
    if record.exists():
        existed = json.loads(record.read_text())
        for path in (SHIM_STATE, CNI_CACHE):
            if not existed.get(str(path), True):
                remove_empty_tree(path)
    if failures:
        raise ClusterError("; ".join(failures))


def leftovers(layout: Layout) -> list[str]:
    """What of the cluster's containerds is still there: processes naming its run directory, mounts under it."""
    left = [f"process {pid}" for pid in _processes_naming(str(layout.run_dir) + "/")]
    left += [f"mount {m}" for m in mounts_under(layout.run_dir)]
    if layout.cgroup_dir.is_relative_to(CGROUP_ROOT):  # the v1 twins of the cluster's v2 tree, as runc makes them
        relative = layout.cgroup_dir.relative_to(CGROUP_ROOT)
        left += [f"cgroup {c / relative}" for c in _v1_controllers() if (c / relative).exists()]
    return left


def _stop(pid: int, grace: float = STOP_TIMEOUT) -> None:
    try:
        os.kill(pid, signal.SIGTERM if grace else signal.SIGKILL)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


def _kill_tree(cgroup: Path) -> None:
    """Kills every process in a v2 cgroup tree (cgroup.kill), and waits until it is empty."""
    if not (cgroup / "cgroup.kill").exists():
        return
    (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            (p / "cgroup.procs").read_text().strip() for p in [cgroup, *cgroup.rglob("*")] if p.is_dir()):
        time.sleep(0.05)


def _v1_controllers() -> list[Path]:
    """The cgroup v1 hierarchies of a hybrid host, where runc (cgroupfs driver) also places containers."""
    if not CGROUP_V1.is_dir():
        return []
    return [p for p in CGROUP_V1.iterdir() if p.is_dir() and not p.is_symlink() and p != CGROUP_ROOT
            and (p / "cgroup.procs").exists() and not (p / "cgroup.controllers").exists()]


def remove_empty_tree(top: Path, only_if_empty: bool = False) -> None:
    """Removes `top` and the directories below it that are empty (a cgroup still holding a process stays)."""
    if not top.is_dir():
        return
    if not only_if_empty:
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                pass
    try:
        top.rmdir()
    except OSError:
        pass
