"""The local cluster's store as a config source (list, then watch; list again when expired).

    source = LocalSource(Store(cluster))
    async for event in source.events():      # shoal.store.Event
        ...

The first events are the listed objects, then one BOOKMARK (the view is
complete). When the store's journal has been compacted past the version a
watch needs (`store.Expired`, the 410 analogue), the source lists again and
yields only the difference (ADDED/MODIFIED/DELETED) from what it had passed on.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable

from shoal import log
from shoal.store import Event, Expired, Store, now_rfc3339

from control_plane.sources.cache import ObjectCache
from control_plane.translate import ALL_KINDS

_log = log.get("control_plane.sources.local")


class LocalSource:
    def __init__(self, store: Store, kinds: Iterable[str] = ALL_KINDS, *, relist_delay: float = 0.1) -> None:
        self.store = store
        self.kinds = tuple(kinds)
        self.cache = ObjectCache(numeric_versions=True)
        self.relist_delay = relist_delay
        self.lists = 0          # how many times every kind was listed (1 + re-lists), for tests and metrics

    def _list_all(self) -> tuple[list[Event], int]:
        events, versions = [], []
        for kind in self.kinds:
            items, rv = self.store.list(kind)
            versions.append(rv)
            events.extend(self.cache.replace(kind, items, str(rv)))
        return events, min(versions) if versions else self.store.resource_version()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            events, since = await asyncio.to_thread(self._list_all)
            self.lists += 1
            for event in events:
                yield event
            yield Event("BOOKMARK", {"kind": "", "metadata": {"resourceVersion": str(since)}})
            try:
                async for event in self.store.awatch(since, self.kinds):
                    passed = self.cache.apply(event)
                    if passed is not None:
                        yield passed
            except Expired as exc:
                _log.info("watch expired; listing again", reason=str(exc))
                await asyncio.sleep(self.relist_delay)


def report_invalid(store: Store, obj: dict, errors: list[str] | tuple[str, ...],
                   component: str = "shoal-control-plane") -> dict:
    """Record a refused object as a core/v1 Event in the store (reason ShoalInvalidConfig)."""
    event = invalid_config_event(obj, errors, component)
    return store.apply(event)


def invalid_config_event(obj: dict, errors, component: str = "shoal-control-plane") -> dict:
    """A core/v1 Event about a refused object (shared by the local and Kubernetes reporters)."""
    meta = obj.get("metadata") or {}
    kind, name = str(obj.get("kind", "")), str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    message = "; ".join(errors)
    if len(message) > 1024:
        message = message[:1000] + f"... ({len(errors)} errors)"
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.shoal-invalid.{kind.lower()}", "namespace": namespace},
        "involvedObject": {"apiVersion": obj.get("apiVersion", ""), "kind": kind, "name": name,
                           "namespace": namespace, "uid": meta.get("uid", ""),
                           "resourceVersion": meta.get("resourceVersion", "")},
        "reason": "ShoalInvalidConfig",
        "message": message,
        "type": "Warning",
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
