"""Finding a Kubernetes pod's netns and cgroup on this node, from its uid (the kube source).

The local cluster's kubelet writes both into `status.shoal`; a real kubelet
does not. A pod's processes live in a cgroup whose path names the pod uid:
`.../kubepods/burstable/pod<uid>/<container>` (cgroupfs driver) or
`.../kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
(systemd driver). The agent (hostPID) scans /proc for a process in such a
cgroup, takes the pod-level directory as the pod's cgroup and the process's
`ns/net` as the pod's netns. The sandbox (pause) process lives as long as the
pod's netns, so its `/proc/<pid>/ns/net` stays valid for the pod's life.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sandbox:
    pid: int
    netns: str
    cgroup: str


def _pod_markers(uid: str) -> tuple[str, str]:
    return f"pod{uid}", f"pod{uid.replace('-', '_')}"


def find_sandbox(uid: str, proc: Path = Path("/proc"), cgroup_root: Path | None = None) -> Sandbox | None:
    """The oldest process of the pod (its sandbox), or None when none runs on this node."""
    if cgroup_root is None:
        from node_agent.hostmounts import cgroup2_root
        cgroup_root = cgroup2_root() or Path("/sys/fs/cgroup")
    markers = _pod_markers(uid)
    found: list[tuple[int, str]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            lines = (entry / "cgroup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("0::"):
                continue
            parts = line[3:].strip("/").split("/")
            for depth, part in enumerate(parts):
                if any(part == m or part.endswith(f"-{m}.slice") or part == f"{m}.slice" for m in markers):
                    found.append((int(entry.name), "/".join(parts[: depth + 1])))
                    break
    if not found:
        return None
    pid, pod_cgroup = min(found)
    return Sandbox(pid, str(proc / str(pid) / "ns" / "net"), str(cgroup_root / pod_cgroup))


def with_sandbox(pod: dict, proc: Path = Path("/proc"), cgroup_root: Path | None = None) -> dict:
    """The pod with `status.shoal` filled in from /proc when the kubelet did not (a copy; unchanged if not found)."""
    status = pod.get("status") or {}
    if (status.get("shoal") or {}).get("netns"):
        return pod
    uid = (pod.get("metadata") or {}).get("uid")
    if not uid:
        return pod
    sandbox = find_sandbox(uid, proc, cgroup_root)
    if sandbox is None:
        return pod
    return {**pod, "status": {**status, "shoal": {"netns": sandbox.netns, "cgroup": sandbox.cgroup}}}
