"""Seeing the host's /sys when started through `ip netns exec`.

`ip netns exec` gives its command a private mount namespace with a fresh
sysfs for the network namespace, which hides the host's sub-mounts of /sys:
the cgroup v2 tree (pods' cgroups, where the eBPF mode attaches) and bpffs.
The local cluster starts its components that way. The agent then rejoins the
mount namespace of the nearest ancestor process that sees them (the kubelet
that started it, typically; it keeps its network namespace), before it starts
any thread, because setns(CLONE_NEWNS) refuses multithreaded callers. In a
DaemonSet, /sys/fs/cgroup and /sys/fs/bpf are mounted in and nothing happens.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from shoal import log

logger = log.get("node_agent.hostmounts")

CLONE_NEWNS = 0x00020000


def cgroup2_root(mounts: str = "/proc/self/mounts") -> Path | None:
    """Where cgroup v2 is mounted here (/sys/fs/cgroup on most nodes, /sys/fs/cgroup/unified on hybrid ones)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    roots = [line.split()[1] for line in lines if len(line.split()) > 2 and line.split()[2] == "cgroup2"]
    return Path(sorted(roots, key=len)[0]) if roots else None


def hierarchy_path(cgroup: str | os.PathLike, root: Path | None = None) -> str:
    """A cgroup as the kernel names it in the v2 hierarchy (`system.slice/kubelet.service`, what iptables'
    `-m cgroup --path` takes), from its directory under the cgroup2 mount or from that name itself (with or
    without the leading slash of /proc/PID/cgroup). The root cgroup is ""."""
    path = Path(cgroup)
    root = root or cgroup2_root()
    if root is not None and path.is_absolute():
        try:
            relative = path.relative_to(root)
        except ValueError:
            pass  # not under the mount: a hierarchy name that starts with a slash
        else:
            return "" if relative == Path(".") else str(relative)
    return str(path).strip("/")


CGROUP2_CANDIDATES = (Path("/sys/fs/cgroup/cgroup.controllers"), Path("/sys/fs/cgroup/unified/cgroup.controllers"))


def _ancestors():
    pid = os.getppid()
    while pid > 1:
        yield pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    yield 1


def rejoin_host_mounts(candidates=CGROUP2_CANDIDATES) -> bool:
    """Joins an ancestor's mount namespace if no cgroup v2 is visible here but is there; True if it did."""
    if cgroup2_root() is not None:
        return False
    own = os.stat("/proc/self/ns/mnt").st_ino
    fd = None
    for pid in _ancestors():
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino == own:
                continue
            if not any(Path(f"/proc/{pid}/root{needed}").exists() for needed in candidates):
                continue
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            break
        except OSError:
            continue
    if fd is None:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNS) != 0:
            logger.warning("cannot join the host's mount namespace", error=os.strerror(ctypes.get_errno()))
            return False
    finally:
        os.close(fd)
    os.chdir("/")
    logger.info("joined the host's mount namespace to see its cgroups and bpffs", cgroup2=str(cgroup2_root()))
    return True


CLONE_NEWCGROUP = 0x02000000


def join_host_cgroupns(reference: str = "/proc/1/ns/cgroup") -> bool:
    """Joins the host's cgroup namespace (PID 1's, seen through hostPID) if this process is in another; True if
    it did.

    Both of the agent's ways of naming a cgroup are relative to its own cgroup namespace: iptables'
    `-m cgroup --path` (the kubelet's and the pods' cgroups) resolves there, and /proc/PID/cgroup (the
    ztunnel's cgroup) reads from there. In a private one (containerd gives containers one on cgroup v2)
    they would name the wrong cgroups, or none. Called before any thread starts, so that every thread
    inherits it. Where PID 1's namespace cannot be seen, nothing happens.
    """
    try:
        if os.stat(reference).st_ino == os.stat("/proc/self/ns/cgroup").st_ino:
            return False
        fd = os.open(reference, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWCGROUP) != 0:
            logger.warning("cannot join the host's cgroup namespace; cgroup paths may resolve inside the agent's own",
                           error=os.strerror(ctypes.get_errno()))
            return False
    finally:
        os.close(fd)
    logger.info("joined the host's cgroup namespace, where the kubelet's and the pods' cgroups are named")
    return True
