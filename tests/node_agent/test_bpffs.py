"""bpffs is mounted once, whoever asks at the same time, and unmounted only when nothing but
shoal's marker is in it (root).

Once, two node agents that started together on a host without a bpffs both saw none and
both mounted one; the mounts stacked, one agent's pins landed in the lower copy, and `down`,
unmounting the upper one, uncovered them: `/sys/fs/bpf/shoal/<cluster>-node2` survived it.

Each test runs in a mount namespace of its own (`unshare --mount --propagation private`) on
a directory under tmp_path, so nothing it mounts is ever seen by the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support.root import needs_root

pytestmark = needs_root("mounts bpffs")

ROUNDS = 8

CONCURRENT_MOUNTS = textwrap.dedent("""
    import json, multiprocessing, subprocess, sys
    from pathlib import Path
    from node_agent.ebpf import bpffs_mounted, ensure_bpffs

    mountpoint, rounds = Path(sys.argv[1]), int(sys.argv[2])

    def agent(index, start):
        start.wait()  # both agents ask at the same moment
        ensure_bpffs(mountpoint)
        (mountpoint / "shoal" / f"agent{index}").mkdir(parents=True)

    def count():
        with open("/proc/self/mounts") as table:
            return sum(1 for line in table if line.split()[1:3] == [str(mountpoint), "bpf"])

    results = []
    for _ in range(rounds):
        start = multiprocessing.Barrier(2)
        agents = [multiprocessing.Process(target=agent, args=(i, start)) for i in (1, 2)]
        for a in agents:
            a.start()
        for a in agents:
            a.join(60)
        seen = sorted(p.name for p in (mountpoint / "shoal").iterdir()) if (mountpoint / "shoal").is_dir() else []
        results.append({"mounts": count(), "exit_codes": [a.exitcode for a in agents], "agents_seen": seen})
        while bpffs_mounted(mountpoint):
            subprocess.run(["umount", str(mountpoint)], check=True)
    print(json.dumps(results))
""")


def in_own_mount_namespace(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=300)


def test_two_agents_mounting_at_once_make_exactly_one_bpffs(tmp_path):
    mountpoint = tmp_path / "bpf"
    mountpoint.mkdir()
    result = in_own_mount_namespace(CONCURRENT_MOUNTS, str(mountpoint), str(ROUNDS))
    assert result.returncode == 0, result.stderr
    rounds = json.loads(result.stdout.splitlines()[-1])
    assert len(rounds) == ROUNDS
    for i, r in enumerate(rounds):
        assert r["exit_codes"] == [0, 0], f"round {i}: an agent failed: {result.stderr[-2000:]}"
        assert r["mounts"] == 1, f"round {i}: {r['mounts']} bpffs stacked at one mount point ({rounds})"
        assert r["agents_seen"] == ["agent1", "agent2"], f"round {i}: an agent's pins are hidden ({r})"


RELEASE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from node_agent.ebpf import bpffs_mounted, ensure_bpffs, release_bpffs

    mountpoint = Path(sys.argv[1])
    steps = {}
    ensure_bpffs(mountpoint)
    (mountpoint / "shoal" / "agent1").mkdir(parents=True)
    (mountpoint / "cilium").mkdir()  # another tool's pins
    (mountpoint / "shoal" / "agent1").rmdir()
    (mountpoint / "shoal").rmdir()
    release_bpffs(mountpoint)
    steps["with another tool's pins"] = bpffs_mounted(mountpoint)
    (mountpoint / "cilium").rmdir()
    release_bpffs(mountpoint)
    steps["with nothing but the marker"] = bpffs_mounted(mountpoint)
    print(json.dumps(steps))
""")


def test_a_bpffs_is_unmounted_only_when_nothing_but_shoals_marker_is_in_it(tmp_path):
    mountpoint = tmp_path / "bpf"
    mountpoint.mkdir()
    result = in_own_mount_namespace(RELEASE, str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"with another tool's pins": True, "with nothing but the marker": False}
