"""The bpffs the eBPF mode pins in: mounted once, by one agent at a time, and unmounted only when empty.

Several agents share one host (every node of a local cluster, several local
clusters, a restarted agent and its successor). Checking for a bpffs and
then mounting one is a race: two agents that both see none both mount, the
mounts stack, one agent's pins land in the lower copy, and whoever unmounts
the upper one later uncovers them, where `down` no longer looks. So every
change to the mount, and every agent's first directory in it, happens under
one host-wide lock (`flock` on `LOCK`, in the hand-off socket's directory,
which the DaemonSet mounts from the host), with the check made again once
the lock is held.

When shoal mounts the bpffs it leaves a marker directory in it
(`MOUNT_MARKER`), and `release` unmounts it only while nothing but the
marker and the kernel's own entries is left: another agent's pins, or
anything another tool pinned, keep it mounted. A bpffs that shoal did not
mount (no marker) is never unmounted.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from shoal import log

from node_agent.errors import PrerequisiteMissing

logger = log.get("node_agent.bpffs")

BPFFS = Path("/sys/fs/bpf")
LOCK = Path("/var/run/shoal/bpffs.lock")
MOUNT_MARKER = "shoal-mounted-it"  # a directory in the bpffs itself (no dots: bpffs refuses them)
KERNEL_ENTRIES = {"maps.debug", "progs.debug"}  # bpf_preload's iterators, in every fresh bpffs


def mounts(path: Path = BPFFS) -> int:
    """How many bpf filesystems are mounted at `path` (more than one: they are stacked)."""
    with open("/proc/self/mounts") as table:
        return sum(1 for line in table if line.split()[1:3] == [str(path), "bpf"])


def mounted(path: Path = BPFFS) -> bool:
    return mounts(path) > 0


@contextmanager
def locked(lock: Path = LOCK) -> Iterator[None]:
    """Holds the host-wide bpffs lock (released when the process dies, too)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure(path: Path = BPFFS, keep: Path | None = None, lock: Path = LOCK) -> None:
    """A bpffs at `path` (mounted if absent), with the directory `keep` made in it.

    Both under the lock: no other agent mounts a second bpffs meanwhile, and
    none can find the bpffs empty and unmount it before `keep` is there.
    """
    with locked(lock):
        if not mounted(path):
            _mount(path)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)


def _mount(path: Path) -> None:
    logger.info("mounting bpffs (it was not mounted)", path=str(path))
    result = subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise PrerequisiteMissing("bpffs", f"{path} is not a bpf filesystem and mounting it failed "
                                  f"({result.stderr.strip()})",
                                  f"mount it (mount -t bpf bpf {path}) or mount the host's {path} into the agent")
    try:
        (path / MOUNT_MARKER).mkdir(exist_ok=True)
    except OSError:
        subprocess.run(["umount", str(path)], capture_output=True)
        raise


def release(path: Path = BPFFS, empty: Iterable[Path] = (), lock: Path = LOCK) -> None:
    """Removes the directories `empty` that are empty, then unmounts the bpffs if shoal mounted it
    and nothing but the marker and the kernel's entries is left in it; all under the lock."""
    with locked(lock):
        for directory in empty:
            try:
                directory.rmdir()
            except OSError:
                pass  # not empty (another agent's pins), or already gone
        marker = path / MOUNT_MARKER
        if not mounted(path) or not marker.is_dir():
            return
        others = {p.name for p in path.iterdir()} - KERNEL_ENTRIES - {MOUNT_MARKER}
        if others:
            logger.debug("bpffs still in use; left mounted", path=str(path), entries=sorted(others))
            return
        marker.rmdir()
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            logger.info("unmounted the bpffs shoal had mounted", path=str(path))
        else:
            marker.mkdir(exist_ok=True)
