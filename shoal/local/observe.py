"""Reading what the mesh says about itself in a local cluster: the ztunnels' access logs, admin and metrics.

The demo and the benchmarks use the access logs to know when a namespace's
traffic has started to flow through the mesh (its first mTLS connection),
without guessing with sleeps. `shoal check`, `proxy-config` and `stat` read
the proxies' admin dumps and metrics from inside their network namespaces
(`http_get`), where those ports listen.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Callable

from shoal import netns

from shoal.local.components import SYSTEM_NAMESPACE
from shoal.local.layout import Layout


def ztunnel_logs(layout: Layout, node: int) -> list[Path]:
    """The log of every ztunnel that ran on node N: ztunnel-node<N>, and those `shoal local rollout
    restart ztunnel` started in its place (ztunnel-node<N>-<suffix>)."""
    first = layout.pod_log(SYSTEM_NAMESPACE, f"ztunnel-node{node}", "ztunnel")
    later = layout.logs_dir.glob(f"{SYSTEM_NAMESPACE}_ztunnel-node{node}-*_ztunnel.log")
    return [path for path in (first, *sorted(later)) if path.exists()]


def access_log(layout: Layout, node: int) -> list[dict]:
    """The connection records of node N's ztunnels (rolled-out ones too), oldest first."""
    records = []
    for path in ztunnel_logs(layout, node):
        for raw in path.read_text().splitlines():
            if raw.startswith("{") and '"direction"' in raw:
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue  # a line still being written
    return sorted(records, key=lambda r: r.get("timestamp", ""))


def wait_for_mtls(layout: Layout, node: int, call: Callable[[], object], *, source_namespace: str,
                  timeout: float = 30.0) -> tuple[dict, object] | None:
    """Runs `call()` until ztunnel-node<N> logs an outbound mTLS connection from the namespace.

    Returns (that log record, what `call` returned), or None after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = len(access_log(layout, node))
        result = call()
        for _ in range(10):
            for record in access_log(layout, node)[seen:]:
                if (record.get("direction") == "outbound" and record.get("mtls")
                        and f"/ns/{source_namespace}/" in str(record.get("src_identity", ""))):
                    return record, result
            time.sleep(0.05)
    return None


def http_get(netns_name: str, host: str, port: int, path: str, timeout: float = 5.0) -> bytes:
    """GET http://host:port/path from inside `netns_name`; raises OSError (URLError is one) when no answer."""
    def get() -> bytes:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as response:
            return response.read()
    return netns.run_in(netns_name, get)


def admin_dump(netns_name: str, port: int, timeout: float = 5.0) -> dict:
    """A proxy's /config_dump (its admin port listens on 127.0.0.1 of its netns)."""
    return json.loads(http_get(netns_name, "127.0.0.1", port, "/config_dump", timeout))
