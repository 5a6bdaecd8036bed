"""The sans-IO half of list/watch: what a source knows, and the events a re-list implies.

`ObjectCache` holds the last object seen for every (kind, namespace, name).
- `replace(kind, items, rv)`: after a (re-)list of one kind, the events that
  take a consumer from what it saw to the list: ADDED for new keys, MODIFIED
  for changed ones, DELETED (with the last object seen) for keys gone.
- `apply(event)`: one watch event; returns the event to pass on, or None when
  it tells nothing new (an object already seen at that version, a deletion of
  something never seen). BOOKMARKs only advance the version.
Both sources (local store, Kubernetes) use it, so consumers get the same
stream: the objects as events, then BOOKMARKs with the version reached.
"""

from __future__ import annotations

from typing import Iterable

from shoal.store import Event

from control_plane.errors import ControlPlaneError

Key = tuple[str, str, str]


class SourceError(ControlPlaneError):
    """Base of the config sources' errors."""


class Gone(SourceError):
    """The version asked for is too old (HTTP 410 / store.Expired): list again."""


class WatchError(SourceError):
    """The watch stream carried an error other than 410."""


def key_of(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def version_of(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _newer(a: str, b: str) -> bool:
    """a is a later resourceVersion than b (numeric where both are, else just different)."""
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


class ObjectCache:
    def __init__(self, numeric_versions: bool = False) -> None:
        # numeric_versions: versions are one cluster-wide counter (the local store), so a
        # watch started from an older list may replay events already listed: skip those.
        self.numeric_versions = numeric_versions
        self.objects: dict[Key, dict] = {}
        self.versions: dict[str, str] = {}   # kind -> last resourceVersion

    def replace(self, kind: str, items: Iterable[dict], resource_version: str) -> list[Event]:
        events = []
        seen = set()
        for obj in items:
            key = key_of(obj)
            seen.add(key)
            old = self.objects.get(key)
            if old is None:
                events.append(Event("ADDED", obj))
            elif old != obj:
                events.append(Event("MODIFIED", obj))
            self.objects[key] = obj
        for key in [k for k in self.objects if k[0] == kind and k not in seen]:
            events.append(Event("DELETED", self.objects.pop(key)))
        self.versions[kind] = str(resource_version)
        return events

    def apply(self, event: Event, kind: str | None = None) -> Event | None:
        """Fold one watch event in; `kind` names the stream it came from (for BOOKMARKs)."""
        obj = event.object
        version = version_of(obj)
        if event.type == "BOOKMARK":
            if kind is not None and version:
                self.versions[kind] = version
            return Event("BOOKMARK", obj)
        key = key_of(obj)
        if version:
            self.versions[key[0]] = version
        old = self.objects.get(key)
        if event.type == "DELETED":
            if old is None:
                return None
            del self.objects[key]
            return event
        if event.type not in ("ADDED", "MODIFIED"):
            raise WatchError(f"unexpected watch event type {event.type!r}")
        if old is not None and self.numeric_versions and not _newer(version, version_of(old)):
            return None
        self.objects[key] = obj
        return Event("MODIFIED" if old is not None else "ADDED", obj)
