"""A Kubernetes API server as a config source: list, then watch with bookmarks; list again on 410 Gone.

Each resource (Namespaces, Pods, Services, ServiceAccounts, and every mesh
CRD) has its own list/watch loop, in a thread (the `kubernetes` client is
blocking); their events are merged into one asyncio stream of
`shoal.store.Event`s, as `LocalSource` gives.

Per resource:
1. Pick the version: the CRDs are tried in each served version, newest first
   (for example VirtualService as networking.istio.io v1, then v1beta1, then
   v1alpha3). A version the server does not serve (404) is skipped with one
   log line; a resource served in no version is looked for again every
   `rediscover_interval` (a CRD installed later is picked up). The API server
   converts between the versions of one CRD, so one served version shows
   every object.
2. List: `GET <path>` gives the items and `metadata.resourceVersion`. Items
   of a list carry no kind/apiVersion; they are filled in.
3. Watch from that version: `?watch=1&resourceVersion=RV&allowWatchBookmarks=true`,
   newline-delimited JSON events. BOOKMARKs advance the version and are
   passed on (only the version). A dropped or timed-out stream resumes from
   the last version seen, without a list.
4. An ERROR event with code 410 (or an HTTP 410) means the version is too
   old: list again and pass on only the difference (ObjectCache.replace).

`report_invalid` records a refused object as a core/v1 Event with reason
`ShoalInvalidConfig`, next to the object, so `kubectl describe` shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Iterator

from shoal import log
from shoal.store import Event

from control_plane.sources.cache import Gone, ObjectCache, SourceError, WatchError
from control_plane.sources.local import invalid_config_event

_log = log.get("control_plane.sources.kube")


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str                   # "" for the core API
    versions: tuple[str, ...]    # preference order, newest first
    plural: str

    def path(self, version: str) -> str:
        if not self.group:
            return f"/api/{version}/{self.plural}"
        return f"/apis/{self.group}/{version}/{self.plural}"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "", ("v1",), "namespaces"),
    Resource("Pod", "", ("v1",), "pods"),
    Resource("Service", "", ("v1",), "services"),
    Resource("ServiceAccount", "", ("v1",), "serviceaccounts"),
    Resource("HTTPRoute", "gateway.networking.k8s.io", ("v1", "v1beta1"), "httproutes"),
    Resource("Gateway", "gateway.networking.k8s.io", ("v1", "v1beta1"), "gateways"),
    Resource("VirtualService", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "virtualservices"),
    Resource("DestinationRule", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "destinationrules"),
    Resource("AuthorizationPolicy", "security.istio.io", ("v1", "v1beta1"), "authorizationpolicies"),
    Resource("PeerAuthentication", "security.istio.io", ("v1", "v1beta1"), "peerauthentications"),
    Resource("TrafficSplit", "split.smi-spec.io", ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "trafficsplits"),
)


def make_api_client(configuration=None, *, pool_size: int = len(RESOURCES) + 8):
    """An ApiClient from the given configuration, else in-cluster config, else ~/.kube/config.

    The connection pool holds one long-lived watch per resource plus a few
    requests, so it is sized above the client's default (5 per CPU).
    """
    from kubernetes import client, config

    if configuration is None:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = max(pool_size, configuration.connection_pool_maxsize or 0)
    return client.ApiClient(configuration)


class NotServed(SourceError):
    """The API server does not serve this group/version/resource (404)."""


class ApiError(SourceError):
    """The API server answered with an error; the message is its Status, cut short."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status} from the API server: {message} (check the control plane's RBAC "
                         f"if 401/403)")
        self.status = status


class _Closed(SourceError):
    """The source was stopped while a request was open."""


