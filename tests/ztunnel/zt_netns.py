"""What the ztunnel's root tests in network namespaces share: the node agent's capture rules as the rig
installs them, and a rig base that runs ztunnels on a uvloop thread and reads their access log."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import threading
from contextlib import contextmanager

from shoal import log
from shoal.model import ResourceType

from support.polling import eventually


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def capture_rules(namespace: str, tool: str = "iptables-legacy") -> None:
    """What the node agent's iptables mode installs (`tool`: iptables-legacy, or ip6tables-legacy for
    IPv6): outbound TCP to 15001 (not ours, not loopback), inbound TCP except 15008 to 15006."""
    for rule in (
        ["-t", "nat", "-N", "ZT_OUT"], ["-t", "nat", "-A", "ZT_OUT", "-m", "mark", "--mark", "0x539", "-j", "RETURN"],
        ["-t", "nat", "-A", "ZT_OUT", "-o", "lo", "-j", "RETURN"],
        ["-t", "nat", "-A", "ZT_OUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
        ["-t", "nat", "-A", "OUTPUT", "-j", "ZT_OUT"],
        ["-t", "nat", "-N", "ZT_IN"], ["-t", "nat", "-A", "ZT_IN", "-p", "tcp", "--dport", "15008", "-j", "RETURN"],
        ["-t", "nat", "-A", "ZT_IN", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
        ["-t", "nat", "-A", "PREROUTING", "-i", "eth0", "-j", "ZT_IN"],
    ):
        sh("ip", "netns", "exec", namespace, tool, "-w", *rule)


class RigBase:
    """A uvloop on a thread (as the ztunnel runs: some libraries, pyroute2, do not work under it), the
    state the tests write, and the JSON log the ztunnels write, read back as access-log lines."""

    def __init__(self):
        import uvloop
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.procs = []
        self.log = io.StringIO()

    def call(self, coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_loop(self):
        log.setup("json", "info", stream=self.log)
        self.thread.start()

    def stop_loop(self, *ztunnels):
        """Closes `ztunnels`, stops the loop, kills the apps; even when start() failed half-way."""
        try:
            if self.thread.is_alive():
                for ztunnel in ztunnels:
                    self.call(ztunnel.close())
        finally:
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(5)
            for proc in self.procs:
                proc.kill()
                proc.wait()

    def set(self, *resources, remove=()):
        async def apply():
            for kind, key in remove:
                self.state.remove(kind, key)
            for r in resources:
                self.state.upsert(r)
        self.call(apply())

    @contextmanager
    def applied(self, *resources):
        """The resources in the ztunnels' state for the body, and gone after it."""
        self.set(*resources)
        try:
            yield
        finally:
            self.set(remove=[(ResourceType(type(r).__name__), r.key) for r in resources])

    def access_lines(self):
        return [json.loads(line) for line in self.log.getvalue().splitlines()
                if line.startswith("{") and '"connection complete"' in line]

    def mark(self) -> int:
        return len(self.access_lines())

    def line_after(self, mark: int, direction: str, timeout: float = 5.0) -> dict:
        """The last access-log line in `direction` written after `mark` (the ztunnel writes a
        connection's line once its own side has closed, a moment after the client's)."""
        return eventually(lambda: [l for l in self.access_lines()[mark:] if l["direction"] == direction], timeout,
                          f"an {direction} access-log line")[-1]
