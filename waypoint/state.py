"""The waypoint's one state store: what the control plane said, indexed.

Invariants (kept by remove-before-insert; `check()` verifies them in tests):
- `workloads_by_ip[ip] == uid` exactly when `workloads[uid]` lists `ip`;
- `services_by_vip[vip] == hostname` exactly when `services[hostname]` lists `vip`;
- `route_tables[key]` is the RouteTable with that `hostname:port` key.

One writer (the config stream's `apply_update`); connections only read.
`cached()` memos are keyed by `version`, so no reader sees a stale one.
Everything stored is a `shoal.model` dataclass.
"""

from __future__ import annotations

from typing import Any

from shoal.model import (
    ANY_PORT, Authorization, PolicyScope, ResourceType, RouteTable, Service, Waypoint, Workload,
)


class WaypointState:
    def __init__(self, namespace: str, name: str, trust_domain: str = "cluster.local") -> None:
        self.namespace = namespace          # this waypoint's Gateway
        self.name = name
        self.trust_domain = trust_domain
        self.workloads: dict[str, Workload] = {}
        self.workloads_by_ip: dict[str, str] = {}
        self.services: dict[str, Service] = {}
        self.services_by_vip: dict[str, str] = {}
        self.waypoints: dict[str, Waypoint] = {}
        self.authorizations: dict[str, Authorization] = {}
        self.route_tables: dict[str, RouteTable] = {}
        self.version = 0
        self._caches: dict[str, dict] = {}
        self._cache_version = -1

    def _maps(self) -> dict[ResourceType, dict[str, Any]]:
        return {ResourceType.WORKLOAD: self.workloads, ResourceType.SERVICE: self.services,
                ResourceType.WAYPOINT: self.waypoints, ResourceType.AUTHORIZATION: self.authorizations,
                ResourceType.ROUTE_TABLE: self.route_tables}

    # --- writes ---------------------------------------------------------------------

    def upsert(self, resource: Any) -> None:
        rtype = ResourceType(type(resource).__name__)
        if rtype not in self._maps():
            return  # PeerAuthentication and the like are the ztunnel's business
        self.remove(rtype, resource.key)
        self._maps()[rtype][resource.key] = resource
        if rtype is ResourceType.WORKLOAD:
            for ip in resource.ips:
                self.workloads_by_ip[ip] = resource.uid
        elif rtype is ResourceType.SERVICE:
            for vip in resource.vips:
                self.services_by_vip[vip] = resource.hostname
        self.version += 1

    def remove(self, rtype: ResourceType, key: str) -> None:
        held = self._maps().get(rtype)
        if held is None:
            return
        old = held.pop(key, None)
        if old is None:
            return
        if rtype is ResourceType.WORKLOAD:
            for ip in old.ips:
                if self.workloads_by_ip.get(ip) == key:
                    del self.workloads_by_ip[ip]
        elif rtype is ResourceType.SERVICE:
            for vip in old.vips:
                if self.services_by_vip.get(vip) == key:
                    del self.services_by_vip[vip]
        self.version += 1

    def apply_update(self, update) -> None:
        """One accepted Config.Watch response (`shoal.config_client.Update`)."""
        rtype = ResourceType(update.type)
        held = self._maps().get(rtype, {})
        removed = [k for k in held if k not in update.upserted] if update.replace else list(update.removed)
        for key in removed:
            self.remove(rtype, key)
        for resource in update.upserted.values():
            self.upsert(resource)

    # --- reads ----------------------------------------------------------------------

    def service_by_vip(self, vip: str) -> Service | None:
        host = self.services_by_vip.get(vip)
        return self.services.get(host) if host else None

    def workload_by_ip(self, ip: str) -> Workload | None:
        uid = self.workloads_by_ip.get(ip)
        return self.workloads.get(uid) if uid else None

    def route_table(self, hostname: str, port: int) -> RouteTable | None:
        return self.route_tables.get(f"{hostname}:{port}") or self.route_tables.get(f"{hostname}:{ANY_PORT}")

    def policies_for(self, service: Service | None) -> list[Authorization]:
        """The policies this waypoint enforces for a request to `service`: those whose
        targetRefs name the Service or this waypoint's Gateway (Istio ambient's rule;
        selector and namespace-wide policies are enforced by the destination's ztunnel)."""
        found = []
        for policy in self.authorizations.values():
            if policy.scope is not PolicyScope.TARGETS:
                continue
            for target in policy.targets:
                if target.kind == "Gateway" and (target.namespace, target.name) == (self.namespace, self.name):
                    found.append(policy)
                    break
                if (service is not None and target.kind == "Service"
                        and (target.namespace, target.name) == (service.namespace, service.name)):
                    found.append(policy)
                    break
        return found

    def cached(self, name: str) -> dict:
        """A memo for derived lookups (endpoint lists), emptied whenever the state changes."""
        if self._cache_version != self.version:
            self._caches.clear()
            self._cache_version = self.version
        return self._caches.setdefault(name, {})

    def check(self) -> None:
        want_ips = {ip: uid for uid, w in self.workloads.items() for ip in w.ips}
        assert want_ips == self.workloads_by_ip, (want_ips, self.workloads_by_ip)
        want_vips = {vip: h for h, s in self.services.items() for vip in s.vips}
        assert want_vips == self.services_by_vip, (want_vips, self.services_by_vip)

    def dump(self) -> dict:
        return {"waypoint": f"{self.namespace}/{self.name}", "services": sorted(self.services),
                "workloads": sorted(w.name for w in self.workloads.values()),
                "route_tables": sorted(self.route_tables), "policies": sorted(self.authorizations)}
