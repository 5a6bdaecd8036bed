"""The node agent names cgroups as the host does, even when started in a private cgroup namespace.

iptables' `-m cgroup --path` (the kubelet's and the pods' cgroups) resolves in the caller's cgroup
namespace, so an agent in a private one (containerd's default on cgroup v2) must join the host's first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.root import needs_root

pytestmark = needs_root("cgroup namespaces")

REPO = Path(__file__).resolve().parents[2]


def test_an_agent_in_a_private_cgroup_namespace_joins_the_hosts(tmp_path):
    from node_agent.hostmounts import cgroup2_root, hierarchy_path
    root = cgroup2_root()
    cgroup = root / f"shoal-test-cgns-{os.getpid()}"
    cgroup.mkdir()
    code = f"""
import ctypes, os
from node_agent.hostmounts import join_host_cgroupns
with open({str(cgroup / 'cgroup.procs')!r}, "w") as f:
    f.write(str(os.getpid()))
assert ctypes.CDLL(None, use_errno=True).unshare(0x02000000) == 0  # a private cgroup namespace, rooted here
print("=", open("/proc/self/cgroup").read().splitlines()[-1])
print("=", join_host_cgroupns({f"/proc/{os.getpid()}/ns/cgroup"!r}))
print("=", open("/proc/self/cgroup").read().splitlines()[-1])
print("=", join_host_cgroupns({f"/proc/{os.getpid()}/ns/cgroup"!r}))
"""
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        # (the agent's log lines go to stdout too)
        inside, joined, after, again = [line[2:] for line in result.stdout.splitlines() if line.startswith("= ")]
        assert inside == "0::/"  # what the agent would have used as the pods' and kubelet's names
        assert joined == "True" and again == "False"
        assert after == f"0::/{hierarchy_path(cgroup)}"
    finally:
        cgroup.rmdir()
