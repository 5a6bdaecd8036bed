"""From route candidates to RouteTables: the one precedence rule, and subset resolution.

PRECEDENCE. shoal applies exactly one routing object per (service host, port).
When several speak of the same host and port, the winner is, in order:
1. the dialect: Gateway API `HTTPRoute` first, then Istio `VirtualService`,
   then SMI `TrafficSplit` (the newest standard first; Istio's own docs say
   HTTPRoute is the future of its API);
2. within one dialect, the oldest object (metadata.creationTimestamp), as
   Istio resolves conflicting VirtualServices;
3. then the lexical order of `Kind namespace/name`.
The one exception is HTTPRoute's own rule: the HTTPRoutes attached to the
same host and port are merged, their matches ordered by Gateway API's
precedence (see `gateway_api`), as the Gateway API specification requires.
A candidate for every port (no port named) counts for each of the Service's
ports, so a higher-ranked object for one port wins that port only. Every
loser gets a warning naming the winner.

SUBSETS. A destination's subset name is looked up in the DestinationRules for
its host: the one in the routing object's namespace first, then the host's
namespace, then a root namespace, oldest first. A subset no DestinationRule
defines selects no endpoint (requests to it fail with 503, as in Istio) and
the routing object gets a warning.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from shoal.model import ANY_PORT, Destination, RouteTable, Service, WaypointRef

from control_plane.translate.candidates import Dialect, RouteCandidate
from control_plane.translate.common import ROOT_NAMESPACES, host_namespace

UNDEFINED_SUBSET_LABEL = "shoal.io/undefined-subset"
# The fixed words of the translator's route warnings, which the analysis (control_plane.analysis) sorts by:
SUBSET_UNDEFINED = "is defined by no DestinationRule"
TAKES_PRECEDENCE = "which takes precedence"


@dataclass(frozen=True)
class SubsetSource:
    """What one DestinationRule says: its host and subsets."""
    host: str
    subsets: Mapping[str, tuple[tuple[str, str], ...]]
    namespace: str
    created: str
    origin: str


def expand(candidates: Iterable[RouteCandidate], services: Mapping[str, Service],
           waypoints: set[str], warn) -> list[RouteCandidate]:
    """Attach waypoint-bound candidates to hosts and give ANY_PORT candidates the Service's ports."""
    by_waypoint: dict[WaypointRef, list[Service]] = defaultdict(list)
    for service in services.values():
        if service.waypoint is not None:
            by_waypoint[service.waypoint].append(service)
    attached = []
    for cand in candidates:
        if cand.waypoint is not None:
            if f"{cand.waypoint.namespace}/{cand.waypoint.name}" not in waypoints:
                warn(cand, f"{cand.path}: Gateway {cand.waypoint.namespace}/{cand.waypoint.name} is not a shoal "
                           f"waypoint (gatewayClassName shoal-waypoint); this parent is ignored")
                continue
            if cand.host is None:
                attached.extend(replace(cand, host=s.hostname) for s in by_waypoint.get(cand.waypoint, ()))
                continue
        attached.append(cand)
    named = []
    for cand in attached:
        if cand.section:
            service = services.get(cand.host)
            port = next((p.port for p in service.ports if p.name == cand.section), None) if service else None
            if port is None:
                warn(cand, f"{cand.path}.sectionName: {cand.host} has no port named {cand.section!r}; "
                           f"this parent is ignored until it has one")
                continue
            if cand.port not in (ANY_PORT, port):
                warn(cand, f"{cand.path}: port {cand.port} is not the port named {cand.section!r} ({port}); "
                           f"this parent is ignored")
                continue
            cand = replace(cand, port=port)
        named.append(cand)
    attached = named
    explicit = {(c.origin, c.host, c.port) for c in attached if c.port != ANY_PORT}
    out = []
    for cand in attached:
        service = services.get(cand.host)
        if cand.port == ANY_PORT and service is not None and service.ports:
            out.extend(replace(cand, port=p.port) for p in service.ports
                       if (cand.origin, cand.host, p.port) not in explicit)
        else:
            out.append(cand)
    return out


