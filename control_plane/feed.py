"""From a config source to the state store: events -> Translator -> ConfigState.

Events are taken in batches (everything already queued), applied to the
translator, then flushed once: one consistent change per batch, and a whole
initial list becomes a single first push. The first BOOKMARK means the source
has delivered its complete initial view; only then is the server marked
synced (before that, proxies would be told that nothing exists).

Objects the translator refuses are reported once per change of their
findings: a log line, `shoal_config_rejected_total{kind}`, and an Event
through `report` (a core/v1 Event in the store or in Kubernetes). The rest of
the config keeps working: a bad object just contributes nothing.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from control_plane.metrics import Metrics
from control_plane.sources import SourceError
from control_plane.state import ConfigState
from control_plane.translate import Translator
from shoal import log
from shoal.model import ResourceType
from shoal.store import Event

logger = log.get("shoal.control_plane.feed")

Reporter = Callable[[dict, tuple[str, ...]], None]


class Feed:
    def __init__(self, translator: Translator, state: ConfigState, metrics: Metrics,
                 on_synced: Callable[[], None], report: Reporter | None = None) -> None:
        self.translator = translator
        self.state = state
        self.metrics = metrics
        self.on_synced = on_synced
        self.report = report
        self.synced = False

    async def run(self, events: AsyncIterator[Event]) -> None:
        """Consumes `events` until the source ends (which is an error for a live source)."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump() -> None:
            try:
                async for event in events:
                    queue.put_nowait(event)
            finally:
                queue.put_nowait(done)

        pumper = asyncio.ensure_future(pump())
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                ended = done in batch
                self.apply([e for e in batch if e is not done])
                if ended:
                    pumper.result()  # raises the source's error, if it failed
                    raise SourceError("the config source stopped sending events, which a live source never does; "
                                      "its log says why (the local store removed? the API server gone?)")
        finally:
            pumper.cancel()

    def apply(self, batch: list[Event]) -> None:
        self.translator.apply_events(batch)
        saw_bookmark = any(event.type == "BOOKMARK" for event in batch)
        update = self.translator.flush()
        delta = update.delta
        upserts = [r for by_key in delta.upserted.values() for r in by_key.values()]
        removals = [(t, k) for t, keys in delta.removed.items() for k in keys]
        changed = self.state.apply(upserts, removals)
        if changed:
            logger.debug("config changed", types=sorted(str(t) for t in changed), upserts=len(upserts),
                         removals=len(removals), events=len(batch))
            for rtype in changed:
                self.metrics.resources.labels(str(rtype)).set(self.state.journals[rtype].live)
        self._report(update.findings)
        if saw_bookmark and not self.synced:
            self.synced = True
            counts = {str(t): self.state.journals[t].live for t in ResourceType}
            logger.info("config synced", **counts)
            self.on_synced()

    def _report(self, findings) -> None:
        objects = None
        for key, found in findings.items():
            kind, namespace, name = key
            where = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
            if found.errors:
                self.metrics.config_rejected.labels(kind).inc()
                logger.warning("config object refused; the rest of the config is unaffected", object=where,
                               errors=list(found.errors))
                if self.report is not None:
                    objects = objects if objects is not None else self.translator.objects()
                    obj = objects.get(key)
                    if obj is not None:
                        try:
                            self.report(obj, found.errors)
                        except Exception as e:  # noqa: BLE001 - reporting must never stop the feed
                            logger.warning("could not record an Event for a refused object", object=where,
                                           error=str(e))
            elif found.warnings:
                # a warning: the object does not do all it says (a route to a subset nobody defines fails)
                logger.warning("config object accepted with warnings", object=where, warnings=list(found.warnings))
            else:
                logger.info("config object now valid", object=where)
