"""The ztunnel's one ProxyState: what the control plane told it, indexed.

Invariants (each method keeps them; tests check them through `check()`):
- `workloads_by_ip[ip] == uid` exactly when `workloads[uid]` lists `ip`;
- `services_by_vip[vip] == hostname` exactly when `services[hostname]` lists `vip`;
- `policies_by_namespace[ns]` holds exactly the keys of the Authorizations in `ns`;
- an insert always removes the old version first, so no index keeps a stale entry.

Only the config task writes here (one writer); connections read. Resources
arrive already as `shoal.model` dataclasses: nothing from the wire is kept.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable

from shoal.model import (
    Authorization, PeerAuthentication, PeerAuthMode, PolicyScope, ResourceType, Service, Snapshot,
    Waypoint, Workload, selector_matches,
)


class ProxyState:
    def __init__(self, trust_domain: str = "cluster.local") -> None:
        self.trust_domain = trust_domain
        self.workloads: dict[str, Workload] = {}
        self.workloads_by_ip: dict[str, str] = {}
        self.services: dict[str, Service] = {}
        self.services_by_vip: dict[str, str] = {}
        self.waypoints: dict[str, Waypoint] = {}
        self.authorizations: dict[str, Authorization] = {}
        self.policies_by_namespace: dict[str, set[str]] = {}
        self.peer_authentications: dict[str, PeerAuthentication] = {}
        self.version = 0  # bumped on every change; cheap cache key for readers

    # --- writes ---------------------------------------------------------------

    def upsert(self, resource: Any) -> None:
        kind = type(resource)
        self.remove(ResourceType(kind.__name__), resource.key)
        if kind is Workload:
            self.workloads[resource.uid] = resource
            for ip in resource.ips:
                self.workloads_by_ip[ip] = resource.uid
        elif kind is Service:
            self.services[resource.hostname] = resource
            for vip in resource.vips:
                self.services_by_vip[vip] = resource.hostname
        elif kind is Waypoint:
            self.waypoints[resource.key] = resource
        elif kind is Authorization:
            self.authorizations[resource.key] = resource
            self.policies_by_namespace.setdefault(resource.namespace, set()).add(resource.key)
        elif kind is PeerAuthentication:
            self.peer_authentications[resource.key] = resource
        # RouteTables are the waypoint's business; the ztunnel ignores them.
        self.version += 1

    def remove(self, resource_type: ResourceType, key: str) -> None:
        if resource_type is ResourceType.WORKLOAD:
            old = self.workloads.pop(key, None)
            for ip in old.ips if old else ():
                if self.workloads_by_ip.get(ip) == key:
                    del self.workloads_by_ip[ip]
        elif resource_type is ResourceType.SERVICE:
            old = self.services.pop(key, None)
            for vip in old.vips if old else ():
                if self.services_by_vip.get(vip) == key:
                    del self.services_by_vip[vip]
        elif resource_type is ResourceType.WAYPOINT:
            self.waypoints.pop(key, None)
        elif resource_type is ResourceType.AUTHORIZATION:
            old = self.authorizations.pop(key, None)
            if old:
                keys = self.policies_by_namespace.get(old.namespace, set())
                keys.discard(key)
                if not keys:
                    self.policies_by_namespace.pop(old.namespace, None)
        elif resource_type is ResourceType.PEER_AUTHENTICATION:
            self.peer_authentications.pop(key, None)
        self.version += 1

    def apply(self, upserted: Iterable[Any], removed: Iterable[tuple[ResourceType, str]]) -> None:
        """An incremental update: removals first, then upserts."""
        for resource_type, key in removed:
            self.remove(resource_type, key)
        for resource in upserted:
            self.upsert(resource)

    def apply_update(self, update) -> None:
        """One accepted Config.Watch response (`shoal.config_client.Update`) of one type."""
        rtype = ResourceType(update.type)
        if update.replace:
            held = self._held().get(rtype, {})
            removed = [key for key in held if key not in update.upserted]
        else:
            removed = list(update.removed)
        self.apply(update.upserted.values(), [(rtype, key) for key in removed])

    def replace(self, snapshot: Snapshot) -> None:
        """A full state: whatever is not in `snapshot` is dropped."""
        keep = {(ResourceType(type(r).__name__), r.key) for r in snapshot.all()}
        have = [(rtype, key) for rtype, held in self._held().items() for key in held]
        self.apply(snapshot.all(), [item for item in have if item not in keep])

    def _held(self) -> dict[ResourceType, dict[str, Any]]:
        """The resources kept, by type (RouteTables are the waypoint's business, not kept here)."""
        return {ResourceType.WORKLOAD: self.workloads, ResourceType.SERVICE: self.services,
                ResourceType.WAYPOINT: self.waypoints, ResourceType.AUTHORIZATION: self.authorizations,
                ResourceType.PEER_AUTHENTICATION: self.peer_authentications}

    # --- reads ----------------------------------------------------------------

    def workload_by_ip(self, ip: str) -> Workload | None:
        uid = self.workloads_by_ip.get(ip)
        return self.workloads.get(uid) if uid else None

    def service_by_vip(self, vip: str) -> Service | None:
        host = self.services_by_vip.get(vip)
        return self.services.get(host) if host else None

    def service_by_host(self, hostname: str) -> Service | None:
        return self.services.get(hostname)

    def services_of(self, workload: Workload) -> list[Service]:
        return [s for s in self.services.values() if any(e.workload_uid == workload.uid for e in s.endpoints)]

    def policies_for(self, workload: Workload) -> list[Authorization]:
        """The Authorizations a ztunnel enforces for connections to `workload`.

        TARGETS-scoped policies belong to waypoints and are left out.
        """
        found = []
        for policy in self.authorizations.values():
            if policy.scope is PolicyScope.MESH:
                found.append(policy)
            elif policy.namespace != workload.namespace:
                continue
            elif policy.scope is PolicyScope.NAMESPACE:
                found.append(policy)
            elif policy.scope is PolicyScope.WORKLOAD and selector_matches(policy.selector, workload.labels):
                found.append(policy)
        return found

    def peer_auth_mode(self, workload: Workload, port: int) -> PeerAuthMode:
        """Most specific wins: workload (port-level first), then namespace, then mesh; default PERMISSIVE."""
        by_scope: dict[PolicyScope, PeerAuthMode] = {}
        for pa in self.peer_authentications.values():
            if pa.scope is PolicyScope.MESH:
                by_scope.setdefault(PolicyScope.MESH, pa.mode)
            elif pa.namespace != workload.namespace:
                continue
            elif pa.scope is PolicyScope.NAMESPACE:
                by_scope.setdefault(PolicyScope.NAMESPACE, pa.mode)
            elif pa.scope is PolicyScope.WORKLOAD and pa.selector and selector_matches(pa.selector, workload.labels):
                port_mode = dict(pa.port_modes).get(port)
                if port_mode and port_mode is not PeerAuthMode.UNSET:
                    return port_mode
                by_scope.setdefault(PolicyScope.WORKLOAD, pa.mode)
        for scope in (PolicyScope.WORKLOAD, PolicyScope.NAMESPACE, PolicyScope.MESH):
            mode = by_scope.get(scope)
            if mode and mode is not PeerAuthMode.UNSET:
                return mode
        return PeerAuthMode.PERMISSIVE

    def waypoint_for(self, ref) -> Waypoint | None:
        return self.waypoints.get(f"{ref.namespace}/{ref.name}") if ref else None

    # --- checks and dumps -------------------------------------------------------

    def check(self) -> None:
        """Raises AssertionError if an index drifted (used by tests)."""
        want_ips = {ip: uid for uid, w in self.workloads.items() for ip in w.ips}
        assert self.workloads_by_ip == want_ips, "workloads_by_ip drifted"
        want_vips = {vip: host for host, s in self.services.items() for vip in s.vips}
        assert self.services_by_vip == want_vips, "services_by_vip drifted"
        want_ns: dict[str, set[str]] = {}
        for key, p in self.authorizations.items():
            want_ns.setdefault(p.namespace, set()).add(key)
        assert self.policies_by_namespace == want_ns, "policies_by_namespace drifted"

    def dump(self) -> dict:
        def plain(obj):
            return _jsonable(asdict(obj))
        return {
            "version": self.version,
            "workloads": [plain(w) for w in self.workloads.values()],
            "services": [plain(s) for s in self.services.values()],
            "waypoints": [plain(w) for w in self.waypoints.values()],
            "policies": [plain(p) for p in self.authorizations.values()],
            "peer_authentications": [plain(p) for p in self.peer_authentications.values()],
        }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):
        return value.value
    return value
