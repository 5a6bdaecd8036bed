"""The connections this ztunnel carries: counted, metered while open, drained at shutdown.

Every proxied connection (outbound, HBONE inbound, plaintext inbound) has one
`ConnectionRecord` (`ztunnel.telemetry`). The drivers `begin()` it when the
connection arrives and `end()` it once, when it is over; the tracker keeps
the open ones, so that long connections' bytes are reported while they last
(`report_periodically`) and a draining ztunnel knows what is still open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from shoal import log

from ztunnel.telemetry import ConnectionRecord, Metrics

logger = log.get("ztunnel.connections")


class ConnectionTracker:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.active: set[ConnectionRecord] = set()

    def begin(self, record: ConnectionRecord, *, count_now: bool = True) -> None:
        """Tracks the connection; counts it as opened now, or (outbound) once its labels are known."""
        self.active.add(record)
        if count_now:
            record.open(self.metrics)

    def opened(self, record: ConnectionRecord) -> None:
        record.open(self.metrics)

    def end(self, record: ConnectionRecord) -> None:
        self.active.discard(record)
        record.close(self.metrics)

    def refused(self, record: ConnectionRecord, flag: str, reason: str) -> None:
        """A connection refused before anything was relayed: one record, one access-log line."""
        record.fail(flag, reason)
        self.begin(record)
        self.end(record)

    async def report_periodically(self, live_workloads: Callable[[], set[tuple[str, str]]] | None = None,
                                  every: float = 5.0) -> None:
        """Counts the bytes of open connections, as Istio's proxies do, and drops the series of
        workloads that are gone (`live_workloads()`: (namespace, workload label) of those that are not)."""
        while True:
            await asyncio.sleep(every)
            self.report_once(live_workloads)

    def report_once(self, live_workloads: Callable[[], set[tuple[str, str]]] | None = None) -> None:
        for record in list(self.active):
            record.report(self.metrics)
        if live_workloads is not None:
            self.metrics.prune(live_workloads(), {record.label_key() for record in self.active})

    async def drain(self, seconds: float, connection_tasks: Callable[[], list[asyncio.Task]],
                    urgent: asyncio.Event | None = None) -> bool:
        """Waits for open connections to finish, up to `seconds` (or until `urgent` is set),
        then cancels what is left. True when nothing had to be cut."""
        deadline = time.monotonic() + seconds
        while self.active and time.monotonic() < deadline and not (urgent is not None and urgent.is_set()):
            await asyncio.sleep(0.05)
        clean = not self.active
        if not clean:
            logger.warning("drain deadline reached; closing connections", connections=len(self.active))
            tasks = connection_tasks()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)
        return clean
