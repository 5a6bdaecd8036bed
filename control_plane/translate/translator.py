"""The Translator: Kubernetes-shaped objects in, incremental model changes out.

Use:
    translator = Translator()
    for event in source:                   # shoal.store.Event, from any source
        translator.apply_event(event)
        if <no more events queued>:
            update = translator.flush()    # Update(delta, findings)
            push(update.delta)             # only what changed, per ResourceType
            report(update.findings)        # objects whose errors/warnings changed

`apply_event` only records the object and marks what it may affect;
`flush` recomputes what is marked and returns the difference. Batching many
events into one flush is cheaper and gives one consistent push.
`snapshot()` is everything, for a new subscriber.

Invariants:
- `_objects` holds the last version of every object read, by (kind, namespace, name).
- `_out[type]` holds exactly what the last flush published; a flush compares
  the recomputed value of every marked key with it, so the Delta never lies.
- A bad object contributes nothing (the previous good version is NOT kept:
  the object as it is now is what the user asked for); its Findings say why.

Dependencies that mark work:
- Pod: its Workload, and the Services of its namespace that select it (before or after).
- Namespace: every Pod and Service of it (enrollment, waypoint).
- Service: itself; route tables when its ports or waypoint change.
- Gateway (waypoint): every Workload and Service (waypoint bindings), and route tables.
- HTTPRoute, VirtualService, TrafficSplit, DestinationRule: route tables.
- AuthorizationPolicy, PeerAuthentication: themselves.
- Istio Gateway (networking.istio.io): route tables (its ingress tables, `ingress`); so
  does any Pod change while one exists (its selector picks the gateway's pods).
- ServiceEntry: every ServiceEntry's Services and endpoint Workloads (auto-allocated
  addresses depend on the whole set), and route tables; so does a Pod or Namespace
  change while some entry has a workloadSelector.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator

from shoal.model import ResourceType, Service, Snapshot, Waypoint, freeze_labels, selector_matches
from shoal.model.snapshot import Delta

from control_plane.translate import core, ingress, reference_grants, service_entry
from control_plane.translate.candidates import Dialect, RouteCandidate
from control_plane.translate.common import (
    CLUSTER_DOMAIN,
    ROOT_NAMESPACES,
    Checker,
    Findings,
    ObjectKey,
    created_of,
    key_of,
    metadata_of,
    ref_of,
)
from control_plane.translate.dispatch import CORE_KINDS, check_core, is_mesh_object, parse
from control_plane.translate.precedence import SubsetSource, build

_ROUTING_KINDS = ("HTTPRoute", "VirtualService", "TrafficSplit")
_NO_FINDINGS = Findings()


@dataclass(frozen=True)
class Update:
    """What one flush changed: model resources, and objects whose findings changed (empty = now clean)."""
    delta: Delta
    findings: dict[ObjectKey, Findings] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.delta) or bool(self.findings)


class Translator:
    def __init__(self, cluster_domain: str = CLUSTER_DOMAIN,
                 root_namespaces: tuple[str, ...] = ROOT_NAMESPACES) -> None:
        """`root_namespaces`: where a policy without a selector is mesh-wide, and where
        DestinationRules apply to every namespace (Istio's root namespace; shoal-system too)."""
        self.cluster_domain = cluster_domain
        self.root_namespaces = tuple(root_namespaces)
        self._objects: dict[ObjectKey, dict] = {}
        # Namespaces, Pods and Services as core.normalize() left them (well-typed views):
        self._namespaces: dict[str, dict] = {}                            # name -> namespace
        self._pods: dict[str, dict[str, dict]] = defaultdict(dict)        # ns -> name -> pod
        self._services: dict[str, dict[str, dict]] = defaultdict(dict)    # ns -> name -> service
        # label indexes, so a pod change finds its services and a service its pods without a scan:
        self._pods_by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)      # (ns, k, v) -> pods
        self._services_by_anchor: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # (ns, k, v) -> services
        self._parsed: dict[ObjectKey, Any] = {}                           # mesh objects that parsed cleanly
        self._istio_gateways: set[ObjectKey] = set()                      # ... of them, the ingress Gateways
        self._selecting_entry_keys: set[ObjectKey] = set()                # ... the ServiceEntries selecting pods
        self._parse_findings: dict[ObjectKey, Findings] = {}
        self._route_warnings: dict[ObjectKey, tuple[str, ...]] = {}
        self._internal_errors: dict[ObjectKey, str] = {}
        self._waypoint_warnings: dict[ObjectKey, str] = {}
        self._reported: dict[ObjectKey, Findings] = {}
        self._waypoints: dict[str, Waypoint] = {}
        self._out: dict[ResourceType, dict[str, Any]] = {t: {} for t in ResourceType}
        self._pod_output: dict[tuple[str, str], str] = {}                 # (ns, name) -> workload key
        self._service_output: dict[tuple[str, str], str] = {}             # (ns, name) -> service key
        self._policy_output: dict[ObjectKey, tuple[ResourceType, str]] = {}
        self._dirty_pods: set[tuple[str, str]] = set()
        self._dirty_services: set[tuple[str, str]] = set()
        self._dirty_policies: set[ObjectKey] = set()
        self._dirty_findings: set[ObjectKey] = set()
        self._routes_dirty = False
        self._everything_dirty = False
        self._entries_dirty = False
        self._entry_output: dict[ResourceType, set[str]] = {ResourceType.SERVICE: set(), ResourceType.WORKLOAD: set()}
        self._entry_warnings: dict[ObjectKey, tuple[str, ...]] = {}
        self._secrets: dict[tuple[str, str], dict] = {}   # (ns, name) -> a TLS Secret, kept out of _objects
        self._grants: dict[tuple[str, str], reference_grants.Grant] = {}   # (ns, name) -> a ReferenceGrant's
        self._gateway_warnings: dict[ObjectKey, tuple[str, ...]] = {}
        self.resource_version = ""

    # -- input ----------------------------------------------------------------

    def apply_event(self, event) -> None:
        """Record one watch event (shoal.store.Event or anything with .type and .object)."""
        obj = event.object
        rv = str(metadata_of(obj).get("resourceVersion") or "")
        if rv:
            self.resource_version = rv
        if event.type == "BOOKMARK":
            return
        if event.type == "DELETED":
            self._remove(obj)
        elif event.type in ("ADDED", "MODIFIED"):
            self._upsert(obj)

    def apply_events(self, events: Iterable) -> None:
        """apply_event for each of a batch (a source's initial list, say), with the cycle collector paused."""
        with _collector_paused():
            for event in events:
                self.apply_event(event)

    def _key(self, obj: dict) -> ObjectKey:
        kind, namespace, name = key_of(obj)
        if ingress.is_istio_gateway(obj):
            kind = ingress.OBJECT_KIND     # apart from a Gateway API Gateway of the same name
        if kind == "Namespace":
            return (kind, "", name)
        return (kind, namespace or "default", name)

    def _tracked(self, obj: dict) -> bool:
        return obj.get("kind") in CORE_KINDS or is_mesh_object(obj) or ingress.is_istio_gateway(obj)

    @staticmethod
    def _normalized(obj: dict) -> dict:
        """Manifests may omit metadata.namespace (the API server fills in "default"): so do we."""
        meta = obj.get("metadata")
        if obj.get("kind") == "Namespace" or not isinstance(meta, dict) or meta.get("namespace"):
            return obj
        return {**obj, "metadata": {**meta, "namespace": "default"}}

    def _secret(self, obj: dict, present: bool) -> None:
        """Only the TLS Secrets ingress servers may name; their contents never reach findings or objects()."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        if present and obj.get("type") == "kubernetes.io/tls":
            self._secrets[key] = obj
        elif self._secrets.pop(key, None) is None:
            return
        self._routes_dirty = self._routes_dirty or self._has_istio_gateways()

    def _grant(self, obj: dict, present: bool) -> None:
        """ReferenceGrants matter to cross-namespace refs (ingress Gateways' Secrets, HTTPRoutes' backends);
        kept out of _objects."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        grant = reference_grants.grant_of(obj) if present else None
        if self._grants.get(key) == grant:
            return
        if grant is None:
            self._grants.pop(key, None)
        else:
            self._grants[key] = grant
        self._routes_dirty = True

    def _upsert(self, obj: dict) -> None:
        if obj.get("kind") == "Secret":
            self._secret(obj, True)
            return
        if reference_grants.is_reference_grant(obj):
            self._grant(obj, True)
            return
        if not self._tracked(obj):
            return
        obj = self._normalized(obj)
        key = self._key(obj)
        old = self._objects.get(key)
        self._objects[key] = obj
        self._touch(key, old, obj)

    def _remove(self, obj: dict) -> None:
        if obj.get("kind") == "Secret":
            self._secret(obj, False)
            return
        if reference_grants.is_reference_grant(obj):
            self._grant(obj, False)
            return
        if not self._tracked(obj):
            return
        obj = self._normalized(obj)
        key = self._key(obj)
        old = self._objects.pop(key, None)
        self._touch(key, old, None)

    def _core_view(self, key: ObjectKey, obj: dict | None) -> dict | None:
        """The normalized view of a core object; its findings recorded."""
        self._dirty_findings.add(key)
        if obj is None:
            self._parse_findings.pop(key, None)
            return None
        c = Checker.for_object(obj, self.root_namespaces)
        check_core(obj, c)
        view = core.normalize(obj, c)
        self._set_parse_findings(key, c.findings())
        return view

    def _set_parse_findings(self, key: ObjectKey, findings: Findings) -> None:
        """Only objects with something to say are held: most have nothing, and a large cluster has many."""
        if findings:
            self._parse_findings[key] = findings
        else:
            self._parse_findings.pop(key, None)

    def _touch(self, key: ObjectKey, old: dict | None, new: dict | None) -> None:
        kind, namespace, name = key
        if kind == "Namespace":
            view = self._core_view(key, new)
            if view is None:
                self._namespaces.pop(name, None)
            else:
                self._namespaces[name] = view
            self._dirty_pods.update((name, pod) for pod in self._pods.get(name, {}))
            self._dirty_services.update((name, svc) for svc in self._services.get(name, {}))
            self._entries_dirty = True
            return
        if kind == "Pod":
            old = self._pods.get(namespace, {}).get(name)
            new = self._core_view(key, new)
            self._index(self._pods, namespace, name, new)
            old_labels, new_labels = _labels(old), _labels(new)
            for labels, index in ((old_labels, discard), (new_labels, add)):
                for k, v in labels.items():
                    index(self._pods_by_label, (namespace, k, v), name)
            self._dirty_pods.add((namespace, name))
            self._entries_dirty = self._entries_dirty or self._selecting_entries(namespace)
            self._routes_dirty = self._routes_dirty or self._has_istio_gateways()
            services = self._services.get(namespace)
            if services:
                for pod, labels in ((old, old_labels), (new, new_labels)):
                    for k, v in labels.items():
                        for svc_name in self._services_by_anchor.get((namespace, k, v), ()):
                            if core.selects(services[svc_name], pod):
                                self._dirty_services.add((namespace, svc_name))
            return
        if kind == "Service":
            old = self._services.get(namespace, {}).get(name)
            new = self._core_view(key, new)
            self._index(self._services, namespace, name, new)
            if (anchor := _anchor(old)) is not None:
                discard(self._services_by_anchor, (namespace, *anchor), name)
            if (anchor := _anchor(new)) is not None:
                add(self._services_by_anchor, (namespace, *anchor), name)
            self._dirty_services.add((namespace, name))
            self._entries_dirty = True         # an entry's host may collide with this Service's
            return
        if kind == "ServiceAccount":
            return
        # a mesh object
        parsed = self._guarded(key, parse, new, self.root_namespaces) if new is not None else None
        self._set_parse_findings(key, parsed.findings if parsed else Findings())
        self._dirty_findings.add(key)
        self._set_parsed(key, parsed.value if parsed is not None and parsed.ok else None)
        if kind == "Gateway":
            self._everything_dirty = True
        elif kind in ("AuthorizationPolicy", "PeerAuthentication"):
            self._dirty_policies.add(key)
        elif kind == service_entry.KIND:
            self._entries_dirty = self._routes_dirty = True
        else:
            self._routes_dirty = True

    def _set_parsed(self, key: ObjectKey, value: Any | None) -> None:
        """`_parsed[key]` is `value` (None: out); the ingress Gateways and the ServiceEntries that select pods
        are kept apart as well, since every pod event asks about them (a scan of every mesh object per pod
        was O(pods x mesh objects))."""
        if value is None:
            self._parsed.pop(key, None)
        else:
            self._parsed[key] = value
        if isinstance(value, ingress.IstioGateway):
            self._istio_gateways.add(key)
        else:
            self._istio_gateways.discard(key)
        if key[0] == service_entry.KIND and value is not None and value.workload_selector is not None:
            self._selecting_entry_keys.add(key)
        else:
            self._selecting_entry_keys.discard(key)

    @staticmethod
    def _index(index: dict, namespace: str, name: str, obj: dict | None) -> None:
        if obj is None:
            index[namespace].pop(name, None)
            if not index[namespace]:
                index.pop(namespace, None)
        else:
            index[namespace][name] = obj

    # -- output ---------------------------------------------------------------

    def flush(self) -> Update:
        """Recompute what the recorded events touched; return what changed since the last flush."""
        with _collector_paused():
            return self._flush()

    def _flush(self) -> Update:
        upserted: dict[ResourceType, dict[str, Any]] = {t: {} for t in ResourceType}
        removed: dict[ResourceType, set[str]] = {t: set() for t in ResourceType}

        def publish(rtype: ResourceType, key: str, value: Any | None) -> None:
            current = self._out[rtype].get(key)
            if value is None:
                if current is not None:
                    del self._out[rtype][key]
                    removed[rtype].add(key)
                    upserted[rtype].pop(key, None)
                return
            if current != value:
                self._out[rtype][key] = value
                upserted[rtype][key] = value
                removed[rtype].discard(key)

        if self._everything_dirty:
            self._refresh_waypoints(publish)
            self._dirty_pods.update((ns, name) for ns, pods in self._pods.items() for name in pods)
            self._dirty_pods.update(self._pod_output)
            self._dirty_services.update((ns, name) for ns, svcs in self._services.items() for name in svcs)
            self._dirty_services.update(self._service_output)
            self._routes_dirty = self._entries_dirty = True
        self._flush_workloads(publish)
        self._flush_services(publish)
        if self._entries_dirty:
            self._flush_entries(publish)
        self._flush_policies(publish)
        if self._routes_dirty:
            self._flush_routes(publish)
        self._everything_dirty = self._routes_dirty = False

        findings = {}
        for key in self._dirty_findings:
            now = self.findings_of(key)
            if now != self._reported.get(key, Findings()):
                findings[key] = now
            if now:
                self._reported[key] = now
            else:
                self._reported.pop(key, None)
        self._dirty_findings.clear()
        delta = Delta({t: dict(v) for t, v in upserted.items()}, {t: frozenset(v) for t, v in removed.items()})
        return Update(delta, findings)

    def _refresh_waypoints(self, publish) -> None:
        waypoints = {}
        for (kind, _, _), value in self._parsed.items():
            if kind == "Gateway" and isinstance(value, Waypoint):
                waypoints[value.key] = value
        for key in set(self._waypoints) - set(waypoints):
            publish(ResourceType.WAYPOINT, key, None)
        for key, waypoint in waypoints.items():
            publish(ResourceType.WAYPOINT, key, waypoint)
        self._waypoints = waypoints

    def _flush_workloads(self, publish) -> None:
        for namespace, name in self._dirty_pods:
            pod = self._pods.get(namespace, {}).get(name)
            workload = None
            if pod is not None:
                workload = self._guarded(("Pod", namespace, name), core.workload_of, pod,
                                         self._namespaces.get(namespace), self._waypoints)
            previous = self._pod_output.pop((namespace, name), None)
            if previous is not None and (workload is None or workload.key != previous):
                publish(ResourceType.WORKLOAD, previous, None)
            if workload is not None:
                self._pod_output[(namespace, name)] = workload.key
                publish(ResourceType.WORKLOAD, workload.key, workload)
            self._warn_missing_waypoint(("Pod", namespace, name), workload)
        self._dirty_pods.clear()

    def _flush_services(self, publish) -> None:
        for namespace, name in self._dirty_services:
            svc = self._services.get(namespace, {}).get(name)
            service = None
            if svc is not None:
                service = self._guarded(("Service", namespace, name), core.service_of, svc,
                                        self._namespaces.get(namespace), self._selectable_pods(namespace, svc),
                                        self._waypoints, self.cluster_domain)
            previous_key = self._service_output.pop((namespace, name), None)
            previous = self._out[ResourceType.SERVICE].get(previous_key) if previous_key else None
            if _routing_shape(previous) != _routing_shape(service):
                self._routes_dirty = True
            if previous_key is not None and (service is None or service.key != previous_key):
                publish(ResourceType.SERVICE, previous_key, None)
            if service is not None:
                self._service_output[(namespace, name)] = service.key
                publish(ResourceType.SERVICE, service.key, service)
            self._warn_missing_waypoint(("Service", namespace, name), service)
        self._dirty_services.clear()

    def _warn_missing_waypoint(self, key: ObjectKey, resource) -> None:
        """A warning on a Pod or Service whose use-waypoint names no waypoint: its traffic is refused."""
        ref = getattr(resource, "waypoint", None)
        message = ""
        if ref is not None and f"{ref.namespace}/{ref.name}" not in self._waypoints:
            message = (f"{key[0]} {key[1]}/{key[2]}: use-waypoint names waypoint {ref.namespace}/{ref.name}, which "
                       "does not exist; traffic to it is refused until the waypoint exists or the setting goes")
        if self._waypoint_warnings.get(key, "") != message:
            self._dirty_findings.add(key)
            if message:
                self._waypoint_warnings[key] = message
            else:
                self._waypoint_warnings.pop(key, None)

    def _has_istio_gateways(self) -> bool:
        """Any ingress Gateway, of either dialect."""
        return bool(self._istio_gateways)

    def _gateway_identities(self, gateway) -> set[tuple[str, str]]:
        """(namespace, service account) of the live pods an Istio Gateway's selector picks, in any namespace."""
        found = set()
        for namespace, pods in self._pods.items():
            for pod in pods.values():
                if core.pod_live(pod) and selector_matches(gateway.selector, freeze_labels(_labels(pod))):
                    found.add((namespace, core.pod_service_account(pod)))
        return found

    def _selecting_entries(self, namespace: str) -> bool:
        return any(key[1] == namespace for key in self._selecting_entry_keys)

    def _flush_entries(self, publish) -> None:
        """Every ServiceEntry again: Services (one per host) and endpoint Workloads. A host that a
        Kubernetes Service or an older entry already holds is skipped, with a warning on the entry."""
        entries = sorted(((key, value) for key, value in self._parsed.items() if key[0] == service_entry.KIND),
                         key=lambda item: (created_of(self._objects[item[0]]), item[0]))
        allocated = service_entry.allocate(service_entry.hosts_to_allocate(value for _, value in entries))
        kube_hosts = set(self._service_output.values())
        out: dict[ResourceType, dict[str, Any]] = {ResourceType.SERVICE: {}, ResourceType.WORKLOAD: {}}
        warnings: dict[ObjectKey, list[str]] = defaultdict(list)
        for key, spec in entries:
            result = self._guarded(key, service_entry.to_model, spec, allocated, list(self._pods.get(key[1], {}).values()),
                                   self._namespaces.get(key[1]), self._waypoints)
            if result is None:
                continue
            services, workloads = result
            for service in services:
                if service.key in kube_hosts or service.key in out[ResourceType.SERVICE]:
                    warnings[key].append(f"{ref_of(self._objects[key])}: spec.hosts: {service.key} is already "
                                         "another service's host; this entry's one is ignored")
                    continue
                out[ResourceType.SERVICE][service.key] = service
            for workload in workloads:
                out[ResourceType.WORKLOAD][workload.key] = workload
        for rtype, values in out.items():
            for gone in self._entry_output[rtype] - set(values):
                publish(rtype, gone, None)
            for k, v in values.items():
                publish(rtype, k, v)
            self._entry_output[rtype] = set(values)
        self._replace_warnings(self._entry_warnings, warnings)
        self._entries_dirty = False

    def _flush_policies(self, publish) -> None:
        for key in self._dirty_policies:
            value = self._parsed.get(key)
            previous = self._policy_output.pop(key, None)
            if previous is not None and (value is None or (_type_of(value), value.key) != previous):
                publish(*previous, None)
            if value is not None:
                self._policy_output[key] = (_type_of(value), value.key)
                publish(_type_of(value), value.key, value)
        self._dirty_policies.clear()

    def _flush_routes(self, publish) -> None:
        candidates: list[RouteCandidate] = []
        rules: dict[str, list[SubsetSource]] = defaultdict(list)
        by_origin: dict[str, ObjectKey] = {}
        for key, value in self._parsed.items():
            kind = key[0]
            if kind in _ROUTING_KINDS:
                candidates.extend(value)
                by_origin[ref_of(self._objects[key])] = key
            elif kind == "DestinationRule":
                host, subsets = value
                if host:
                    obj = self._objects[key]
                    rules[host].append(SubsetSource(host, subsets, key[1], created_of(obj), ref_of(obj)))
        warnings: dict[ObjectKey, list[str]] = defaultdict(list)

        def warn(candidate: RouteCandidate, message: str) -> None:
            key = by_origin.get(candidate.origin)
            if key is not None and f"{candidate.origin}: {message}" not in warnings[key]:
                warnings[key].append(f"{candidate.origin}: {message}")

        # An HTTPRoute's backendRef to another namespace's Service holds only while a ReferenceGrant there allows it
        # (Gateway API's rule for every route, mesh ones too): without one its share of requests fails.
        grants = tuple(self._grants.values())
        candidates = [replace(c, routes=ingress.permitted_backends(
                          c.routes, c.namespace, grants,
                          lambda message, c=c: warn(c, message))) if c.dialect is Dialect.HTTPROUTE else c
                      for c in candidates]
        gateways = [value for value in self._parsed.values() if isinstance(value, ingress.IstioGateway)]
        # An HTTPRoute's parent that is an ingress Gateway is the ingress's to serve, not a waypoint to look for.
        ingress_parents = {(g.namespace, g.name) for g in gateways if g.api == ingress.GATEWAY_API}
        candidates = [c for c in candidates
                      if c.waypoint is None or (c.waypoint.namespace, c.waypoint.name) not in ingress_parents]
        tables = build(candidates, self._out[ResourceType.SERVICE], set(self._waypoints), rules, warn,
                       self.root_namespaces)
        gateway_warnings: dict[ObjectKey, list[str]] = defaultdict(list)

        def warn_gateway(gateway, message: str) -> None:
            kind = ingress.OBJECT_KIND if gateway.api == ingress.ISTIO else "Gateway"
            gateway_warnings[(kind, gateway.namespace, gateway.name)].append(
                f"Gateway {gateway.namespace}/{gateway.name}: spec.servers: {message}")
        credentials = {}
        if gateways:
            bound = [self._objects[key] for key in self._parsed if key[0] in ("VirtualService", "HTTPRoute")]
            def warn_route(origin: str, message: str) -> None:
                key = by_origin.get(origin)
                if key is not None and f"{origin}: {message}" not in warnings[key]:
                    warnings[key].append(f"{origin}: {message}")
            credentials = ingress.credentials(gateways, self._gateway_identities, self._secrets, warn_gateway, grants)
            tables.update(ingress.tables(gateways, bound, self._gateway_identities, rules, warn, credentials,
                                         grants, warn_route))
        for key in set(self._out[ResourceType.TLS_CREDENTIAL]) - set(credentials):
            publish(ResourceType.TLS_CREDENTIAL, key, None)
        for key, credential in credentials.items():
            publish(ResourceType.TLS_CREDENTIAL, key, credential)
        self._replace_warnings(self._gateway_warnings, gateway_warnings)
        for key in set(self._out[ResourceType.ROUTE_TABLE]) - set(tables):
            publish(ResourceType.ROUTE_TABLE, key, None)
        for key, table in tables.items():
            publish(ResourceType.ROUTE_TABLE, key, table)
        self._replace_warnings(self._route_warnings, warnings)

    def _replace_warnings(self, held: dict[ObjectKey, tuple[str, ...]], warnings: dict[ObjectKey, list[str]]) -> None:
        """`held` becomes `warnings`; the objects whose warnings changed get their findings reported."""
        for key in set(held) | set(warnings):
            new = tuple(warnings.get(key, ()))
            if held.get(key, ()) != new:
                self._dirty_findings.add(key)
            if new:
                held[key] = new
            else:
                held.pop(key, None)

    def _guarded(self, key: ObjectKey, compute, *args):
        """compute(*args), or None with an error on the object if translation itself fails:
        a bug must cost one object, never the whole config."""
        try:
            result = compute(*args)
        except Exception as exc:  # noqa: BLE001 - the safety net at the object boundary
            message = f"{key[0]} {key[1]}/{key[2]}: could not be translated ({type(exc).__name__}: {exc}); " \
                      f"this is a shoal bug, please report it with the object"
            if self._internal_errors.get(key) != message:
                self._internal_errors[key] = message
                self._dirty_findings.add(key)
            return None
        if self._internal_errors.pop(key, None) is not None:
            self._dirty_findings.add(key)
        return result

    def _selectable_pods(self, namespace: str, svc: dict) -> list[dict]:
        """The pods that may match the Service's selector: those with its rarest label pair."""
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector:
            return []
        sets = [self._pods_by_label.get((namespace, k, str(v)), set()) for k, v in selector.items()]
        pods = self._pods.get(namespace, {})
        return [pods[name] for name in sorted(min(sets, key=len)) if name in pods]

    # -- queries ----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Everything published by the last flush."""
        return Snapshot.of(v for m in self._out.values() for v in m.values())

    def findings_of(self, key: ObjectKey) -> Findings:
        if key not in self._objects:
            return Findings()
        base = self._parse_findings.get(key, _NO_FINDINGS)
        internal = (self._internal_errors[key],) if key in self._internal_errors else ()
        waypoint = (self._waypoint_warnings[key],) if key in self._waypoint_warnings else ()
        return base + Findings(internal, self._route_warnings.get(key, ()) + waypoint
                               + self._entry_warnings.get(key, ()) + self._gateway_warnings.get(key, ()))

    def problems(self) -> dict[ObjectKey, Findings]:
        """Every object that currently has errors or warnings."""
        return {k: f for k in self._objects if (f := self.findings_of(k))}

    def objects(self) -> dict[ObjectKey, dict]:
        return dict(self._objects)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off for a batch, then back as it was. A batch of a large cluster's objects
    makes many containers, and each full collection that this triggers walks every object the process
    holds (the store's too): over 65,536 pods that was a third of the translator's time. What a batch makes
    is trees of dicts, tuples and frozen dataclasses, which reference counting frees; cycles it might make
    wait for the next collection, one, after it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _labels(obj: dict | None) -> dict:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _anchor(svc: dict | None) -> tuple[str, str] | None:
    """One (key, value) of a Service's selector: every pod it selects carries that pair."""
    selector = ((svc or {}).get("spec") or {}).get("selector") or {}
    if not isinstance(selector, dict) or not selector:
        return None
    k = min(selector)
    return (str(k), str(selector[k]))


def add(index: dict, key, value) -> None:
    index[key].add(value)


def discard(index: dict, key, value) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(value)
        if not members:
            del index[key]


def _type_of(value: Any) -> ResourceType:
    return ResourceType(type(value).__name__)


def _routing_shape(service: Service | None):
    """What of a Service route tables depend on (not its endpoints)."""
    if service is None:
        return None
    return (service.hostname, service.ports, service.waypoint)
