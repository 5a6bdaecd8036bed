"""The local cluster's object store: its "API server", kept in files.

Layout under `/run/shoal/<cluster>/store/`:
- `objects/<Kind>/<namespace>/<name>.json`: the current object (cluster-scoped
  kinds use the namespace `_`).
- `journal.jsonl`: one watch event per line, `{"type", "object"}`, in
  resourceVersion order. It is the source of truth for watchers.
- `lock`: writers hold an exclusive flock while they change anything.

Invariants:
- Every change bumps the cluster-wide resourceVersion by one and appends
  exactly one event. The object file is written before the event.
- `list()` returns objects together with the resourceVersion they are
  consistent with, so `watch(since=rv)` continues exactly after it.
- The journal is compacted when it grows past `JOURNAL_MAX` events. A watcher
  asking for a version older than what the journal still holds gets
  `Expired` (the analogue of 410 Gone) and must list again.
- Watchers sleep until the kernel says the journal changed (inotify on the
  store's directory, `shoal.file_events`); none of them polls while the
  cluster is quiet, except for a BOOKMARK every `BOOKMARK_SECONDS`.

Events have the shape Kubernetes watches produce: type ADDED, MODIFIED,
DELETED or BOOKMARK, and the whole object with `metadata.resourceVersion`.
The Kubernetes adapters produce the same `Event`, so consumers are written once.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Iterator

from shoal import file_events
from shoal.errors import ShoalError

RUN_ROOT = Path(os.environ.get("SHOAL_RUN_ROOT", "/run/shoal"))
CLUSTER_SCOPED = frozenset({"Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"})
CLUSTER_NAMESPACE = "_"
JOURNAL_MAX = 20_000
JOURNAL_KEEP = 10_000
BOOKMARK_SECONDS = 5.0
STOP_CHECK_SECONDS = 0.5  # how long a blocking `watch` with a `stop` may sleep before asking it
SERVICE_NETWORK = "198.18.16.0/20"  # the local cluster's Service VIP range
SERVICE_NETWORK_V6 = "fd73:686f:616c:ff::/112"  # and its IPv6 one (`shoal local up --ip-family dual|ipv6`)
# A cluster name becomes a directory under RUN_ROOT, a cgroup and a netns prefix,
# so it is a DNS label of at most 32 characters: never a path, never empty.
CLUSTER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")


class StoreError(ShoalError):
    """Base of the store's errors."""


class ClusterNameInvalid(StoreError, ValueError):
    """A cluster name that could name a path outside the cluster's own (`../..`, `a/b`, ``)."""


def check_cluster_name(name: str) -> str:
    """`name` if it may name a local cluster; else `ClusterNameInvalid`, saying what is allowed."""
    if not isinstance(name, str) or not CLUSTER_NAME.fullmatch(name):
        raise ClusterNameInvalid(
            f"cluster name {name!r} is not valid: use 1 to 32 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (for example: default, demo, team-2)")
    return name


class NotFound(StoreError):
    pass


class ServiceRefused(StoreError, ValueError):
    """A Service asks for IP families or cluster IPs this cluster cannot give (say, IPv6 on an IPv4 cluster)."""


class Expired(StoreError):
    """The requested resourceVersion is older than the journal holds: list again (410 Gone)."""


