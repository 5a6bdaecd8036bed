"""Pre-flight: can this machine run the mesh, and with which redirect mode?

    facts = probe()                       # reads the machine (the only I/O here)
    results = preflight(facts, redirect)  # pure: facts in, `Check`s out

A `Check` that is not ok says what is missing and what to do. A redirect
mode the cluster does not use is reported, never counted as a failure:
`auto` falls back to iptables where eBPF cannot run.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# eBPF capture uses cgroup/getsockopt (5.3), bpf_link_create (5.7) and sk_lookup (5.9).
EBPF_MIN_KERNEL = (5, 9)
IPTABLES_TOOLS = ("iptables-legacy", "iptables-legacy-restore", "iptables-legacy-save")


@dataclass(frozen=True)
class Check:
    """One check's outcome: `code` SH00xx (pre-flight) or SH02xx (health); `subject` what it is about."""
    code: str
    subject: str
    ok: bool
    message: str
    action: str = ""
    counts: bool = True     # False: said for information, not a failure (a redirect mode not in use)

    @property
    def failed(self) -> bool:
        return self.counts and not self.ok

    def line(self) -> str:
        mark = "ok" if self.ok else ("FAIL" if self.counts else "n/a")
        text = f"{mark:4} [{self.code}] {self.subject}: {self.message}"
        return text + (f"; {self.action}" if self.action and not self.ok else "")

    def to_json(self) -> dict:
        return {"code": self.code, "subject": self.subject, "ok": self.ok, "counts": self.counts,
                "message": self.message, "action": self.action}


@dataclass(frozen=True)
class HostFacts:
    kernel: str                       # uname -r
    root: bool
    bcc: bool                         # `import bcc` would work
    headers: bool                     # /lib/modules/<kernel>/build has include/
    cgroup_v2_root: str               # where a cgroup v2 hierarchy is mounted, or ""
    cgroup_layout: str                # unified, hybrid or legacy
    iptables_missing: tuple[str, ...]  # of IPTABLES_TOOLS
    iptables_default: str             # what `iptables` is: legacy, nf_tables, or "" when absent


def kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def preflight(facts: HostFacts, redirect: str = "auto") -> list[Check]:
    """The pre-flight checks for running the mesh with `redirect` (iptables, ebpf or auto)."""
    out = [Check("SH0001", "privileges", facts.root,
                 "running as root" if facts.root else "not root: the mesh creates namespaces, rules and cgroups",
                 "run it as root (sudo)")]
    version = kernel_version(facts.kernel)
    out.append(Check("SH0002", "cgroups", bool(facts.cgroup_v2_root),
                     f"{facts.cgroup_layout} layout, cgroup v2 at {facts.cgroup_v2_root}" if facts.cgroup_v2_root
                     else f"{facts.cgroup_layout} layout without a cgroup v2 hierarchy",
                     "mount cgroup2 (at /sys/fs/cgroup/unified on a hybrid host) or set SHOAL_CGROUP_ROOT"))
    iptables_ok = not facts.iptables_missing
    out.append(Check("SH0003", "iptables", iptables_ok,
                     f"iptables-legacy present (`iptables` is {facts.iptables_default or 'absent'})" if iptables_ok
                     else f"missing {', '.join(facts.iptables_missing)}",
                     "run `make setup` (it installs Debian's iptables package)"))
    ebpf_missing = []
    if version < EBPF_MIN_KERNEL:
        ebpf_missing.append(f"kernel {facts.kernel} is older than {'.'.join(map(str, EBPF_MIN_KERNEL))} (sk_lookup)")
    if not facts.bcc:
        ebpf_missing.append("bcc's Python module is not importable (Debian package python3-bpfcc)")
    if not facts.headers:
        ebpf_missing.append(f"no kernel headers at /lib/modules/{facts.kernel}/build")
    ebpf_ok = not ebpf_missing and bool(facts.cgroup_v2_root)
    uses_ebpf = redirect == "ebpf"
    out.append(Check("SH0004", "redirect ebpf", ebpf_ok,
                     f"kernel {facts.kernel}, bcc and kernel headers present" if ebpf_ok
                     else "not possible: " + "; ".join(ebpf_missing or ["no cgroup v2 hierarchy"]),
                     "run `make setup` (headers, bcc), or use --redirect iptables", counts=uses_ebpf))
    if redirect == "auto":
        chosen = "ebpf" if ebpf_ok else "iptables"
        out.append(Check("SH0005", "redirect auto", iptables_ok or ebpf_ok,
                         f"would choose {chosen}" if iptables_ok or ebpf_ok else "neither mode is possible",
                         "see the iptables and eBPF lines above"))
    return out


def probe() -> HostFacts:
    release = platform.release()
    from shoal.local.layout import CGROUP_ROOT

    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        layout, v2 = "unified", "/sys/fs/cgroup"
    elif Path("/sys/fs/cgroup/unified/cgroup.procs").exists():
        layout, v2 = "hybrid", "/sys/fs/cgroup/unified"
    else:
        layout, v2 = "legacy", ""
    if (CGROUP_ROOT / "cgroup.procs").exists():
        v2 = str(CGROUP_ROOT)
    default = ""
    if shutil.which("iptables"):
        try:
            text = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=10).stdout
            default = "nf_tables" if "nf_tables" in text else "legacy"
        except (OSError, subprocess.SubprocessError):
            default = ""
    return HostFacts(
        kernel=release, root=os.geteuid() == 0, bcc=importlib.util.find_spec("bcc") is not None,
        headers=(Path("/lib/modules") / release / "build" / "include").is_dir(),
        cgroup_v2_root=v2, cgroup_layout=layout,
        iptables_missing=tuple(t for t in IPTABLES_TOOLS if shutil.which(t) is None),
        iptables_default=default)