class KubeSource:
    """List/watch every resource through a `kubernetes.client.ApiClient`.

    `watch_timeout` is the server-side timeoutSeconds of one watch request
    (the stream then ends and resumes); `read_timeout` bounds a silent stream.
    """

    def __init__(self, api_client, resources: Iterable[Resource] = RESOURCES, *,
                 watch_timeout: int = 300, read_timeout: float = 330.0, retry_delay: float = 1.0,
                 rediscover_interval: float = 60.0) -> None:
        self.api = api_client
        self.resources = tuple(resources)
        self.cache = ObjectCache()
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout
        self.retry_delay = retry_delay
        self.rediscover_interval = rediscover_interval
        self.lists: dict[str, int] = {}          # kind -> number of lists done (1 + re-lists)
        self.served: dict[str, str | None] = {}  # kind -> version used (None: not served)
        self._stop = threading.Event()
        self._lock = threading.Lock()            # the cache is shared by the threads
        self._responses: set = set()

    # -- HTTP -------------------------------------------------------------------

    def _get(self, path: str, query: list[tuple[str, str]], *, stream: bool):
        method, url, headers, body, post = self.api.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, header_params=headers, body=body, post_params=post,
                                     _request_timeout=(10.0, self.read_timeout if stream else 60.0))
        raw = response.response
        if response.status >= 400:
            text = raw.data.decode("utf-8", "replace") if not stream else raw.read().decode("utf-8", "replace")
            raw.release_conn()
            if response.status == 410:
                raise Gone(text)
            if response.status == 404:
                raise NotServed(path)
            raise ApiError(response.status, text[:300])
        return raw

    def _list(self, resource: Resource, version: str) -> tuple[list[dict], str]:
        raw = self._get(resource.path(version), [], stream=False)
        body = json.loads(raw.data)
        raw.release_conn()
        items = []
        for item in body.get("items") or []:
            item = dict(item)
            item.setdefault("kind", resource.kind)
            item.setdefault("apiVersion", resource.api_version(version))
            items.append(item)
        return items, str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_lines(self, resource: Resource, version: str, since: str) -> Iterator[dict]:
        query = [("watch", "1"), ("resourceVersion", since), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(self.watch_timeout))]
        raw = self._get(resource.path(version), query, stream=True)
        with self._lock:
            self._responses.add(raw)
        try:
            buffer = b""
            for chunk in raw.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
                if self._stop.is_set():
                    raise _Closed()
        finally:
            with self._lock:
                self._responses.discard(raw)
            raw.release_conn()

    # -- one resource -------------------------------------------------------------

    def _pick_version(self, resource: Resource, quiet: bool = False) -> str | None:
        for version in resource.versions:
            try:
                raw = self._get(resource.path(version), [("limit", "1")], stream=False)
                raw.data  # read it all, so the connection can be reused
                raw.release_conn()
                return version
            except NotServed:
                if not quiet:
                    _log.info("version not served; skipped", resource=resource.plural,
                              api_version=resource.api_version(version))
        return None

    def _run(self, resource: Resource, emit) -> None:
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._pick_version(resource, quiet=resource.kind in self.served)
                    if version is None:
                        if resource.kind not in self.served:
                            _log.warning("resource served in no known version; looking again every "
                                         f"{self.rediscover_interval:g} s", resource=resource.plural,
                                         versions=",".join(resource.versions))
                            self.served[resource.kind] = None
                            emit(None)   # counts as listed: nothing to wait for
                        self._stop.wait(self.rediscover_interval)
                        continue
                    self.served[resource.kind] = version
                items, since = self._list(resource, version)
                with self._lock:
                    events = self.cache.replace(resource.kind, items, since)
                self.lists[resource.kind] = self.lists.get(resource.kind, 0) + 1
                for event in events:
                    emit(event)
                emit(Event("BOOKMARK", {"kind": resource.kind, "metadata": {"resourceVersion": since}}))
                self._watch(resource, version, emit)
            except Gone:
                _log.info("watch expired (410 Gone); listing again", resource=resource.plural)
            except _Closed:
                return
            except Exception as exc:  # network errors, server errors: retry with the same version
                if self._stop.is_set():
                    return
                _log.warning("list/watch failed; retrying", resource=resource.plural, error=str(exc))
                self._stop.wait(self.retry_delay)

    def _watch(self, resource: Resource, version: str, emit) -> None:
        """Watch until 410 (raises Gone); dropped streams resume from the last version."""
        while not self._stop.is_set():
            since = self.cache.versions.get(resource.kind, "")
            try:
                for raw in self._watch_lines(resource, version, since):
                    kind = raw.get("type")
                    obj = raw.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(obj.get("message", "resourceVersion too old"))
                        raise WatchError(f"{resource.plural}: {obj.get('message', obj)}")
                    if kind != "BOOKMARK":
                        obj.setdefault("kind", resource.kind)
                        obj.setdefault("apiVersion", resource.api_version(version))
                    with self._lock:
                        event = self.cache.apply(Event(kind, obj), kind=resource.kind)
                    if event is not None:
                        if event.type == "BOOKMARK":
                            event = Event("BOOKMARK", {"kind": resource.kind, "metadata": obj.get("metadata", {})})
                        emit(event)
            except (Gone, _Closed, WatchError):
                raise
            except Exception as exc:
                if self._stop.is_set():
                    raise _Closed() from None
                _log.info("watch stream ended; resuming", resource=resource.plural, since=since, error=str(exc))
                self._stop.wait(min(self.retry_delay, 0.2))

    # -- the merged stream --------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every resource's events. The first BOOKMARK (with no kind) comes once every resource
        has been listed; later BOOKMARKs carry one resource's kind and version."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        pending = {r.kind for r in self.resources}
        threads = []

        def emitter(kind: str):
            def emit(event: Event | None) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, event))
            return emit

        for resource in self.resources:
            thread = threading.Thread(target=self._run, args=(resource, emitter(resource.kind)),
                                      name=f"kube-{resource.plural}", daemon=True)
            thread.start()
            threads.append(thread)
        try:
            while True:
                kind, event = await queue.get()
                if event is None or event.type == "BOOKMARK":
                    # Until every resource is listed, per-resource BOOKMARKs are held back, so the
                    # first BOOKMARK a consumer sees means "complete view" (as with LocalSource).
                    synced_before = not pending
                    pending.discard(kind)
                    if not synced_before:
                        if not pending:
                            yield Event("BOOKMARK", {"kind": "", "metadata": {"resourceVersion": ""}})
                        continue
                    if event is None:
                        continue
                yield event
        finally:
            self.stop()

    def stop(self) -> None:
        """End every loop (open streams are shut down so blocked reads return)."""
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for raw in responses:
            try:
                raw.shutdown()
            except Exception:
                pass


def report_invalid(api_client, obj: dict, errors, component: str = "shoal-control-plane") -> dict | None:
    """Create a core/v1 Event (reason ShoalInvalidConfig) about a refused object; None if it exists already."""
    event = invalid_config_event(obj, errors, component)
    digest = hashlib.sha256(event["message"].encode()).hexdigest()[:10]
    event["metadata"]["name"] = f"{event['metadata']['name']}.{digest}"
    namespace = event["metadata"]["namespace"]
    method, url, headers, body, post = api_client.param_serialize(
        "POST", f"/api/v1/namespaces/{namespace}/events", body=event,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, header_params=headers, body=body, post_params=post,
                                   _request_timeout=(10.0, 30.0))
    data = response.response.data
    if response.status == 409:
        return None
    if response.status >= 400:
        raise ApiError(response.status, data.decode("utf-8", "replace")[:300])
    return json.loads(data)

