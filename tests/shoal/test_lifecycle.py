"""shoal.lifecycle: a daemon turns SIGTERM into its `stopping` event and drains before it exits."""

from __future__ import annotations

import signal
import subprocess
import sys


def test_a_daemon_drains_on_sigterm_and_exits_cleanly(tmp_path):
    """lifecycle.run turns SIGTERM into the `stopping` event; the daemon finishes its work and exits 0."""
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
