"""kubectl's habits that need a running cluster (root): exec's terminal, hostname, environment and working
directory; the restart marker the kubelet writes and `logs --previous`; `up` again and `status`."""

from __future__ import annotations

import os
import pty
from datetime import datetime, timezone
import select
import subprocess
import time

import pytest

from support.cli import SHOAL
from support.polling import eventually
from support.root import needs_root
from tests.shoal.cli.conftest import RUNNING_NODES

pytestmark = needs_root("runs a local cluster")

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: habits}
---
apiVersion: v1
kind: Pod
metadata: {name: shell, namespace: habits}
spec: {containers: [{name: sh, command: [sleep, infinity], env: [{name: GREETING, value: hello}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: talker, namespace: habits}
spec: {containers: [{name: app, command: [sh, -c, 'echo one; sleep 3; echo two; sleep infinity']}]}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: habits}
spec: {containers: [{name: app, command: [sh, -c, 'echo "run at $(date +%s%N)"; sleep 0.2; exit 3']}]}
"""


@pytest.fixture(scope="module")
def cluster(running):
    """The package's shared cluster, with namespace habits (taken out again at the end)."""
    running.apply(PODS)
    try:
        running.wait_pods_ready("habits", 2, timeout=120)
        yield running
    finally:
        running.delete(PODS, check=False)


def test_exec_runs_with_the_pods_hostname_environment_and_root_directory(cluster):
    out = cluster.exec("shell", "sh", "-c", 'echo "$(hostname) $POD_NAME $POD_NAMESPACE $GREETING $(pwd)"',
                       namespace="habits").stdout
    assert out.split() == ["shell", "shell", "habits", "hello", "/"]
    assert cluster.exec("shell", "hostname", namespace="habits").stdout.strip() == "shell"
    assert os.uname().nodename != "shell"  # the host's own name is untouched


def run_in_terminal(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Runs argv with a new pseudo-terminal as its stdin, stdout and stderr; returns (status, what it printed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:       # the terminal closed: the command ended
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(timeout=10), output.decode(errors="replace")


def test_exec_it_gives_the_command_a_terminal(cluster):
    status, out = run_in_terminal([*SHOAL, "local", "exec", "--cluster", cluster.name, "-n", "habits", "-it", "shell",
                                   "--", "sh", "-c", "tty; test -t 0 && test -t 1 && echo both-terminals"])
    assert status == 0, out
    assert "/dev/pts/" in out and "both-terminals" in out
    # without a terminal, -t says so (as kubectl does) and the command still runs
    piped = cluster("exec", "-n", "habits", "-t", "shell", "--", "sh", "-c", "test -t 0 || echo no-terminal")
    assert "no-terminal" in piped.stdout and "Unable to use a TTY" in piped.stderr


def test_a_restarted_container_has_a_marker_and_its_previous_run(cluster):
    def restarted_twice():
        pod = cluster.pods("habits").get("crasher")
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
        return statuses[0].get("restartCount", 0) >= 2
    eventually(restarted_twice, 120, "the crasher to restart twice")
    whole = cluster("logs", "-n", "habits", "crasher").stdout
    # a restart is counted once the container runs again, its marker written before: both are in the log
    assert whole.count("--- shoal: restart ") >= 2
    assert "the previous run exited with code 3" in whole
    runs = [line for line in whole.splitlines() if line.startswith("run at ")]
    previous = cluster("logs", "-n", "habits", "crasher", "--previous").stdout.splitlines()
    assert previous[0].startswith("--- shoal: restart ") and previous[1] in runs and previous[1] != runs[0]
    events = [line for line in cluster("events", "-n", "habits").stdout.splitlines() if "pod/crasher" in line]
    assert len(events) == 1 and "BackOff" in events[0] and "exited with code 3" in events[0], events
    described = cluster("describe", "pod", "crasher", "-n", "habits").stdout
    assert "BackOff: Back-off restarting container app" in described


def test_up_again_without_flags_keeps_the_cluster_and_status_says_it_is_healthy(cluster):
    again = cluster("up")
    assert again.stdout.strip().endswith(f"is already up ({RUNNING_NODES} nodes, --redirect iptables, "
                                         "--ip-family ipv4); nothing changed")
    differs = cluster("up", "--redirect", "ebpf", check=False)
    assert differs.returncode == 1 and "you asked for --redirect ebpf (it has iptables)" in differs.stderr
    status = cluster("status")
    assert "pod/ztunnel-node1" in status.stdout and "Healthy:" in status.stdout


def test_logs_timestamps_are_when_each_line_was_written(cluster):
    def both():
        out = cluster("logs", "-n", "habits", "talker", "--timestamps").stdout.splitlines()
        return out if len(out) == 2 else None
    first, second = eventually(both, 60, "two lines from the talker")
    t1, line1 = first.split(" ", 1)
    t2, line2 = second.split(" ", 1)
    assert (line1, line2) == ("one", "two")
    gap = (datetime.fromisoformat(t2.replace("Z", "+00:00")) - datetime.fromisoformat(t1.replace("Z", "+00:00")))
    # written 3 s apart; each time is when the kubelet first saw the line, at most a stamping interval late
    assert gap.total_seconds() >= 2
    assert datetime.fromisoformat(t2.replace("Z", "+00:00")) <= datetime.now(timezone.utc)
