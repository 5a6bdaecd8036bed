"""The shared plumbing: logging formats and network-namespace helpers."""

from __future__ import annotations

import io
import json
import os
import socket

import pytest

from shoal import log, netns


def test_json_log_lines_are_json():
    out = io.StringIO()
    log.setup("json", "info", stream=out)
    log.get("t").info("hello", pod="a/b", bytes=3)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["event"] == "hello" and line["pod"] == "a/b" and line["bytes"] == 3
    assert line["level"] == "info" and "timestamp" in line


def test_console_logs_are_human_and_levels_filter():
    out = io.StringIO()
    log.setup("console", "warning", stream=out)
    log.get("t").info("quiet")
    log.get("t").warning("loud", reason="x")
    text = out.getvalue()
    assert "quiet" not in text and "loud" in text and "reason" in text


def test_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format"):
        log.setup("xml")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a network namespace")
def test_netns_helpers_create_enter_and_remove():
    name = f"shoal-unit-{os.getpid()}"
    assert netns.create(name) is True
    try:
        assert netns.create(name) is False
        home = os.readlink("/proc/thread-self/ns/net")
        inside = netns.run_in(name, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inside != home
        assert os.readlink("/proc/thread-self/ns/net") == home  # the caller's thread never moved
        with netns.ip(name) as ip:
            assert [link.get("ifname") for link in ip.get_links()] == ["lo"]
        server = netns.socket_in(name, socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # The listener lives in the namespace: reachable from inside, not from here.
        out = netns.run(name, ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo ok"]).stdout
        assert out.strip() == "ok"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
        server.close()
    finally:
        assert netns.remove(name) is True
    assert not netns.exists(name)
    with pytest.raises(netns.NetnsError):
        netns.open_fd(name)


def test_a_daemon_drains_on_sigterm_and_exits_cleanly(tmp_path):
    """lifecycle.run turns SIGTERM into the `stopping` event; the daemon finishes its work and exits 0."""
    import signal
    import subprocess
    import sys

    marker = tmp_path / "drained"
    script = f"""
import asyncio
from shoal import lifecycle

async def main(shutdown):
    print("ready", flush=True)
    await shutdown.wait()
    await asyncio.sleep(0.1)  # the drain
    open({str(marker)!r}, "w").write(shutdown.signal_name)
    return 0

raise SystemExit(lifecycle.run(main))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert marker.read_text() == "SIGTERM"
