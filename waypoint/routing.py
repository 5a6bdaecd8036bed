"""The waypoint's decision, pure: (state, request head, random source) -> Plan or Refusal.

Order, as Envoy's filter chain in an Istio waypoint runs it:
1. the service: the CONNECT target is a Service VIP (service traffic) or a
   workload IP (workload traffic); anything else is refused (404, NR);
2. L7 authorization (DENY, then ALLOW) of the policies that target the
   Service or this waypoint: 403 naming the policy;
3. the route: the service's RouteTable for the port (or any port), first
   route whose matches accept the request; no table means "to the service
   itself"; a table whose routes all miss gives 404 (NR);
4. the destination: a weighted pick among the route's destinations, then the
   endpoints of that service port whose labels match the subset; none gives
   503 (UH). The endpoint order in the plan is the order of tries: the first
   pick, then the others, so a retry goes to another endpoint when there is one;
5. fault (delay, abort) and mirrors, each rolled against its percentage.

Every random choice draws from `rand()` (uniform in [0, 1)), in a fixed
order (destination, fault delay, fault abort, each mirror's roll and
endpoint, then the endpoint order), so tests pass a seeded or scripted
source and compare plans whole. The destination's draw is the route's own
evenly spread stream when `rand` is a `waypoint.draws.Draws` (the proxy's
default), so a route's split holds its weights over short runs too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Callable
from urllib.parse import parse_qsl

from shoal.contracts import HBONE_PORT
from shoal.identity import SpiffeId
from shoal.model import (
    Destination, HeaderChanges, HeaderMatch, MatchKind, Protocol, Resolution, RetryPolicy, Route, RouteMatch,
    RouteTable,
    Service, StringMatch, Workload, selector_matches,
)
from shoal import authz

from shoal.model.addresses import join_address, join_host_port
from shoal.proxy_state import ProxyState
from shoal.workload_names import workload_label

from waypoint.draws import weighted_draw
from waypoint.http1 import Head

Random = Callable[[], float]


def request_head(method: str, target: str, authority: str, headers: tuple[tuple[str, str], ...] = ()) -> Head:
    """A request's head made by hand (tests, tools): the `http1.Head` that a client's HTTP/1.1 request with
    these parts is parsed into, `authority` its Host header (put first, unless `headers` has one). The
    decision reads a head's method, target, path, query, authority and headers; the proxy hands it the
    parsed head itself."""
    if authority and not any(k == "host" for k, _ in headers):
        headers = (("host", authority), *headers)
    return Head(method, target, 0, "", tuple(headers), "1.1", True, 0, False)


RequestHead = request_head   # (the name other components' tests import)


@dataclass(frozen=True)
class Peer:
    """Who sent the request (from the HBONE connection) and where it was going."""
    source_ip: str
    source: SpiffeId | None            # from the client's verified certificate
    destination: tuple[str, int]       # the CONNECT target: VIP (or workload IP) and port

    def facts(self, port: int, head: Head | None = None) -> authz.RequestFacts:
        """What a policy sees of this request (`l4_only` without an HTTP head)."""
        principal, namespace = (self.source.principal, self.source.namespace) if self.source else (None, None)
        if head is None:
            return authz.RequestFacts(self.source_ip, principal, namespace, port, l4_only=True)
        return authz.RequestFacts(self.source_ip, principal, namespace, port, method=head.method, path=head.path,
                                  host=head.authority)


@dataclass(frozen=True)
class Upstream:
    """One endpoint to send the request to."""
    address: tuple[str, int]           # pod IP and target port
    hbone: bool                        # meshed: HBONE to podIP:15008 with this authority
    identity: SpiffeId | None          # expected of the HBONE server (None: not HBONE, and no workload)
    workload_uid: str
    workload_name: str
    workload_namespace: str

    @property
    def connect(self) -> tuple[str, int]:
        return (self.address[0], HBONE_PORT) if self.hbone else self.address

    # What a request's record says of its upstream: made once per Upstream (they are memoized per state
    # version, so once per endpoint), not per request.

    @cached_property
    def address_text(self) -> str:
        return join_address(self.address)

    @cached_property
    def principal(self) -> str:
        return str(self.identity) if self.hbone else ""


@dataclass(frozen=True)
class MirrorPlan:
    service: str                       # hostname of the shadow service
    upstream: Upstream
    authority: str                     # the Host to send: the request's, with "-shadow" (Istio's rule)


@dataclass(frozen=True)
class FaultPlan:
    delay: float | None = None
    abort_status: int | None = None


@dataclass(frozen=True)
class Plan:
    service: str                       # the service addressed (hostname)
    service_name: str
    service_namespace: str
    route: str                         # the route's name ("" when unnamed or the default)
    destination_service: str           # the service the request goes to (after routing)
    subset: str
    upstreams: tuple[Upstream, ...]    # tries in order: the pick first, then the others
    timeout: float | None = None
    retry: RetryPolicy | None = None
    mirrors: tuple[MirrorPlan, ...] = ()
    fault: FaultPlan = FaultPlan()
    request_headers: HeaderChanges = HeaderChanges()
    response_headers: HeaderChanges = HeaderChanges()
    policy: str = ""                   # the ALLOW policy that let it through, if any
    destination_port: int = 0          # the destination service's port (0: the port the request came on)


@dataclass(frozen=True)
class Refusal:
    status: int
    flag: str                          # Envoy's response flag: NR, UH, RBAC
    reason: str
    service: str = ""
    policy: str = ""


NO_CONFIG = ("no config from the control plane yet: this waypoint serves nothing until it has the whole of it; "
             "check that the control plane is reachable")


@dataclass(frozen=True)
class _Destination:
    """What decide looks up for a CONNECT target before it reads the request: the same for every request
    to it until the state changes, so it is memoized per state version (`_destination`)."""
    service: Service | None
    has_port: bool
    policies: tuple                    # the Authorizations this waypoint enforces for the service
    table: RouteTable | None
    default_route: Route | None = None   # the route of a service without a table: to the service itself


NO_POLICY = authz.Verdict(True, "", "no authorization policy applies")


def _destination(state: ProxyState, ip: str, port: int) -> _Destination:
    memo = state.cached("destinations")
    found = memo.get((ip, port))
    if found is None:
        service = state.service_by_vip(ip)
        if service is None:
            found = _Destination(None, False, (), None)
        else:
            table = state.route_table(service.hostname, port)
            found = _Destination(service, service.port(port) is not None,
                                 tuple(state.waypoint_policies_for(service)), table,
                                 Route(destinations=(Destination(service.hostname),)) if table is None else None)
        memo[(ip, port)] = found
    return found


def decide(state: ProxyState, peer: Peer, head: Head, rand: Random) -> Plan | Refusal:
    if not state.synced:
        return Refusal(503, "UAEX", NO_CONFIG)
    ip, port = peer.destination
    known = _destination(state, ip, port)
    service = known.service
    if service is None:
        workload = state.workload_by_ip(ip)
        if workload is None:
            return Refusal(404, "NR", f"{join_host_port(ip, port)} is neither a Service VIP nor a workload this "
                           "waypoint knows; "
                           "check that the service is in the waypoint's namespace and bound to it")
        return _to_workload(state, peer, head, workload, port)
    if not known.has_port:
        return Refusal(404, "NR", f"service {service.hostname} has no port {port}", service.hostname)

    verdict = authz.authorize(known.policies, peer.facts(port, head)) if known.policies else NO_POLICY
    if not verdict:
        return Refusal(403, "RBAC", verdict.reason, service.hostname, verdict.named)

    table = known.table
    if table is None:
        route = known.default_route   # (one object per state version: its draws and plans are cached by it)
    else:
        route = next((r for r in table.routes if route_matches(r, head)), None)
        if route is None:
            return Refusal(404, "NR", f"no route of {table.origin or table.key} matches {head.method} {head.path}",
                           service.hostname)
    return follow(state, service, route, port, head, rand, verdict.policy, dialled=peer.destination)


def follow(state: ProxyState, service: Service, route: Route, port: int, head: Head, rand: Random,
           policy: str = "", dialled: tuple[str, int] | None = None) -> Plan | Refusal:
    """The plan of a request that `route` (of `service`, addressed on `port`) took: its destination picked by
    weight, faults rolled, mirrors and endpoints found. The waypoint and the ingress gateway share it.

    `dialled`: where the client connected (the CONNECT target); a ServiceEntry with `resolution: NONE`
    has no endpoints, and a request routed to that same entry goes there, in plain TCP."""
    if route.destinations:
        destination = pick_weighted(route.destinations, weighted_draw(rand, route))
        if destination is None:
            return Refusal(503, "UH", f"every destination of route {route.name or '(unnamed)'} has weight 0",
                           service.hostname)
    else:
        destination = None
    fault = _fault(route, rand)
    mirrors = tuple(m for m in (_mirror(state, mirror, port, head.authority, rand) for mirror in route.mirrors)
                    if m is not None) if route.mirrors else ()
    if destination is None:
        if fault.abort_status is None:
            return Refusal(503, "UH", f"route {route.name or '(unnamed)'} has no destination", service.hostname)
        upstreams, target, subset, target_port = (), service.hostname, "", 0
    else:
        target, subset, target_port = destination.host, destination.subset_name, destination.port or 0
        found = endpoints(state, destination, port)
        cacheable = fault is NO_FAULT and not mirrors   # (and the endpoints are the memoized ones)
        if (isinstance(found, Refusal) and dialled is not None and destination.host == service.hostname
                and service.resolution is Resolution.NONE):
            cacheable = False
            found = (Upstream(address=(dialled[0], destination.port or dialled[1]), hbone=False, identity=None,
                              workload_uid="", workload_name="", workload_namespace=""),)
        if isinstance(found, Refusal):
            if fault.abort_status is None:
                return Refusal(found.status, found.flag, found.reason, service.hostname)
            found = ()
        start = rotation_start(found, rand())
        if cacheable:
            return _cached_plan(state, service, route, destination, found, start, policy)
        upstreams = found[start:] + found[:start]
    return Plan(service=service.hostname, service_name=service.name, service_namespace=service.namespace,
                route=route.name, destination_service=target, subset=subset, upstreams=upstreams,
                timeout=route.timeout, retry=route.retry, mirrors=mirrors, fault=fault,
                request_headers=route.request_headers, response_headers=route.response_headers,
                policy=policy, destination_port=target_port)


HTTP_PROTOCOLS = ("http", "http2", "grpc", "grpc-web", "h2c")
OPAQUE_PROTOCOLS = ("tcp", "tls", "https", "mongo", "redis", "mysql")


def protocol_of(state: ProxyState, destination: tuple[str, int]) -> str:
    """"http", "tcp", or "sniff" (undeclared: look at the first bytes) for a CONNECT target."""
    service = state.service_by_vip(destination[0])
    port = service.port(destination[1]) if service is not None else None
    declared = port.app_protocol if port is not None else ""
    if declared in HTTP_PROTOCOLS:
        return "http"
    if declared in OPAQUE_PROTOCOLS:
        return "tcp"
    return "sniff"


def decide_tcp(state: ProxyState, peer: Peer, rand: Random) -> Plan | Refusal:
    """A TCP connection through the waypoint: L4 policy, then every endpoint of the
    service port, in a random rotation (tries in order on connect failure)."""
    if not state.synced:
        return Refusal(503, "UAEX", NO_CONFIG)
    ip, port = peer.destination
    service = state.service_by_vip(ip)
    workload = state.workload_by_ip(ip) if service is None else None
    if service is None and workload is None:
        return Refusal(404, "NR", f"{join_host_port(ip, port)} is neither a Service VIP nor a workload this "
                       "waypoint knows")
    if service is not None and service.port(port) is None:
        return Refusal(404, "NR", f"service {service.hostname} has no port {port}", service.hostname)
    verdict = authz.authorize(state.waypoint_policies_for(service), peer.facts(port))
    hostname = service.hostname if service is not None else ""
    if not verdict:
        return Refusal(403, "RBAC", verdict.reason, hostname, verdict.named)
    if workload is not None:
        upstreams = (upstream_of(state, workload, port),)
    else:
        found = endpoints(state, Destination(service.hostname), port)
        if isinstance(found, Refusal):
            return Refusal(found.status, found.flag, found.reason, hostname)
        upstreams = rotate(found, rand())
    return Plan(service=hostname, service_name=service.name if service else "",
                service_namespace=(service or workload).namespace, route="", destination_service=hostname,
                subset="", upstreams=upstreams, policy=verdict.policy)


def _to_workload(state: ProxyState, peer: Peer, head: Head, workload: Workload, port: int) -> Plan | Refusal:
    verdict = authz.authorize(state.waypoint_policies_for(None), peer.facts(port, head))
    if not verdict:
        return Refusal(403, "RBAC", verdict.reason, policy=verdict.named)
    return Plan(service="", service_name="", service_namespace=workload.namespace, route="",
                destination_service="", subset="", upstreams=(upstream_of(state, workload, port),),
                policy=verdict.policy)


# --- matching -----------------------------------------------------------------------

def route_matches(route: Route, head: Head) -> bool:
    return not route.matches or any(match_accepts(m, head) for m in route.matches)


def match_accepts(match: RouteMatch, head: Head) -> bool:
    if match.path is not None and not string_matches(match.path, head.path):
        return False
    if match.method is not None and match.method.upper() != head.method.upper():
        return False
    for header in match.headers:
        if not _header_matches(header, head.header(header.name)):
            return False
    if match.query_params:
        params = dict(parse_qsl(head.query, keep_blank_values=True))
        for param in match.query_params:
            if not _header_matches(param, params.get(param.name)):
                return False
    return True


def _header_matches(header: HeaderMatch, value: str | None) -> bool:
    found = value is not None and string_matches(header.match, value)
    return found != header.invert


def string_matches(match: StringMatch, value: str) -> bool:
    kind = match.kind
    if kind is MatchKind.EXACT:
        return value == match.value
    if kind is MatchKind.PREFIX:
        return value.startswith(match.value)
    if kind is MatchKind.REGEX:
        return _regex(match.value).fullmatch(value) is not None
    if kind is MatchKind.PRESENT:
        return True
    return False


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


# --- choices ---------------------------------------------------------------------------

def pick_weighted(destinations: tuple[Destination, ...], r: float) -> Destination | None:
    """The destination whose cumulative-weight slot holds r * total (r in [0, 1))."""
    if len(destinations) == 1:   # (most routes: no sum to make)
        return destinations[0] if destinations[0].weight > 0 else None
    total = sum(max(d.weight, 0) for d in destinations)
    if total <= 0:
        return None
    point = r * total
    running = 0
    for destination in destinations:
        running += max(destination.weight, 0)
        if point < running:
            return destination
    return next(d for d in reversed(destinations) if d.weight > 0)


def rotate(items: tuple, r: float) -> tuple:
    """All items, starting at a random one (r in [0, 1))."""
    start = rotation_start(items, r)
    return items[start:] + items[:start]


def rotation_start(items: tuple, r: float) -> int:
    """Where `rotate(items, r)` starts (0 for no items)."""
    return min(int(r * len(items)), len(items) - 1) if items else 0


def _cached_plan(state: ProxyState, service: Service, route: Route, destination: Destination,
                 found: tuple[Upstream, ...], start: int, policy: str) -> Plan:
    """The plan of a request that took `route` to `destination` (its endpoints `found`, as `endpoints`
    memoized them), its tries starting at endpoint `start`, with no fault and no mirror: nothing in it
    differs between such requests, so it is made once per state version (the draws that chose it are made
    per request all the same, in the same order). Keyed by the objects' identities, which the entry holds
    (so an id is not reused while it is cached): hashing a route whole per request costs what the plan does."""
    memo = state.cached("plans")
    key = (id(service), id(route), id(destination), id(found), start, policy)
    entry = memo.get(key)
    if (entry is not None and entry[0] is service and entry[1] is route and entry[2] is destination
            and entry[3] is found):
        return entry[4]
    plan = Plan(service=service.hostname, service_name=service.name, service_namespace=service.namespace,
                route=route.name, destination_service=destination.host, subset=destination.subset_name,
                upstreams=found[start:] + found[:start], timeout=route.timeout, retry=route.retry,
                request_headers=route.request_headers, response_headers=route.response_headers, policy=policy,
                destination_port=destination.port or 0)
    if len(memo) >= MAX_CACHED_PLANS:
        memo.clear()   # (a caller that rebuilds its routes per request, as the ingress may, makes new keys)
    memo[key] = (service, route, destination, found, plan)
    return plan


def _roll(percentage: float, r: float) -> bool:
    return r * 100.0 < percentage


NO_FAULT = FaultPlan()
MAX_CACHED_PLANS = 4096   # entries of the plan memo of one state version before it starts over


def _fault(route: Route, rand: Random) -> FaultPlan:
    fault = route.fault
    if fault is None:
        return NO_FAULT
    delay = fault.delay if fault.delay is not None and _roll(fault.delay_percentage, rand()) else None
    abort = fault.abort_status if fault.abort_status is not None and _roll(fault.abort_percentage, rand()) else None
    return FaultPlan(delay, abort) if delay is not None or abort is not None else NO_FAULT


def _mirror(state: ProxyState, mirror, port: int, authority: str, rand: Random) -> MirrorPlan | None:
    if not _roll(mirror.percentage, rand()):
        return None
    found = endpoints(state, mirror.destination, port)
    if isinstance(found, Refusal) or not found:
        return None
    upstream = rotate(found, rand())[0]
    return MirrorPlan(mirror.destination.host, upstream, shadow_authority(authority or mirror.destination.host))


def shadow_authority(authority: str) -> str:
    """Envoy's (so Istio's) mirror Host: the request's Host with `-shadow` appended to the name, before any port."""
    host, sep, port = authority.rpartition(":")
    if sep and host and port.isdigit():
        return f"{host}-shadow:{port}"
    return f"{authority}-shadow"


