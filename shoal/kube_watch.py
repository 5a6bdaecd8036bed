"""List, then watch, one kind of the Kubernetes API; list again on 410 Gone. Used by every source.

`ListWatch(api_client, kind).run(emit, stop)` loops in its thread until
`stop` is set, and tells `emit` what it learns, as frozen records:
- `Listed(kind, items, version)`: a (re-)list; items carry kind/apiVersion
  (a list's items have none). After a 410 the consumer diffs it against what
  it had;
- `Changed(kind, type, object)`: one watch event, ADDED, MODIFIED or DELETED;
- `Bookmarked(kind, version)`: the version moved with no change to show;
- `Absent(kind, crd)`: the kind is served in no version (its CRD is not
  installed): treat it as empty. Emitted once per absence.

How it behaves, as an informer's reflector does:
1. Pick the version: each of `kind.versions`, newest first (a `limit=1`
   list); a 404 means not served. None served: `Absent`, one warning naming
   the CRD, and a new look every `rediscover_interval` (silently); once the
   CRD is created the kind is listed like any other.
2. List (`labelSelector`/`fieldSelector` as given), then watch from the
   list's resourceVersion with `allowWatchBookmarks=true` and a server-side
   `timeoutSeconds`. A stream that ends or breaks resumes from the last
   version seen, without a list.
3. 410 Gone (an ERROR event or an HTTP 410): list again.
4. Any other failure (401, 403, 429, 5xx, no answer): logged with what to
   check, then tried again after `Backoff` (the server's Retry-After when it
   gave one); the failure count resets after a good list.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from shoal import log
from shoal.kube_client import Backoff, KubeError, KubeGone, KubeNotFound, request

_log = log.get("shoal.kube_watch")


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str                    # "" for the core API
    versions: tuple[str, ...]     # preference order, newest first
    plural: str
    label_selector: str = ""
    field_selector: str = ""

    def path(self, version: str) -> str:
        return f"/api/{version}/{self.plural}" if not self.group else f"/apis/{self.group}/{version}/{self.plural}"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def crd(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class Listed:
    kind: str
    items: tuple[dict, ...] = field(repr=False)
    version: str


@dataclass(frozen=True)
class Changed:
    kind: str
    type: str
    object: dict = field(repr=False)


@dataclass(frozen=True)
class Bookmarked:
    kind: str
    version: str


@dataclass(frozen=True)
class Absent:
    kind: str
    crd: str


Emit = Callable[[object], None]


class _Stopped(Exception):
    pass


class ListWatch:
    def __init__(self, api_client, kind: Kind, *, watch_timeout: int = 300, read_timeout: float = 330.0,
                 backoff: Backoff = Backoff(), rediscover_interval: float = 60.0) -> None:
        self.api = api_client
        self.kind = kind
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff
        self.rediscover_interval = rediscover_interval
        self.version: str | None = None     # the served API version in use
        self.resource_version = ""          # the last one seen
        self.lists = 0
        self.absent: bool | None = None
        self._open = None                   # the watch response being read (stop() shuts it)
        self._lock = threading.Lock()

    def _query(self) -> list[tuple[str, str]]:
        query = []
        if self.kind.label_selector:
            query.append(("labelSelector", self.kind.label_selector))
        if self.kind.field_selector:
            query.append(("fieldSelector", self.kind.field_selector))
        return query

    def _pick_version(self) -> str | None:
        for version in self.kind.versions:
            try:
                request(self.api, "GET", self.kind.path(version), query=[("limit", "1")],
                        doing=f"looking for {self.kind.plural} in {self.kind.api_version(version)}")
                return version
            except KubeNotFound:
                continue
        return None

    def _list(self, version: str) -> Listed:
        body = request(self.api, "GET", self.kind.path(version), query=self._query(),
                       doing=f"listing {self.kind.plural}")
        items = []
        for item in body.get("items") or []:
            item = dict(item)
            item.setdefault("kind", self.kind.kind)
            item.setdefault("apiVersion", self.kind.api_version(version))
            items.append(item)
        return Listed(self.kind.kind, tuple(items), str((body.get("metadata") or {}).get("resourceVersion") or ""))

    def _events(self, version: str, stop: threading.Event) -> Iterator[dict]:
        query = self._query() + [("watch", "1"), ("resourceVersion", self.resource_version),
                                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(self.watch_timeout))]
        raw = request(self.api, "GET", self.kind.path(version), query=query, stream=True,
                      timeout=(10.0, self.read_timeout), doing=f"watching {self.kind.plural}")
        with self._lock:
            self._open = raw
        try:
            buffer = b""
            for chunk in raw.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
                if stop.is_set():
                    raise _Stopped()
        finally:
            with self._lock:
                self._open = None
            raw.release_conn()

    def _watch(self, version: str, emit: Emit, stop: threading.Event) -> None:
        """Until 410 (KubeGone) or a failure; a stream that ends resumes from the last version."""
        while not stop.is_set():
            try:
                for event in self._events(version, stop):
                    type_, obj = event.get("type"), event.get("object") or {}
                    if type_ == "ERROR":
                        code = obj.get("code") or 0
                        if code == 410:
                            raise KubeGone(f"watching {self.kind.plural}: {obj.get('message', 'too old')}", 410)
                        raise KubeError(f"watching {self.kind.plural}: the stream carried an error: "
                                        f"{obj.get('message', obj)}", code)
                    self.resource_version = str((obj.get("metadata") or {}).get("resourceVersion")
                                                or self.resource_version)
                    if type_ == "BOOKMARK":
                        emit(Bookmarked(self.kind.kind, self.resource_version))
                        continue
                    obj.setdefault("kind", self.kind.kind)
                    obj.setdefault("apiVersion", self.kind.api_version(version))
                    emit(Changed(self.kind.kind, type_, obj))
            except KubeError:
                raise       # 410, or a watch request refused or unanswered: the run loop backs off, lists again
            except _Stopped:
                return
            except Exception as e:  # noqa: BLE001 - urllib3's protocol and read errors mid-stream, a torn line
                if stop.is_set():
                    return
                _log.info("watch stream broke; resuming", resource=self.kind.plural, since=self.resource_version,
                          error=f"{type(e).__name__}: {e}")
                stop.wait(min(self.backoff.initial, 0.2))   # a server that cuts every stream at once: no spin

    def run(self, emit: Emit, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                if self.version is None:
                    self.version = self._pick_version()
                    if self.version is None:
                        if self.absent is not True:
                            _log.warning(f"the {self.kind.kind} kind is not served (is the CRD {self.kind.crd} "
                                         f"installed?); treated as empty, looked for again every "
                                         f"{self.rediscover_interval:g} s", resource=self.kind.plural,
                                         versions=",".join(self.kind.versions))
                            self.absent = True
                            emit(Absent(self.kind.kind, self.kind.crd))
                        stop.wait(self.rediscover_interval)
                        continue
                    if self.absent:
                        _log.info(f"the {self.kind.kind} kind is now served", crd=self.kind.crd,
                                  api_version=self.kind.api_version(self.version))
                    self.absent = False
                listed = self._list(self.version)
                self.lists += 1
                failures = 0
                self.resource_version = listed.version
                emit(listed)
                self._watch(self.version, emit, stop)
            except KubeGone:
                _log.info("watch expired (410 Gone); listing again", resource=self.kind.plural)
            except KubeNotFound:
                self.version = None   # the CRD went away (or its version did): look again, after a pause
                failures += 1
                stop.wait(self.backoff.delay(failures))
            except KubeError as e:
                if stop.is_set():
                    return
                failures += 1
                delay = self.backoff.delay(failures, e.retry_after)
                _log.warning("list/watch failed; retrying", resource=self.kind.plural, error=str(e),
                             retry_in=round(delay, 2))
                stop.wait(delay)

    def stop(self) -> None:
        """Shut the open watch stream, so a blocked read returns (with `stop` set, the loop ends)."""
        with self._lock:
            raw = self._open
        if raw is not None:
            try:
                raw.shutdown()
            except Exception:  # noqa: BLE001 - already closed
                pass