@dataclass(frozen=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict

    @property
    def resource_version(self) -> int:
        return int(self.object["metadata"]["resourceVersion"])

    @property
    def kind(self) -> str:
        return self.object.get("kind", "")


def key_of(obj: dict) -> tuple[str, str, str]:
    """(kind, namespace, name) of a manifest-shaped object."""
    kind = obj["kind"]
    meta = obj.get("metadata") or {}
    namespace = CLUSTER_NAMESPACE if kind in CLUSTER_SCOPED else meta.get("namespace") or "default"
    return kind, namespace, meta["name"]


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """File-backed list/watch store shared by every process of one local cluster."""

    def __init__(self, cluster: str = "default", root: Path | None = None) -> None:
        self.cluster = check_cluster_name(cluster)
        self.dir = (root or RUN_ROOT) / cluster / "store"
        self.objects_dir = self.dir / "objects"
        self.journal_path = self.dir / "journal.jsonl"
        self.lock_path = self.dir / "lock"

    # -- set-up -------------------------------------------------------------

    def exists(self) -> bool:
        return self.journal_path.exists()

    def init(self, service_ranges: tuple[str, ...] | None = None) -> None:
        """Makes the store; `service_ranges` are the Service VIP ranges, primary family first (the API
        server's --service-cluster-ip-range), kept beside it; without them, what it had, else IPv4 alone."""
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # it holds Secrets and bootstrap tokens
        self.lock_path.touch(exist_ok=True)
        self.journal_path.touch(exist_ok=True)
        if service_ranges is not None:
            self._service_ranges_path.write_text(json.dumps(list(service_ranges)))

    @property
    def _service_ranges_path(self) -> Path:
        return self.dir / "service-ranges.json"

    def service_ranges(self) -> tuple[str, ...]:
        """The ranges Services get their cluster IPs from, primary family first."""
        try:
            return tuple(json.loads(self._service_ranges_path.read_text()))
        except FileNotFoundError:
            return (SERVICE_NETWORK,)

    @contextmanager
    def _locked(self):
        if not self.lock_path.exists():
            raise StoreError(f"cluster {self.cluster!r} has no store at {self.dir}; run `shoal local up` first")
        with open(self.lock_path, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reads ----------------------------------------------------------------

    def resource_version(self) -> int:
        """The cluster's version: the `rv` file's, or the journal's last event's if that is newer (a writer
        died between appending the event and writing the file: the next change must not reuse its version,
        or every watcher would skip that change as one it has seen)."""
        try:
            recorded = int((self.dir / "rv").read_text())
        except (FileNotFoundError, ValueError):
            recorded = 0
        return max(recorded, self._last_journal_version())

    def _last_journal_version(self) -> int:
        """The version of the journal's last event (a line torn by a writer that died is none)."""
        try:
            with open(self.journal_path, "rb") as journal:
                end, size = journal.seek(0, os.SEEK_END), 4096
                while True:
                    start = max(0, end - size)
                    journal.seek(start)
                    lines = journal.read(end - start).split(b"\n")
                    whole = lines[1:-1] if start else lines[:-1]   # the first may be cut, the last is not ended
                    for line in reversed(whole):
                        event = _parse(line)
                        if event is not None:
                            return event.resource_version
                    if start == 0:
                        return 0
                    size *= 4
        except FileNotFoundError:
            return 0

    def _path(self, kind: str, namespace: str, name: str) -> Path:
        return self.objects_dir / kind / namespace / f"{name}.json"

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        namespace = CLUSTER_NAMESPACE if kind in CLUSTER_SCOPED else namespace or "default"
        try:
            return json.loads(self._path(kind, namespace, name).read_text())
        except FileNotFoundError:
            return None

    def list(self, kind: str, namespace: str | None = None) -> tuple[list[dict], int]:
        """All objects of `kind` (in `namespace`, if given) and the version they match."""
        with self._locked():
            rv = self.resource_version()
            base = self.objects_dir / kind
            dirs = [base / namespace] if namespace and kind not in CLUSTER_SCOPED else sorted(base.glob("*"))
            items = []
            for d in dirs:
                for f in sorted(d.glob("*.json")):
                    items.append(json.loads(f.read_text()))
        return items, rv

    def kinds(self) -> list[str]:
        return sorted(p.name for p in self.objects_dir.glob("*") if p.is_dir())

    # -- writes ---------------------------------------------------------------

    def apply(self, obj: dict) -> dict:
        return self.apply_many([obj])[0]

    def apply_many(self, objs: Iterable[dict], merge: Callable[[dict | None, dict], dict] | None = None) -> list[dict]:
        """Creates or replaces each object's spec and metadata, atomically as one batch.

        With `merge`, the object stored is `merge(live, given)` (None when there is
        none yet), computed under the lock, so that no write in between is lost:
        `shoal local apply` passes `kubectl apply`'s three-way merge here.
        Status is owned by the controllers: an apply keeps the stored status.
        """
        objs = list(objs)
        stored = []
        with self._locked():
            rv = self.resource_version()
            events = []
            # Written only once every object of the batch is decided: a refused one leaves nothing half-applied.
            pending: dict[tuple[str, str, str], dict] = {}
            used_ips = self._cluster_ips_in_use() if any(o.get("kind") == "Service" for o in objs) else set()
            for obj in objs:
                kind, namespace, name = key_of(obj)
                old = copy.deepcopy(pending[(kind, namespace, name)]) if (kind, namespace, name) in pending \
                    else self.get(kind, namespace, name)
                new = merge(old, obj) if merge is not None else copy.deepcopy(obj)
                meta = new.setdefault("metadata", {})
                if kind not in CLUSTER_SCOPED:
                    meta["namespace"] = namespace
                self._server_defaults(kind, old, new, used_ips)
                if old is not None and _same_desired(old, new):
                    stored.append(old)
                    continue
                rv += 1
                old_meta = (old or {}).get("metadata", {})
                meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
                meta["creationTimestamp"] = old_meta.get("creationTimestamp") or now_rfc3339()
                meta["generation"] = int(old_meta.get("generation", 0)) + 1
                meta["resourceVersion"] = str(rv)
                if old is not None and "status" in old and "status" not in obj:
                    new["status"] = old["status"]
                pending[(kind, namespace, name)] = new
                events.append(Event("MODIFIED" if old else "ADDED", new))
                stored.append(new)
            for (kind, namespace, name), new in pending.items():
                self._write(kind, namespace, name, new)
            self._append(events, rv)
        return stored

    def mutate(self, kind: str, namespace: str | None, name: str, change) -> dict:
        """Applies `change(obj)` in place under the lock; one event if anything changed.

        This is how controllers write fields they own (status, a binding, labels)
        without replacing the user's object.
        """
        with self._locked():
            obj = self.get(kind, namespace, name)
            if obj is None:
                raise NotFound(f"{kind} {namespace}/{name} not found")
            before = copy.deepcopy(obj)
            change(obj)
            if obj == before:
                return obj
            rv = self.resource_version() + 1
            obj["metadata"]["resourceVersion"] = str(rv)
            self._write(*key_of(obj), obj)
            self._append([Event("MODIFIED", obj)], rv)
            return obj

    def _server_defaults(self, kind: str, old: dict | None, new: dict, used_ips: set[str]) -> None:
        """Fields the API server owns or keeps across a re-apply: a Service's VIP, a Pod's binding."""
        spec = new.setdefault("spec", {}) if kind in ("Service", "Pod") else None
        old_spec = (old or {}).get("spec", {})
        if kind == "Pod" and not spec.get("nodeName") and old_spec.get("nodeName"):
            spec["nodeName"] = old_spec["nodeName"]
        if kind == "Service":
            self._assign_cluster_ips(new, spec, old_spec if old is not None else None, used_ips)

    def _cluster_ips_in_use(self) -> set[str]:
        used = set()
        for f in (self.objects_dir / "Service").glob("*/*.json"):
            spec = json.loads(f.read_text()).get("spec", {})
            used.update(spec.get("clusterIPs") or [spec.get("clusterIP")])
        return used

    def _assign_cluster_ips(self, obj: dict, spec: dict, old_spec: dict | None, used: set[str]) -> None:
        """A Service's ipFamilyPolicy, ipFamilies, clusterIPs and clusterIP, as the API server sets them."""
        from shoal.local import service_ips

        if old_spec is not None:   # the addresses it has stay its own, unless the spec names others
            for field in ("clusterIP", "clusterIPs"):
                if field in old_spec and not spec.get(field):
                    spec[field] = copy.deepcopy(old_spec[field])
        try:
            service_ips.assign(spec, old_spec, self.service_ranges(), used)
        except service_ips.ServiceIPError as e:
            raise ServiceRefused(f"Service {obj['metadata'].get('namespace')}/{obj['metadata']['name']}: {e}") from None

    def update_status(self, kind: str, namespace: str | None, name: str, status: dict) -> dict:
        """Replaces an object's status, the way the kubelet writes pod status."""
        return self.mutate(kind, namespace, name, lambda obj: obj.__setitem__("status", status))

    def patch_metadata(self, kind: str, namespace: str | None, name: str, *, labels=None, annotations=None) -> dict:
        """Merges labels and annotations (a value of None removes the key)."""
        def change(obj):
            meta = obj["metadata"]
            for field, changes in (("labels", labels), ("annotations", annotations)):
                for k, v in (changes or {}).items():
                    current = meta.setdefault(field, {})
                    if v is None:
                        current.pop(k, None)
                    else:
                        current[k] = v
        return self.mutate(kind, namespace, name, change)

    def delete(self, kind: str, namespace: str | None, name: str) -> dict | None:
        return self.delete_many([(kind, namespace, name)])[0]

    def delete_many(self, keys: Iterable[tuple[str, str | None, str]]) -> list[dict | None]:
        out = []
        with self._locked():
            rv = self.resource_version()
            events = []
            for kind, namespace, name in keys:
                namespace = CLUSTER_NAMESPACE if kind in CLUSTER_SCOPED else namespace or "default"
                obj = self.get(kind, namespace, name)
                if obj is None:
                    out.append(None)
                    continue
                rv += 1
                obj["metadata"]["resourceVersion"] = str(rv)
                self._path(kind, namespace, name).unlink()
                events.append(Event("DELETED", obj))
                out.append(obj)
            self._append(events, rv)
        return out

    def _write(self, kind: str, namespace: str, name: str, obj: dict) -> None:
        path = self._path(kind, namespace, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, sort_keys=True))
        os.replace(tmp, path)

    def _append(self, events: list[Event], rv: int) -> None:
        if not events:
            return
        lines = "".join(json.dumps({"type": e.type, "object": e.object}) + "\n" for e in events)
        with open(self.journal_path, "a+b") as journal:
            end = journal.seek(0, os.SEEK_END)
            if end:
                journal.seek(end - 1)
                if journal.read(1) != b"\n":
                    lines = "\n" + lines   # a writer died mid-line: its torn line ends here, not in our event
            journal.write(lines.encode())
        tmp = self.dir / "rv.tmp"
        tmp.write_text(str(rv))
        os.replace(tmp, self.dir / "rv")
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self.journal_path.stat().st_size < JOURNAL_MAX * 200:
            return
        lines = self.journal_path.read_text().splitlines(keepends=True)
        if len(lines) <= JOURNAL_MAX:
            return
        tmp = self.journal_path.with_suffix(".tmp")
        tmp.write_text("".join(lines[-JOURNAL_KEEP:]))
        os.replace(tmp, self.journal_path)

    # -- watch ----------------------------------------------------------------

    def watch(self, since: int, kinds: Iterable[str] | None = None, *, stop=None,
              bookmarks: bool = True) -> Iterator[Event]:
        """Blocking iterator of events after resourceVersion `since`.

        Raises `Expired` if the journal no longer holds `since + 1`. Yields a
        BOOKMARK (an object with only kind and metadata.resourceVersion) every
        few quiet seconds, so a consumer can resume from a recent version.
        `stop` is an optional callable; the iterator ends once it returns true
        (it is asked after each event and at least every `STOP_CHECK_SECONDS`).
        The wait between events sleeps until the journal changes (inotify).
        """
        with file_events.DirectoryChanges(self.dir, {self.journal_path.name}) as changes, \
                _JournalReader(self.journal_path, since, frozenset(kinds) if kinds else None) as reader:
            tail = _Tail(reader, bookmarks)
            while not (stop and stop()):
                events, timeout = tail.next()
                if events:
                    yield from events
                    continue
                if stop is not None:
                    timeout = STOP_CHECK_SECONDS if timeout is None else min(timeout, STOP_CHECK_SECONDS)
                changes.wait(timeout)

    async def awatch(self, since: int, kinds: Iterable[str] | None = None,
                     bookmarks: bool = True) -> AsyncIterator[Event]:
        """The asyncio form of `watch`: between events the loop only waits on an inotify fd."""
        with file_events.DirectoryChanges(self.dir, {self.journal_path.name}) as changes, \
                _JournalReader(self.journal_path, since, frozenset(kinds) if kinds else None) as reader:
            tail = _Tail(reader, bookmarks)
            while True:
                events, timeout = tail.next()
                for event in events:
                    yield event
                if not events:
                    await changes.wait_async(timeout)


class _Tail:
    """What a watch does next, for both forms of it: events to hand out, or how long to wait for a change."""

    def __init__(self, reader: "_JournalReader", bookmarks: bool) -> None:
        self.reader = reader
        self.bookmarks = bookmarks
        self.last_bookmark = time.monotonic()

    def next(self) -> tuple[list[Event], float | None]:
        """(events, _) when there are some; else ([], seconds to wait, None for as long as it takes)."""
        events = self.reader.poll()
        if not events and self.bookmarks:
            due = BOOKMARK_SECONDS - (time.monotonic() - self.last_bookmark)
            if due > 0:
                return [], due
            events = [_bookmark(self.reader.last)]
        if events:
            self.last_bookmark = time.monotonic()
        return events, None


def _bookmark(rv: int) -> Event:
    return Event("BOOKMARK", {"kind": "", "metadata": {"resourceVersion": str(rv)}})


def _parse(line: bytes) -> Event | None:
    """A journal line's event; None for a line torn by a writer that died while appending it."""
    try:
        raw = json.loads(line)
        event = Event(raw["type"], raw["object"])
        event.resource_version      # (a line without one is no event either)
        return event
    except (ValueError, KeyError, TypeError):
        return None


def _same_desired(old: dict, new: dict) -> bool:
    """True when an apply would change nothing but server-set fields."""
    def desired(obj):
        o = {k: v for k, v in obj.items() if k != "status"}
        meta = dict(o.get("metadata") or {})
        for k in ("uid", "creationTimestamp", "generation", "resourceVersion"):
            meta.pop(k, None)
        o["metadata"] = meta
        return o
    return desired(old) == desired(new)


class _JournalReader:
    """Tails the journal from a resourceVersion, surviving compaction."""

    def __init__(self, path: Path, since: int, kinds: frozenset[str] | None) -> None:
        self.path = path
        self.last = since
        self.kinds = kinds
        self.file = None
        self.inode = None
        self.buffer = b""
        self._open()

    def __enter__(self) -> "_JournalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Lets the journal go now, not when the collector finds the reader (a watch ended, or Expired)."""
        if self.file:
            self.file.close()
            self.file = None

    def _open(self) -> None:
        self.close()
        self.file = open(self.path, "rb")
        self.inode = os.fstat(self.file.fileno()).st_ino
        self.buffer = b""
        first = self.file.readline()
        if first.endswith(b"\n"):
            first_rv = int(json.loads(first)["object"]["metadata"]["resourceVersion"])
            if first_rv > self.last + 1:
                self.close()
                raise Expired(f"resourceVersion {self.last} is too old; the journal starts at {first_rv}")
        self.file.seek(0)

    def poll(self) -> list[Event]:
        try:
            if os.stat(self.path).st_ino != self.inode:
                self._open()
        except FileNotFoundError:
            raise StoreError(f"journal {self.path} is gone: the cluster was taken down") from None
        chunk = self.file.read()
        if not chunk:
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        events = []
        for line in lines:
            event = _parse(line)
            if event is None:
                continue       # torn by a writer that died mid-line; the next one ended it
            rv = event.resource_version
            if rv <= self.last:
                continue
            self.last = rv
            if self.kinds is None or event.kind in self.kinds:
                events.append(event)
        return events
