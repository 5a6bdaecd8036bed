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

Two kinds share the name Gateway (Gateway API's and Istio's ingress one):
each resource is its own stream (`stream_names`: the kind, or
`Kind.group` for a later one of the same kind) with its own ObjectCache, so
a list of one never deletes the other's objects.

Secrets are never listed or watched: the TLS Secrets the ingress Gateways'
HTTPS servers name are read by name (`control_plane.sources.kube_secrets`),
when a Gateway or a selected Pod makes a new one wanted and again every
`secret_interval` seconds; they come as kind Secret events like the rest.

`report_invalid` records a refused object as a core/v1 Event with reason
`ShoalInvalidConfig`, next to the object, so `kubectl describe` shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import AsyncIterator, Iterable

from shoal import kube_client, log
from shoal.kube_client import Backoff, KubeConflict
from shoal.kube_watch import Absent, Bookmarked, Changed, Kind, Listed, ListWatch
from shoal.store import Event

from control_plane.sources.cache import ObjectCache
from control_plane.sources.kube_secrets import SecretReader, wanted_secrets
from control_plane.sources.local import invalid_config_event

logger = log.get("shoal.control_plane.sources.kube")

Resource = Kind   # (kind, group, versions, plural): what the source lists and watches

RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "", ("v1",), "namespaces"),
    Resource("Pod", "", ("v1",), "pods"),
    Resource("Service", "", ("v1",), "services"),
    Resource("ServiceAccount", "", ("v1",), "serviceaccounts"),
    Resource("HTTPRoute", "gateway.networking.k8s.io", ("v1", "v1beta1"), "httproutes"),
    Resource("Gateway", "gateway.networking.k8s.io", ("v1", "v1beta1"), "gateways"),
    Resource("Gateway", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "gateways"),   # ingress
    Resource("ServiceEntry", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "serviceentries"),
    Resource("VirtualService", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "virtualservices"),
    Resource("DestinationRule", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "destinationrules"),
    Resource("AuthorizationPolicy", "security.istio.io", ("v1", "v1beta1"), "authorizationpolicies"),
    Resource("PeerAuthentication", "security.istio.io", ("v1", "v1beta1"), "peerauthentications"),
    Resource("TrafficSplit", "split.smi-spec.io", ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "trafficsplits"),
    # What ingress Gateways and their HTTPRoutes may name in other namespaces (TLS Secrets, backends).
    Resource("ReferenceGrant", "gateway.networking.k8s.io", ("v1beta1",), "referencegrants"),   # as upstream serves it
)


