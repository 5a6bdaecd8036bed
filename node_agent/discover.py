"""Finding a Kubernetes pod's netns and cgroup on this node, from its uid (the kube source).

The local cluster's kubelet writes both into `status.shoal`; a real kubelet
does not. A pod's processes live in a cgroup whose path names the pod uid:
`.../kubepods/burstable/pod<uid>/<container>` (cgroupfs driver) or
`.../kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
(systemd driver), in the v2 tree or in v1 controllers (a cgroup v1 or hybrid
node). The agent (hostPID) scans /proc for a process in such a cgroup, takes
the pod-level v2 directory as the pod's cgroup (none when the pod has only v1
cgroups) and the process's `ns/net` as the pod's netns. This is the last
resort: the netns comes first from shoal-cni's call, then from the runtime. The sandbox (pause) process lives as long as the
pod's netns, so its `/proc/<pid>/ns/net` stays valid for the pod's life.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sandbox:
    pid: int
    netns: str
    cgroup: str | None  # the pod's cgroup v2 directory; None when the pod is in v1 cgroups only
    inode: int | None = None  # of the netns, to tell a new sandbox from the one found before


def _pod_markers(uid: str) -> tuple[str, str]:
    return f"pod{uid}", f"pod{uid.replace('-', '_')}"


def _pod_level(path: str, markers: tuple[str, str]) -> str | None:
    """The pod's directory in a cgroup path (cgroupfs `.../pod<uid>`, systemd `...-pod<uid_>.slice`), or None."""
    parts = path.strip("/").split("/")
    for depth, part in enumerate(parts):
        if any(part == m or part.endswith(f"-{m}.slice") or part == f"{m}.slice" for m in markers):
            return "/".join(parts[: depth + 1])
    return None


def _match(lines: list[str], markers: tuple[str, str]) -> tuple[bool, str | None]:
    """(the process is the pod's, its pod-level v2 path if the v2 line says so) from /proc/PID/cgroup.

    Every hierarchy counts: `0::path` (v2, unified or hybrid) and `N:controllers:path` (v1),
    so a pod placed by a runtime in v1 controllers only (cgroupfs driver on a v1 or hybrid node)
    is found too, without a v2 cgroup."""
    found, v2 = False, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        _, _, path = rest.partition(":")
        level = _pod_level(path, markers)
        if level is None:
            continue
        found = True
        if hierarchy == "0":
            v2 = level
    return found, v2


def find_sandbox(uid: str, proc: Path = Path("/proc"), cgroup_root: Path | None = None) -> Sandbox | None:
    """The oldest process of the pod (its sandbox), or None when none runs on this node."""
    if cgroup_root is None:
        from node_agent.hostmounts import cgroup2_root
        cgroup_root = cgroup2_root() or Path("/sys/fs/cgroup")
    markers = _pod_markers(uid)
    found: list[tuple[int, str | None]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            lines = (entry / "cgroup").read_text().splitlines()
        except OSError:
            continue
        mine, v2 = _match(lines, markers)
        if mine:
            found.append((int(entry.name), v2))
    if not found:
        return None
    pid, pod_cgroup = min(found, key=lambda item: item[0])
    netns = str(proc / str(pid) / "ns" / "net")
    try:
        inode = os.stat(netns).st_ino
    except OSError:
        inode = None
    return Sandbox(pid, netns, str(cgroup_root / pod_cgroup) if pod_cgroup else None, inode)


def pod_cgroup_of(pid: int, uid: str, proc: Path = Path("/proc"), cgroup_root: Path | None = None) -> str | None:
    """The pod-level v2 cgroup directory of the pod's process `pid`, or None (v1 only, or gone)."""
    if cgroup_root is None:
        from node_agent.hostmounts import cgroup2_root
        cgroup_root = cgroup2_root() or Path("/sys/fs/cgroup")
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    _, v2 = _match(lines, _pod_markers(uid))
    return str(cgroup_root / v2) if v2 else None


POD_CGROUP_TOPS = ("kubepods", "kubepods.slice")  # where kubelets put pods, cgroupfs and systemd drivers


def pod_cgroup_dir(uid: str, cgroup_root: Path | None = None, tops=POD_CGROUP_TOPS) -> str | None:
    """The pod-level v2 cgroup directory the kubelet made for pod `uid`, found by name under its kubepods
    tree (`kubepods/<qos>/pod<uid>`, `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`),
    below `cgroup_root` (the cgroup2 mount, or the kubelet's cgroupRoot under it).

    The kubelet makes it before it asks the runtime for the sandbox, so it is there when shoal-cni's ADD
    comes, while no process of the pod is yet: capture can name the pod's cgroup from the first packet."""
    if cgroup_root is None:
        from node_agent.hostmounts import cgroup2_root
        cgroup_root = cgroup2_root()
        if cgroup_root is None:
            return None
    markers = _pod_markers(uid)
    for top in tops:
        base = cgroup_root / top
        if not base.is_dir():
            continue
        for directory, children, _ in os.walk(base):
            for child in children:
                if _pod_level(child, markers) is not None:
                    return os.path.join(directory, child)
            depth = len(Path(directory).relative_to(base).parts)
            if depth >= 2:  # pods sit at most two levels below the top (the QoS class, and its slice)
                children.clear()
    return None


def with_sandbox(pod: dict, proc: Path = Path("/proc"), cgroup_root: Path | None = None, runtime=None) -> dict:
    """The pod with `status.shoal` filled in when the kubelet did not (a copy; unchanged if not found): from the
    container runtime first (`runtime(uid)` -> (netns, pid) or None, node_agent/cri.py), else from /proc."""
    status = pod.get("status") or {}
    if (status.get("shoal") or {}).get("netns"):
        return pod
    uid = (pod.get("metadata") or {}).get("uid")
    if not uid:
        return pod
    from_runtime = runtime(uid) if runtime is not None else None
    if from_runtime is not None:
        netns, pid = from_runtime
        try:
            inode = os.stat(netns).st_ino
        except OSError:
            inode = None
        sandbox = Sandbox(pid or 0, netns, pod_cgroup_of(pid, uid, proc, cgroup_root) if pid else None, inode)
    else:
        sandbox = find_sandbox(uid, proc, cgroup_root)
    if sandbox is None:
        return pod
    found = {"netns": sandbox.netns, "cgroup": sandbox.cgroup}
    if sandbox.inode is not None:
        found["netns_inode"] = sandbox.inode
    return {**pod, "status": {**status, "shoal": found}}