def choose(candidates: Iterable[RouteCandidate], warn) -> dict[tuple[str, int], RouteCandidate]:
    """The winner per (host, port); losers are reported through `warn(candidate, message)`."""
    groups: dict[tuple[str, int], list[RouteCandidate]] = defaultdict(list)
    for cand in candidates:
        groups[(cand.host, cand.port)].append(cand)
    winners = {}
    for (host, port), group in groups.items():
        group.sort(key=lambda c: c.rank)
        winner = group[0]
        if winner.dialect == Dialect.HTTPROUTE:
            merged = [c for c in group if c.dialect == Dialect.HTTPROUTE]
            group = [winner] + [c for c in group if c.dialect != Dialect.HTTPROUTE]
            winner = _merge_httproutes(merged)
        winners[(host, port)] = winner
        for loser in group[1:]:
            if loser.origin == winner.origin:
                continue
            where = f"{host}:{port}" if port != ANY_PORT else host
            warn(loser, f"{loser.path}: {where} is routed by {winner.origin}, {TAKES_PRECEDENCE} "
                        f"(HTTPRoute, then VirtualService, then TrafficSplit; the oldest first)")
    return winners


def _merge_httproutes(candidates: list[RouteCandidate]) -> RouteCandidate:
    """One candidate from every HTTPRoute on a host and port, routes in Gateway API precedence order."""
    unique = list({c.origin: c for c in reversed(candidates)}.values())[::-1]   # first of each origin
    if len(unique) == 1:
        return unique[0]
    entries = []
    for cand in unique:
        order = cand.order or tuple(((), i, 0) for i in range(len(cand.routes)))
        for route, (key, i, j) in zip(cand.routes, order):
            entries.append(((key, cand.created or "~", cand.origin, i, j), route))
    entries.sort(key=lambda e: e[0])
    first = unique[0]
    return replace(first, routes=tuple(r for _, r in entries), origin=", ".join(c.origin for c in unique),
                   order=tuple((k[0], 0, n) for n, (k, _) in enumerate(entries)))


def _subset_sources(host: str, from_namespace: str, rules: Mapping[str, list[SubsetSource]],
                    roots: tuple[str, ...]) -> list[SubsetSource]:
    home = host_namespace(host)
    def order(rule: SubsetSource):
        place = 0 if rule.namespace == from_namespace else 1 if rule.namespace == home else \
            2 if rule.namespace in roots else 3
        return (place, rule.created or "~", rule.origin)
    return sorted(rules.get(host, ()), key=order)


def _resolve(dest: Destination, cand: RouteCandidate, rules, warn, roots) -> Destination:
    if not dest.subset_name:
        return dest
    for rule in _subset_sources(dest.host, cand.namespace, rules, roots):
        if dest.subset_name in rule.subsets:
            return replace(dest, subset=rule.subsets[dest.subset_name])
    field = next((path for host, name, path in cand.subset_fields if (host, name) == (dest.host, dest.subset_name)),
                 cand.path)
    warn(cand, f"{field}: subset {dest.subset_name!r} of {dest.host} {SUBSET_UNDEFINED}; "
               f"requests routed to it fail (503) until one defines it")
    return replace(dest, subset=((UNDEFINED_SUBSET_LABEL, dest.subset_name),))


def route_table(cand: RouteCandidate, rules: Mapping[str, list[SubsetSource]], warn,
                roots: tuple[str, ...] = ROOT_NAMESPACES) -> RouteTable:
    routes = []
    for route in cand.routes:
        destinations = tuple(_resolve(d, cand, rules, warn, roots) for d in route.destinations)
        mirrors = tuple(replace(m, destination=_resolve(m.destination, cand, rules, warn, roots))
                        for m in route.mirrors)
        routes.append(replace(route, destinations=destinations, mirrors=mirrors) if route.destinations or route.mirrors
                      else route)
    return RouteTable(hostname=cand.host, port=cand.port, namespace=host_namespace(cand.host) or cand.namespace,
                      routes=tuple(routes), origin=cand.origin)


def build(candidates: Iterable[RouteCandidate], services: Mapping[str, Service], waypoints: set[str],
          rules: Mapping[str, list[SubsetSource]], warn,
          roots: tuple[str, ...] = ROOT_NAMESPACES) -> dict[str, RouteTable]:
    """All RouteTables by key. `warn(candidate, message)` receives every warning."""
    winners = choose(expand(candidates, services, waypoints, warn), warn)
    tables = {}
    for cand in winners.values():
        table = route_table(cand, rules, warn, roots)
        tables[table.key] = table
    return tables


__all__ = ["SUBSET_UNDEFINED", "SubsetSource", "TAKES_PRECEDENCE", "UNDEFINED_SUBSET_LABEL", "build", "choose", "expand",
           "route_table"]