def stream_names(resources: Iterable[Resource]) -> dict[Resource, str]:
    """Each resource's stream: its kind, or `Kind.group` when an earlier resource has that kind."""
    out: dict[Resource, str] = {}
    for r in resources:
        out[r] = r.kind if r.kind not in out.values() else f"{r.kind}.{r.group}"
    return out


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
    (the stream then ends and resumes); `read_timeout` bounds a silent stream;
    `secret_interval` is how often the named TLS Secrets are read again.
    """

    def __init__(self, api_client, resources: Iterable[Resource] = RESOURCES, *,
                 watch_timeout: int = 300, read_timeout: float = 330.0, retry_delay: float = 1.0,
                 rediscover_interval: float = 60.0, secret_interval: float = 30.0) -> None:
        self.api = api_client
        self.resources = tuple(resources)
        self.streams = stream_names(self.resources)
        self.caches = {name: ObjectCache() for name in self.streams.values()}
        backoff = Backoff(initial=retry_delay, maximum=max(retry_delay, 30.0))
        self.watchers = {self.streams[r]: ListWatch(api_client, r, watch_timeout=watch_timeout,
                                                    read_timeout=read_timeout, backoff=backoff,
                                                    rediscover_interval=rediscover_interval)
                         for r in self.resources}
        self.secrets = SecretReader(api_client, secret_interval)
        self._secrets_cache = ObjectCache()
        self._stop = threading.Event()
        self.synced = False      # every resource listed (or found absent) and passed on: a complete view

    def view_version(self) -> tuple:
        """Changes whenever what the caches hold may have (every kind's last resourceVersion seen)."""
        return tuple((name, tuple(sorted(cache.versions.items()))) for name, cache in sorted(self.caches.items()))

    @property
    def lists(self) -> dict[str, int]:
        """stream -> number of lists done (1 + re-lists)."""
        return {name: w.lists for name, w in self.watchers.items() if w.lists}

    @property
    def served(self) -> dict[str, str | None]:
        """stream -> the API version in use (None: served in none, its CRD absent); known kinds only."""
        return {name: w.version for name, w in self.watchers.items() if w.absent is not None}

    def _fold(self, stream: str, record) -> list[Event]:
        """The events a ListWatch record means to a consumer (the caches are touched in the loop only)."""
        cache = self.caches[stream]
        if isinstance(record, Listed):
            events = cache.replace(record.kind, record.items, record.version)
            return events + [Event("BOOKMARK", {"kind": stream, "metadata": {"resourceVersion": record.version}})]
        if isinstance(record, Absent):
            return cache.replace(record.kind, [], "") + [
                Event("BOOKMARK", {"kind": stream, "metadata": {"resourceVersion": ""}})]
        if isinstance(record, Bookmarked):
            cache.apply(Event("BOOKMARK", {"metadata": {"resourceVersion": record.version}}), kind=record.kind)
            return [Event("BOOKMARK", {"kind": stream, "metadata": {"resourceVersion": record.version}})]
        if isinstance(record, Changed):
            event = cache.apply(Event(record.type, record.object), kind=record.kind)
            return [event] if event is not None else []
        return []

    def wanted_secrets(self) -> frozenset[tuple[str, str]]:
        """The TLS Secrets the Gateways seen so far name (called in the loop, where the caches change)."""
        gateways = [o for name, cache in self.caches.items() if name.startswith("Gateway")
                    for o in cache.objects.values()]
        if not gateways:
            return frozenset()
        return wanted_secrets(gateways, self.caches["Pod"].objects.values() if "Pod" in self.caches else (),
                              self.caches["ReferenceGrant"].objects.values() if "ReferenceGrant" in self.caches
                              else ())

    async def _read_secrets(self, queue: asyncio.Queue, changed: asyncio.Event, had: frozenset) -> None:
        """Read the wanted Secrets: the newly wanted at once, all of them every `secret_interval`
        (`had`: those just read whole)."""
        loop = asyncio.get_running_loop()
        read_all_at = loop.time() + self.secrets.interval
        while not self._stop.is_set():
            changed.clear()        # before looking: a change while reading wakes the next pass
            wanted = self.wanted_secrets()
            now = loop.time()
            keys = None if now >= read_all_at else wanted - had
            if keys is None:
                read_all_at = now + self.secrets.interval
            if keys is None or keys or wanted != had:
                events = await asyncio.to_thread(self.secrets.read, wanted, keys, _warn_secret)
                for event in events:
                    queue.put_nowait(("Secret", event))
            had = wanted
            try:
                await asyncio.wait_for(changed.wait(), max(0.05, read_all_at - loop.time()))
            except asyncio.TimeoutError:
                pass

    async def events(self) -> AsyncIterator[Event]:
        """Every resource's events. The first BOOKMARK (with no kind) comes once every resource
        has been listed (or found absent); later BOOKMARKs carry one resource's stream and version."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        pending = set(self.watchers)
        changed = asyncio.Event()      # a Gateway, Pod or ReferenceGrant changed: the wanted Secrets may have

        for name, watcher in self.watchers.items():
            def emit(record, stream=name) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (stream, record))
            threading.Thread(target=watcher.run, args=(emit, self._stop), name=f"kube-{name.lower()}",
                             daemon=True).start()
        secrets = None
        try:
            while True:
                stream, record = await queue.get()
                if stream == "Secret":
                    event = self._secrets_cache.apply(record, kind="Secret") if record.type != "BOOKMARK" else None
                    if event is not None:
                        yield event
                    continue
                events = self._fold(stream, record)
                if stream.startswith("Gateway") or stream in ("Pod", "ReferenceGrant"):
                    changed.set()
                for event in events:
                    if event.type == "BOOKMARK":
                        # Until every kind is listed, per-kind BOOKMARKs are held back, so the first
                        # BOOKMARK a consumer sees means "complete view" (as with LocalSource).
                        if pending:
                            pending.discard(event.object["kind"])
                            if not pending:
                                if secrets is None:    # Secrets first, so the complete view has them
                                    wanted = self.wanted_secrets()
                                    for secret in await asyncio.to_thread(self.secrets.read, wanted, None,
                                                                          _warn_secret):
                                        passed = self._secrets_cache.apply(secret, kind="Secret")
                                        if passed is not None:
                                            yield passed
                                    secrets = asyncio.create_task(self._read_secrets(queue, changed, wanted))
                                self.synced = True
                                yield Event("BOOKMARK", {"kind": "", "metadata": {"resourceVersion": ""}})
                            continue
                    yield event
        finally:
            if secrets is not None:
                secrets.cancel()
            self.stop()

    def stop(self) -> None:
        """End every loop (open streams are shut down so blocked reads return)."""
        self._stop.set()
        for watcher in self.watchers.values():
            watcher.stop()


def _warn_secret(name: str, error) -> None:
    logger.warning("reading a TLS Secret failed; keeping what was read before, trying again later",
                   secret=name, error=str(error))


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
