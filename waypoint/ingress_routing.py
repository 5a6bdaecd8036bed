"""The ingress gateway's decision: which route a request from outside the mesh takes. Pure.

A waypoint is addressed by a Service VIP (the CONNECT target) and looks up
that Service's route table. An ingress gateway is addressed by name: the
request's Host (or HTTP/2 :authority) and the gateway port it arrived on
pick a `RouteTable` from the gateway's own (`IngressRoutes`: the routes of
the VirtualServices and HTTPRoutes bound to this gateway, keyed by
(host, port); a `*.example.com` host matches its subdomains, the longest
suffix winning). From the route on, the decision is the waypoint's
(`waypoint.routing.follow`): weights, faults, mirrors, header changes,
timeouts and retries, and endpoints reached over HBONE with the gateway's
own identity, so a STRICT destination and its AuthorizationPolicies treat
the gateway as any mesh client.

A destination without a port takes the destination Service's only port
(Istio's rule); with several, the route must name one. A plan names the
backend Service it reached as its service (metrics' destination_service, as
Istio's gateway reports), the Host only when no mesh Service is reached. Nothing is sent
anywhere a route does not say: an unknown host is 404, as Envoy answers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping

from shoal.model import Route, RouteTable, Service
from shoal.proxy_state import ProxyState

from waypoint.http1 import Head
from waypoint.routing import NO_CONFIG, Peer, Plan, Random, Refusal, follow, route_matches

IngressRoutes = Mapping[tuple[str, int], RouteTable]


def host_of(authority: str) -> str:
    """The name of a Host header: lower case, without a port or a trailing dot ("[v6]:port" kept whole)."""
    host = authority.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def table_for(routes: IngressRoutes, host: str, port: int) -> RouteTable | None:
    found = routes.get((host, port))
    if found is not None:
        return found
    labels = host.split(".")
    for i in range(1, len(labels)):
        found = routes.get(("*." + ".".join(labels[i:]), port))
        if found is not None:
            return found
    return routes.get(("*", port))


MAX_MEMO = 4096   # entries of a per-state-version memo below before it starts over


def _ported(state: ProxyState, route: Route) -> Route | Refusal:
    """`route` with each destination's port (`_with_ports`), made once per route and state version: the plan
    memo (`routing._cached_plan`) and the weighted draws' streams are keyed by the route object, so a route
    made anew per request would miss both every time (and fill them)."""
    memo = state.cached("ingress-ported")
    entry = memo.get(id(route))
    if entry is not None and entry[0] is route:   # (the entry holds the route: its id is not reused meanwhile)
        return entry[1]
    if len(memo) >= MAX_MEMO:
        memo.clear()
    found = _with_ports(state, route)
    memo[id(route)] = (route, found)
    return found


def _addressed(state: ProxyState, host: str, namespace: str) -> Service:
    """The Service a request to the gateway's `host` is named by, one object per host and state version (the
    plan memo is keyed by it too)."""
    memo = state.cached("ingress-addressed")
    found = memo.get((host, namespace))
    if found is None:
        if len(memo) >= MAX_MEMO:   # (the host is the client's: a `*` table takes any)
            memo.clear()
        found = memo[(host, namespace)] = Service(name=host, namespace=namespace, hostname=host, vips=(), ports=())
    return found


def _with_ports(state: ProxyState, route: Route) -> Route | Refusal:
    destinations = []
    for destination in route.destinations:
        if destination.port is None:
            service = state.service_by_host(destination.host)
            if service is None:
                return Refusal(503, "UH", f"destination service {destination.host} is unknown; check the route's "
                                          "host and that the Service exists")
            if len(service.ports) != 1:
                ports = ", ".join(str(p.port) for p in service.ports) or "none"
                return Refusal(503, "NR", f"destination {destination.host} has ports {ports}; the route must "
                                          "name one (destination.port.number)")
            destination = replace(destination, port=service.ports[0].port)
        destinations.append(destination)
    return replace(route, destinations=tuple(destinations))


def decide(state: ProxyState, routes: Callable[[], IngressRoutes], peer: Peer, head: Head,
           rand: Random) -> Plan | Refusal:
    """`peer.destination` is the gateway's own listener (address, port); `routes()` its current tables."""
    if not state.synced:
        return Refusal(503, "UAEX", NO_CONFIG)
    port = peer.destination[1]
    host = host_of(head.authority)
    table = table_for(routes(), host, port)
    if table is None:
        return Refusal(404, "NR", f"no route for host {host or '(none)'} on gateway port {port}; check the "
                                  "VirtualService's gateways and hosts (or the HTTPRoute's parentRefs and hostnames)")
    route = next((r for r in table.routes if route_matches(r, head)), None)
    if route is None:
        return Refusal(404, "NR", f"no route of {table.origin or table.key} matches {head.method} {head.path}", host)
    route = _ported(state, route)
    if isinstance(route, Refusal):
        return route
    # What the request addressed is the gateway's host, not a Service: refusals name that host.
    plan = follow(state, _addressed(state, host, table.namespace), route, port, head, rand)
    if isinstance(plan, Refusal):
        return plan
    # Its metrics and access log name the backend Service the request went to, as Istio's gateway's do
    # (destination_service hello.web.svc.cluster.local, not the Host); a host outside the mesh stays as it is.
    backend = state.service_by_host(plan.destination_service)
    if backend is None:
        return plan
    return replace(plan, service=backend.hostname, service_name=backend.name, service_namespace=backend.namespace)
