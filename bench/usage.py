"""What the mesh's processes cost: CPU seconds and resident memory, read from /proc.

A set-up names its mesh processes as a `Selector`: the cgroups of some pods
(a local-cluster pod is a cgroup, `shoal.local.layout.Layout.pod_cgroup`)
and, optionally, which processes inside them count. The filter matters for
sidecars: a sidecar shares its pod's cgroup with the app (and with whatever
`shoal local exec` runs there, such as the load generator), and only the
sidecar is the mesh's.

CPU is user plus system time of each process, all its threads included
(`/proc/PID/stat`, in clock ticks). Memory is VmRSS. Both are summed over
the processes selected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from shoal.local.kubelet import cgroup_pids

TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")

# Which processes of a cgroup count, given their command line (argv); None: all of them.
ProcessFilter = Callable[[list[str]], bool] | None


class Usage(NamedTuple):
    cpu_seconds: float
    rss_mib: float
    processes: int


@dataclass(frozen=True)
class Selector:
    cgroups: tuple[Path, ...]
    keep: ProcessFilter = None
    part: str = "mesh"   # what kind of mesh process these are (ztunnel, node-agent, waypoint, sidecar), for the split

    def pids(self) -> list[int]:
        found = []
        for cgroup in self.cgroups:
            for pid in cgroup_pids(cgroup):
                if self.keep is None or self.keep(command_line(pid)):
                    found.append(pid)
        return found

    def usage(self) -> Usage:
        return measure(self.pids())

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far, by process: two readings give the cost of what ran between them."""
        return {pid: cpu_seconds(pid) for pid in self.pids()}


def command_line(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError):
        return []


def cpu_seconds(pid: int) -> float:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime, stime


def rss_mib(pid: int) -> float:
    try:
        status = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(pids: Iterable[int]) -> Usage:
    pids = list(pids)
    return Usage(sum(cpu_seconds(p) for p in pids), sum(rss_mib(p) for p in pids), len(pids))


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings; a process that started in between counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def cpu_by_part(selectors: list[Selector], before: list[dict[int, float]],
                after: list[dict[int, float]]) -> dict[str, float]:
    """CPU seconds between two readings of each selector, summed per `Selector.part`."""
    out: dict[str, float] = {}
    for selector, b, a in zip(selectors, before, after):
        out[selector.part] = out.get(selector.part, 0.0) + cpu_between(b, a)
    return out


def combine(selectors: Iterable[Selector]) -> Usage:
    pids = sorted({pid for s in selectors for pid in s.pids()})
    return measure(pids)
