"""The proxies' one state store: what the control plane said, indexed.

The ztunnel and the waypoint each hold one `ProxyState` and ask it for what
they need; neither keeps a copy of its own. Resources arrive already as
`shoal.model` dataclasses (nothing from the wire is kept).

Indexes, by name:
- `workloads` by uid, `workloads_by_ip` ip -> uid (every address of a workload, both families);
- `services` by hostname, `services_by_vip` vip -> hostname (every VIP, both families);
  addresses are canonical text (`shoal.model.addresses`); a lookup by another spelling
  (an IPv4-mapped `::ffff:a.b.c.d`, upper-case IPv6) finds the same entry;
- `waypoints` by `namespace/name`;
- `authorizations` by key, `policies_by_namespace` namespace -> keys;
- `peer_authentications` by key;
- `route_tables` by `hostname:port` (an ingress gateway's: `gateway@hostname:port`);
- `tls_credentials` by `gateway@port/secret` (an ingress gateway's own only).

Invariants (every write keeps them; `check()` verifies them in tests):
- every IP some workload lists is in `workloads_by_ip`, and names a workload
  that lists it; when two list the same IP (a reused address, briefly), the
  last written wins, and the other takes the IP back if the winner goes;
- the same for `services_by_vip` and the VIPs services list;
- `policies_by_namespace[ns]` holds exactly the keys of the Authorizations in `ns`;
- an insert always removes the old version first, so no index keeps a stale entry;
- `version` grows on every change, so `cached()` memos are never stale.

One writer (the config stream's `apply_update`); connections only read.

Fail closed until the config is whole: a state built with `expects` (the
resource types its subscription carries) is not `synced` until every one
of them has arrived once. Until then updates are staged, not applied, and
the proxies serve no connection (`ztunnel.inbound`, `ztunnel.outbound`,
the waypoint's readiness): defaults such as PERMISSIVE, or a policy set
missing its DENY, must never decide for a connection. When the last type
arrives, everything staged is applied at once, in arrival order, with no
connection served in between: the first config is one consistent snapshot.
A state built without `expects` (tests filling it directly) is synced at once.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable

from shoal.model import (
    ANY_PORT, Authorization, PeerAuthentication, PeerAuthMode, PolicyScope, ResourceType, RouteTable, Service,
    Snapshot, TlsCredential, Waypoint, Workload, WaypointRef, selector_matches,
)
from shoal.model.addresses import canonical_or_none


class ProxyState:
    def __init__(self, trust_domain: str = "cluster.local", *, waypoint: tuple[str, str] | None = None,
                 expects: Iterable[ResourceType] = ()) -> None:
        self.trust_domain = trust_domain
        self.expects = frozenset(expects)
        self.synced = not self.expects
        self._staged: list = []
        self.waypoint = waypoint        # (namespace, name) of the Gateway, when a waypoint holds this state
        self.workloads: dict[str, Workload] = {}
        self.workloads_by_ip: dict[str, str] = {}
        self.services: dict[str, Service] = {}
        self.services_by_vip: dict[str, str] = {}
        self.waypoints: dict[str, Waypoint] = {}
        self.authorizations: dict[str, Authorization] = {}
        self.policies_by_namespace: dict[str, set[str]] = {}
        self.peer_authentications: dict[str, PeerAuthentication] = {}
        self.route_tables: dict[str, RouteTable] = {}
        self.tls_credentials: dict[str, TlsCredential] = {}
        self.version = 0
        self._caches: dict[str, dict] = {}
        self._cache_version = -1
        self._held = {ResourceType.WORKLOAD: self.workloads, ResourceType.SERVICE: self.services,
                      ResourceType.WAYPOINT: self.waypoints, ResourceType.AUTHORIZATION: self.authorizations,
                      ResourceType.PEER_AUTHENTICATION: self.peer_authentications,
                      ResourceType.ROUTE_TABLE: self.route_tables,
                      ResourceType.TLS_CREDENTIAL: self.tls_credentials}

    # --- writes -------------------------------------------------------------------

    def upsert(self, resource: Any) -> None:
        rtype = ResourceType(type(resource).__name__)
        self.remove(rtype, resource.key)
        self._held[rtype][resource.key] = resource
        if rtype is ResourceType.WORKLOAD:
            for ip in resource.ips:
                self.workloads_by_ip[ip] = resource.uid
        elif rtype is ResourceType.SERVICE:
            for vip in resource.vips:
                self.services_by_vip[vip] = resource.hostname
        elif rtype is ResourceType.AUTHORIZATION:
            self.policies_by_namespace.setdefault(resource.namespace, set()).add(resource.key)
        self.version += 1

    def remove(self, rtype: ResourceType, key: str) -> None:
        old = self._held[rtype].pop(key, None)
        if old is None:
            return
        if rtype is ResourceType.WORKLOAD:
            _unindex(self.workloads_by_ip, key, old.ips, self.workloads, lambda w: w.ips)
        elif rtype is ResourceType.SERVICE:
            _unindex(self.services_by_vip, key, old.vips, self.services, lambda s: s.vips)
        elif rtype is ResourceType.AUTHORIZATION:
            keys = self.policies_by_namespace.get(old.namespace, set())
            keys.discard(key)
            if not keys:
                self.policies_by_namespace.pop(old.namespace, None)
        self.version += 1

    def apply(self, upserted: Iterable[Any], removed: Iterable[tuple[ResourceType, str]]) -> None:
        """An incremental update: removals first, then upserts."""
        for rtype, key in removed:
            self.remove(rtype, key)
        for resource in upserted:
            self.upsert(resource)

    def apply_update(self, update) -> None:
        """One accepted Config.Watch response (`shoal.config_client.Update`) of one type; staged
        until every expected type has arrived once (see the module's docstring)."""
        if not self.synced:
            self._staged.append(update)
            if {ResourceType(u.type) for u in self._staged} >= self.expects:
                staged, self._staged = self._staged, []
                for each in staged:
                    self._apply_update(each)
                self.synced = True
            return
        self._apply_update(update)

    def _apply_update(self, update) -> None:
        rtype = ResourceType(update.type)
        if update.replace:
            removed = [key for key in self._held[rtype] if key not in update.upserted]
        else:
            removed = list(update.removed)
        self.apply(update.upserted.values(), [(rtype, key) for key in removed])

    def replace(self, snapshot: Snapshot) -> None:
        """A full state: whatever is not in `snapshot` is dropped."""
        keep = {(ResourceType(type(r).__name__), r.key) for r in snapshot.all()}
        have = [(rtype, key) for rtype, held in self._held.items() for key in held]
        self.apply(snapshot.all(), [item for item in have if item not in keep])

    # --- reads: addresses ------------------------------------------------------------

    # `canonical=True`: the caller canonicalised the address once where it came in, so a miss (an address
    # outside the mesh: every passthrough connection) is not parsed again to try another spelling.

    def workload_by_ip(self, ip: str, *, canonical: bool = False) -> Workload | None:
        uid = self.workloads_by_ip.get(ip) or (None if canonical else self.workloads_by_ip.get(_canonical(ip)))
        return self.workloads.get(uid) if uid else None

    def service_by_vip(self, vip: str, *, canonical: bool = False) -> Service | None:
        host = self.services_by_vip.get(vip) or (None if canonical else self.services_by_vip.get(_canonical(vip)))
        return self.services.get(host) if host else None

    def service_by_host(self, hostname: str) -> Service | None:
        return self.services.get(hostname)

    def services_of(self, workload: Workload) -> list[Service]:
        return [s for s in self.services.values() if any(e.workload_uid == workload.uid for e in s.endpoints)]

    def waypoint_for(self, ref: WaypointRef | None) -> Waypoint | None:
        return self.waypoints.get(f"{ref.namespace}/{ref.name}") if ref else None

    def route_table(self, hostname: str, port: int) -> RouteTable | None:
        return self.route_tables.get(f"{hostname}:{port}") or self.route_tables.get(f"{hostname}:{ANY_PORT}")

    # --- reads: policy -----------------------------------------------------------------

    def policies_for(self, workload: Workload) -> list[Authorization]:
        """The Authorizations a ztunnel enforces for connections to `workload`: mesh-wide,
        namespace-wide and selector policies. TARGETS-scoped ones belong to waypoints."""
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

    def authorizations_select_by_label(self, namespace: str) -> bool:
        """Does an Authorization in `namespace` select workloads by label? A proxy that does
        not know a workload's labels yet cannot evaluate it, and must refuse (fail closed)."""
        return any(p.scope is PolicyScope.WORKLOAD and p.namespace == namespace for p in self.authorizations.values())

    def peer_authentications_select_by_label(self, namespace: str) -> bool:
        """The same question for PeerAuthentications (the proxy then assumes STRICT)."""
        return any(p.scope is PolicyScope.WORKLOAD and p.namespace == namespace
                   for p in self.peer_authentications.values())

    def waypoint_policies_for(self, service: Service | None) -> list[Authorization]:
        """The policies this waypoint enforces for a request to `service`: those whose targetRefs
        name the Service (or the ServiceEntry it came from) or the waypoint's own Gateway. Selector
        and namespace-wide policies are enforced by the destination's ztunnel, as in Istio ambient."""
        found = []
        for policy in self.authorizations.values():
            if policy.scope is not PolicyScope.TARGETS:
                continue
            for target in policy.targets:
                if target.kind == "Gateway" and (target.namespace, target.name) == self.waypoint:
                    found.append(policy)
                    break
                if (service is not None and target.kind == service.source_kind
                        and (target.namespace, target.name) == (service.namespace, service.name)):
                    found.append(policy)
                    break
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

    # --- memos, checks and dumps ---------------------------------------------------------

    def cached(self, name: str) -> dict:
        """A memo for derived lookups (endpoint lists), emptied whenever the state changes."""
        if self._cache_version != self.version:
            self._caches.clear()
            self._cache_version = self.version
        return self._caches.setdefault(name, {})

    def check(self) -> None:
        """Raises AssertionError if an index drifted (used by tests)."""
        for index, held, addresses in ((self.workloads_by_ip, self.workloads, lambda w: w.ips),
                                       (self.services_by_vip, self.services, lambda s: s.vips)):
            listed = {address for resource in held.values() for address in addresses(resource)}
            assert set(index) == listed, ("an address index drifted", index, listed)
            for address, key in index.items():
                assert key in held and address in addresses(held[key]), ("an address names a stale holder",
                                                                         address, key)
        want_ns: dict[str, set[str]] = {}
        for key, p in self.authorizations.items():
            want_ns.setdefault(p.namespace, set()).add(key)
        assert self.policies_by_namespace == want_ns, "policies_by_namespace drifted"
        for rtype, held in self._held.items():
            for key, resource in held.items():
                assert resource.key == key, f"{rtype} {key} stored under another key than its own"

    def dump(self) -> dict:
        def plain(obj):
            return _jsonable(asdict(obj))
        return {
            "version": self.version,
            "synced": self.synced,
            "workloads": [plain(w) for w in self.workloads.values()],
            "services": [plain(s) for s in self.services.values()],
            "waypoints": [plain(w) for w in self.waypoints.values()],
            "policies": [plain(p) for p in self.authorizations.values()],
            "peer_authentications": [plain(p) for p in self.peer_authentications.values()],
            "route_tables": sorted(self.route_tables),
            # whole tables, for `shoal proxy-config routes` (matches, weights, subsets, retries, timeouts)
            "routes": [plain(self.route_tables[key]) for key in sorted(self.route_tables)],
            # never the key material: which credentials are held, and how large
            "tls_credentials": [{"key": key, "hosts": list(c.hosts), "chain_bytes": len(c.chain_pem),
                                 "key_bytes": len(c.key_pem)} for key, c in sorted(self.tls_credentials.items())],
        }


def _canonical(address: str) -> str:
    """The model's text of an address looked up in another spelling (`::ffff:198.19.1.5`, upper-case
    IPv6): the indexes hold canonical text only (shoal.model.addresses). Not an address: as it is."""
    return canonical_or_none(address) or address


def _unindex(index: dict[str, str], key: str, addresses, held: dict, addresses_of) -> None:
    """Drops `key`'s addresses from `index`; an address another resource still lists goes to it."""
    for address in addresses:
        if index.get(address) != key:
            continue
        others = [other for other, resource in held.items() if address in addresses_of(resource)]
        if others:
            index[address] = others[-1]
        else:
            del index[address]


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):
        return value.value
    return value
