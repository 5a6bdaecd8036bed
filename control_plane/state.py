"""The config server's one state store: the current mesh model, versioned and journaled.

Per resource type the store keeps a counter and, per key, the entry of the
last change: the resource (or None once deleted: a tombstone), its Watch
envelope already serialized, and the counter value of that change. Entries
sit in change order, so "what changed after counter N" is a walk back from
the newest entry that stops at the first older one: O(changes), not O(state).

Invariants:
- a change to a key removes its entry before inserting the new one, so the
  entries of a type are always in ascending counter order;
- a type's counter moves only when some resource of that type really changed
  (same content, same version digest: no bump, no push);
- tombstones are dropped oldest first past TOMBSTONE_MAX; `floor` is then the
  newest counter whose tombstones may be gone, and a subscriber behind it
  cannot be served a journal diff (it gets a full, `replace` response);
- each resource is converted and serialized once per change, whatever the
  number of subscribers (their responses are joined from the cached bytes).

Listeners are called synchronously after each change; they must not block
(subscribers only set a flag and wake their own sender).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from shoal.api import convert
from shoal.model import ResourceType, Snapshot

TOMBSTONE_MAX = 20_000
TIMESTAMPS_KEPT = 4096
_RESOURCES_FIELD_TAG = b"\x22"  # WatchResponse.resources: field 4, length-delimited


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    resource: Any | None        # None: deleted
    last: Any                   # the resource, or for a tombstone the last one it had (for scoping)
    version: str                # content digest ("" for a tombstone)
    counter: int                # the type counter at which this change happened
    wire: bytes                 # the serialized `resources` field of a WatchResponse ("" for a tombstone)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode(resource: Any) -> tuple[str, bytes]:
    envelope = convert.resource_message(resource)
    body = envelope.SerializeToString(deterministic=True)
    return envelope.version, _RESOURCES_FIELD_TAG + _varint(len(body)) + body


class TypeJournal:
    def __init__(self) -> None:
        self.counter = 0
        self.floor = 0
        self.entries: dict[str, Entry] = {}
        self.tombstones = 0
        self.live = 0
        self.changed_at: dict[int, float] = {}  # counter -> time.perf_counter() of the change

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        return entry if entry is not None and entry.resource is not None else None

    def since(self, counter: int) -> Iterator[Entry]:
        """Entries changed after `counter`, newest first (only valid when counter >= floor)."""
        for key in reversed(self.entries):
            entry = self.entries[key]
            if entry.counter <= counter:
                return
            yield entry

    def current(self) -> Iterator[Entry]:
        return (e for e in self.entries.values() if e.resource is not None)

    def first_change_after(self, counter: int) -> float | None:
        """When the oldest change after `counter` happened (for push latency)."""
        return self.changed_at.get(counter + 1)


class ConfigState:
    def __init__(self, epoch: str | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.epoch = epoch or secrets.token_hex(4)
        self.clock = clock
        self.journals: dict[ResourceType, TypeJournal] = {t: TypeJournal() for t in ResourceType}
        # index: node -> {(namespace, service account): number of workloads}, for CSR authorization
        self.node_identities: dict[str, dict[tuple[str, str], int]] = {}
        self.listeners: list[Callable[[set[ResourceType]], None]] = []
        self.synced = False  # the source has delivered its first full list

    # -- versions ------------------------------------------------------------------

    def version(self, rtype: ResourceType, counter: int | None = None) -> str:
        return f"{self.epoch}.{self.journals[rtype].counter if counter is None else counter}"

    def parse_version(self, rtype: ResourceType, version: str) -> int | None:
        """The counter a client's version names, if it is from this server run and still journaled."""
        epoch, _, number = version.partition(".")
        if epoch != self.epoch or not number.isdigit():
            return None
        counter = int(number)
        journal = self.journals[rtype]
        if counter > journal.counter or counter < journal.floor:
            return None
        return counter

    # -- changes -------------------------------------------------------------------

    def replace(self, snapshot: Snapshot) -> set[ResourceType]:
        """Makes `snapshot` the current state; returns the types that changed."""
        changed: set[ResourceType] = set()
        now = self.clock()
        for rtype in ResourceType:
            journal = self.journals[rtype]
            new = snapshot[rtype]
            upserts = [(k, v) for k, v in new.items() if (e := journal.get(k)) is None or e.resource != v]
            removals = [k for k, e in journal.entries.items() if e.resource is not None and k not in new]
            if self._apply_type(rtype, upserts, removals, now):
                changed.add(rtype)
        self._notify(changed)
        return changed

    def apply(self, upserts: Iterable[Any] = (), removals: Iterable[tuple[ResourceType, str]] = ()) -> set[ResourceType]:
        """Applies individual changes (model objects to add or replace, (type, key) to remove)."""
        by_type: dict[ResourceType, tuple[list, list]] = {}
        for resource in upserts:
            by_type.setdefault(convert.type_of(resource), ([], []))[0].append((resource.key, resource))
        for rtype, key in removals:
            by_type.setdefault(ResourceType(rtype), ([], []))[1].append(key)
        now = self.clock()
        changed = {t for t, (ups, rems) in by_type.items() if self._apply_type(t, ups, rems, now)}
        self._notify(changed)
        return changed

    def _apply_type(self, rtype: ResourceType, upserts: list[tuple[str, Any]], removals: list[str],
                    now: float) -> bool:
        journal = self.journals[rtype]
        pending: list[tuple[str, Any, str, bytes]] = []
        for key, resource in upserts:
            version, wire = _encode(resource)
            old = journal.entries.get(key)
            if old is not None and old.version == version:
                continue
            pending.append((key, resource, version, wire))
        gone = [k for k in removals if journal.get(k) is not None]
        if not pending and not gone:
            return False
        journal.counter += 1
        counter = journal.counter
        for key, resource, version, wire in pending:
            old = journal.entries.pop(key, None)
            if old is None or old.resource is None:
                journal.live += 1
                if old is not None:
                    journal.tombstones -= 1
            else:
                self._unindex(rtype, old.resource)
            journal.entries[key] = Entry(key, resource, resource, version, counter, wire)
            self._index(rtype, resource)
        for key in gone:
            old = journal.entries.pop(key)
            self._unindex(rtype, old.resource)
            journal.entries[key] = Entry(key, None, old.last, "", counter, b"")
            journal.live -= 1
            journal.tombstones += 1
        journal.changed_at[counter] = now
        if len(journal.changed_at) > TIMESTAMPS_KEPT:
            for c in list(journal.changed_at)[: len(journal.changed_at) - TIMESTAMPS_KEPT]:
                del journal.changed_at[c]
        if journal.tombstones > TOMBSTONE_MAX:
            self._compact(journal)
        return True

    def _index(self, rtype: ResourceType, resource: Any) -> None:
        if rtype is ResourceType.WORKLOAD:
            ids = self.node_identities.setdefault(resource.node, {})
            who = (resource.namespace, resource.service_account)
            ids[who] = ids.get(who, 0) + 1

    def _unindex(self, rtype: ResourceType, resource: Any) -> None:
        if rtype is ResourceType.WORKLOAD:
            ids = self.node_identities.get(resource.node, {})
            who = (resource.namespace, resource.service_account)
            if ids.get(who, 0) <= 1:
                ids.pop(who, None)
                if not ids:
                    self.node_identities.pop(resource.node, None)
            else:
                ids[who] -= 1

    def runs_on(self, node: str, namespace: str, service_account: str) -> bool:
        """Whether a workload with that identity is scheduled on `node`."""
        return (namespace, service_account) in self.node_identities.get(node, {})

    def snapshot(self) -> Snapshot:
        return Snapshot.of(e.resource for j in self.journals.values() for e in j.current())

    @staticmethod
    def _compact(journal: TypeJournal) -> None:
        target = TOMBSTONE_MAX // 2
        for key in list(journal.entries):
            if journal.tombstones <= target:
                break
            entry = journal.entries[key]
            if entry.resource is None:
                del journal.entries[key]
                journal.tombstones -= 1
                journal.floor = max(journal.floor, entry.counter)

    def _notify(self, changed: set[ResourceType]) -> None:
        if not changed:
            return
        for listener in list(self.listeners):
            listener(changed)

    def counts(self) -> dict[str, int]:
        return {str(t): j.live for t, j in self.journals.items()}
