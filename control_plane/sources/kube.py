"""A Kubernetes API server as a config source: every kind listed then watched, merged into one stream.

Each kind (Namespaces, Pods, Services, ServiceAccounts, and every mesh CRD)
has its own list/watch loop (`shoal.kube_watch.ListWatch`, in a thread: the
`kubernetes` client is blocking); their records are folded into an
`ObjectCache` and merged into one asyncio stream of `shoal.store.Event`s,
as `LocalSource` gives:
- a list (the first, or again after 410 Gone) yields only the difference
  from what was seen (ObjectCache.replace);
- a watch event yields ADDED, MODIFIED or DELETED; a BOOKMARK only its kind
  and version;
- a kind whose CRD is not installed is empty (what was seen of it is
  DELETED), named once in a warning, and looked for again every
  `rediscover_interval`; once installed it is listed like the others;
- failures (401, 403, 429, 5xx, no answer) are retried with backoff.

`report_invalid` records a refused object as a core/v1 Event with reason
`ShoalInvalidConfig`, next to the object, so `kubectl describe` shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import AsyncIterator, Iterable

from shoal import kube_client
from shoal.kube_client import Backoff, KubeConflict
from shoal.kube_watch import Absent, Bookmarked, Changed, Kind, Listed, ListWatch
from shoal.store import Event

from control_plane.sources.cache import ObjectCache
from control_plane.sources.local import invalid_config_event

Resource = Kind   # (kind, group, versions, plural): what the source lists and watches

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
        self.watchers = {r.kind: ListWatch(api_client, r, watch_timeout=watch_timeout, read_timeout=read_timeout,
                                           backoff=Backoff(initial=retry_delay, maximum=max(retry_delay, 30.0)),
                                           rediscover_interval=rediscover_interval)
                         for r in self.resources}
        self._stop = threading.Event()

    @property
    def lists(self) -> dict[str, int]:
        """kind -> number of lists done (1 + re-lists)."""
        return {kind: w.lists for kind, w in self.watchers.items() if w.lists}

    @property
    def served(self) -> dict[str, str | None]:
        """kind -> the API version in use (None: served in none, its CRD absent); known kinds only."""
        return {kind: w.version for kind, w in self.watchers.items() if w.absent is not None}

    def _fold(self, record) -> list[Event]:
        """The events a ListWatch record means to a consumer (the cache is touched in the loop only)."""
        if isinstance(record, Listed):
            events = self.cache.replace(record.kind, record.items, record.version)
            return events + [Event("BOOKMARK", {"kind": record.kind, "metadata": {"resourceVersion": record.version}})]
        if isinstance(record, Absent):
            return self.cache.replace(record.kind, [], "") + [
                Event("BOOKMARK", {"kind": record.kind, "metadata": {"resourceVersion": ""}})]
        if isinstance(record, Bookmarked):
            self.cache.apply(Event("BOOKMARK", {"metadata": {"resourceVersion": record.version}}), kind=record.kind)
            return [Event("BOOKMARK", {"kind": record.kind, "metadata": {"resourceVersion": record.version}})]
        if isinstance(record, Changed):
            event = self.cache.apply(Event(record.type, record.object), kind=record.kind)
            return [event] if event is not None else []
        return []

    async def events(self) -> AsyncIterator[Event]:
        """Every resource's events. The first BOOKMARK (with no kind) comes once every resource
        has been listed (or found absent); later BOOKMARKs carry one resource's kind and version."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        pending = {r.kind for r in self.resources}

        def emit(record) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, record)

        for kind, watcher in self.watchers.items():
            threading.Thread(target=watcher.run, args=(emit, self._stop), name=f"kube-{watcher.kind.plural}",
                             daemon=True).start()
        try:
            while True:
                record = await queue.get()
                for event in self._fold(record):
                    if event.type == "BOOKMARK":
                        # Until every kind is listed, per-kind BOOKMARKs are held back, so the first
                        # BOOKMARK a consumer sees means "complete view" (as with LocalSource).
                        if pending:
                            pending.discard(event.object["kind"])
                            if not pending:
                                yield Event("BOOKMARK", {"kind": "", "metadata": {"resourceVersion": ""}})
                            continue
                    yield event
        finally:
            self.stop()

    def stop(self) -> None:
        """End every loop (open streams are shut down so blocked reads return)."""
        self._stop.set()
        for watcher in self.watchers.values():
            watcher.stop()


def report_invalid(api_client, obj: dict, errors, component: str = "shoal-control-plane") -> dict | None:
    """Create a core/v1 Event (reason ShoalInvalidConfig) about a refused object; None if it exists already.
    A KubeError if it cannot be written (429/5xx with Retry-After are tried again first)."""
    event = invalid_config_event(obj, errors, component)
    digest = hashlib.sha256(event["message"].encode()).hexdigest()[:10]
    event["metadata"]["name"] = f"{event['metadata']['name']}.{digest}"
    namespace = event["metadata"]["namespace"]
    try:
        return kube_client.call(lambda: kube_client.request(
            api_client, "POST", f"/api/v1/namespaces/{namespace}/events", body=event, timeout=(10.0, 30.0)),
            f"recording a ShoalInvalidConfig event in {namespace}")
    except KubeConflict:
        return None