def endpoints(state: ProxyState, destination: Destination, request_port: int) -> tuple[Upstream, ...] | Refusal:
    """The endpoints of a destination (memoized per state version: this runs on every request)."""
    memo = state.cached("endpoints")
    key = (destination.host, destination.port or request_port, destination.subset, destination.subset_name)
    found = memo.get(key)
    if found is None:
        found = memo[key] = _endpoints(state, destination, request_port)
    return found


def _endpoints(state: ProxyState, destination: Destination, request_port: int) -> tuple[Upstream, ...] | Refusal:
    service: Service | None = state.services.get(destination.host)
    if service is None:
        return Refusal(503, "UH", f"destination service {destination.host} is unknown to this waypoint; "
                       "check the route's host and that the Service exists")
    port = destination.port or request_port
    found = []
    for endpoint in service.endpoints_for(port):
        workload = state.workloads.get(endpoint.workload_uid)
        if workload is None or not (workload.ips or workload.hostname):
            continue
        if destination.subset and not selector_matches(destination.subset, workload.labels):
            continue
        found.append(upstream_of(state, workload, endpoint.target_port))
    if not found:
        what = f" subset {destination.subset_name or dict(destination.subset)}" if destination.subset else ""
        return Refusal(503, "UH", f"no healthy endpoint for {destination.host}:{port}{what}; "
                       "check that pods with those labels are running and selected by the Service")
    return tuple(sorted(found, key=lambda u: u.address))


def upstream_of(state: ProxyState, workload: Workload, port: int) -> Upstream:
    # A ServiceEntry endpoint known only by name is dialled by name (the connect resolves it).
    return Upstream(address=(workload.ips[0] if workload.ips else workload.hostname, port), hbone=workload.protocol is Protocol.HBONE,
                    identity=workload.identity(state.trust_domain), workload_uid=workload.uid,
                    workload_name=workload_label(workload),
                    workload_namespace=workload.namespace)
