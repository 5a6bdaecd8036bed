"""Outbound, the decision half: where does a captured connection go, and as whom?

`decide(state, source, ip, port, balancer)` is pure apart from the balancer
it is handed (which keeps round-robin positions and failure counts). It
returns a frozen `Plan`, or raises an `OutboundError` saying what to check.
The I/O half (`ztunnel.proxy`) carries the plan out.

Order of the decision, as in Istio ambient:
1. a Service VIP: through the service's waypoint if it has one (unless the
   source *is* that waypoint); else an endpoint picked by the balancer:
   HBONE to `podIP:15008` for a meshed endpoint, plain TCP otherwise; a
   ServiceEntry endpoint known by name is dialled by that name (the I/O
   resolves it), and an entry with `resolution: NONE` sends the connection
   where the client did (after its waypoint, if it has one);
2. a workload IP: through its waypoint if it has one for workload traffic;
   HBONE if it is meshed; plain TCP otherwise;
3. anything else: passthrough, untouched.

Both address families alike: the dialled address is looked up in its
canonical text (an IPv4-mapped `::ffff:a.b.c.d` is the IPv4 address), an
endpoint or waypoint is reached at its address of the dialled family when it
has one (as kube-proxy balances a Service's IPv6 VIP over the pods' IPv6
addresses; a waypoint listens on both families), and a CONNECT authority
brackets an IPv6 address (`[fd73::5]:80`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable

from shoal.contracts import HBONE_PORT
from shoal.identity import SpiffeId
from shoal.model import Endpoint, Protocol, Resolution, Service, Workload, WaypointRef
from shoal.model.addresses import canonical_or_none, join_host_port
from shoal.proxy_state import ProxyState

from ztunnel.errors import ZtunnelError


class Kind(enum.StrEnum):
    PASSTHROUGH = "passthrough"     # plain TCP to the original destination
    DIRECT = "direct"               # plain TCP to a chosen endpoint of a service (not meshed)
    HBONE = "hbone"                 # mTLS tunnel to the destination's ztunnel
    WAYPOINT = "waypoint"           # mTLS tunnel to the waypoint


@dataclass(frozen=True)
class Plan:
    kind: Kind
    connect: tuple[str, int]                  # where the TCP (or TLS) connection goes
    authority: str = ""                       # CONNECT target (HBONE/WAYPOINT)
    source_identity: SpiffeId | None = None   # presented (HBONE/WAYPOINT)
    expected_identity: SpiffeId | None = None # what the server's certificate must say
    service: str = ""                         # hostname when a Service was addressed
    destination_workload: str = ""            # uid, when known
    endpoint: tuple[str, int] | None = None   # the endpoint chosen (for the balancer's bookkeeping)

    @property
    def uses_hbone(self) -> bool:
        return self.kind in (Kind.HBONE, Kind.WAYPOINT)


class OutboundError(ZtunnelError):
    """The connection cannot be sent anywhere; the message says what to check."""

    response_flag = "UF"


class NoConfig(OutboundError):
    response_flag = "UAEX"


class NoEndpoints(OutboundError):
    response_flag = "UH"


class NoHealthyEndpoints(OutboundError):
    response_flag = "UH"


class UnknownServicePort(OutboundError):
    response_flag = "NR"


class WaypointMissing(OutboundError):
    response_flag = "NR"


class Balancer:
    """Endpoint choice for services: round robin or least connections, skipping failing endpoints.

    An endpoint that failed `max_failures` times in a row is skipped for
    `eject_seconds`; if every endpoint is ejected, they are all tried again.
    """

    def __init__(self, mode: str = "round_robin", max_failures: int = 3, eject_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("round_robin", "least_connections"):
            raise ValueError(f"unknown balancing mode {mode!r}; choose round_robin or least_connections")
        self.mode = mode
        self.max_failures = max_failures
        self.eject_seconds = eject_seconds
        self.clock = clock
        self._next: dict[str, int] = {}
        self.active: dict[tuple[str, int], int] = {}
        self._failures: dict[tuple[str, int], int] = {}
        self._ejected_until: dict[tuple[str, int], float] = {}

    def pick(self, key: str, candidates: list[tuple[str, int]]) -> tuple[str, int]:
        now = self.clock()
        healthy = [c for c in candidates if self._ejected_until.get(c, 0.0) <= now]
        pool = healthy or candidates
        if self.mode == "least_connections":
            return min(pool, key=lambda c: (self.active.get(c, 0), candidates.index(c)))
        index = self._next.get(key, 0)
        self._next[key] = index + 1
        return pool[index % len(pool)]

    def opened(self, endpoint: tuple[str, int]) -> None:
        self.active[endpoint] = self.active.get(endpoint, 0) + 1

    def closed(self, endpoint: tuple[str, int]) -> None:
        left = self.active.get(endpoint, 0) - 1
        if left > 0:
            self.active[endpoint] = left
        else:
            self.active.pop(endpoint, None)

    def succeeded(self, endpoint: tuple[str, int]) -> None:
        self._failures.pop(endpoint, None)
        self._ejected_until.pop(endpoint, None)

    def failed(self, endpoint: tuple[str, int]) -> None:
        count = self._failures.get(endpoint, 0) + 1
        self._failures[endpoint] = count
        if count >= self.max_failures:
            self._ejected_until[endpoint] = self.clock() + self.eject_seconds

    def ejected(self, endpoint: tuple[str, int]) -> bool:
        return self._ejected_until.get(endpoint, 0.0) > self.clock()


def decide(state: ProxyState, source: Workload, ip: str, port: int, balancer: Balancer) -> Plan:
    if not state.synced:
        raise NoConfig("no config from the control plane yet: this ztunnel sends nothing until it has the "
                       "whole of it; check that the control plane is reachable")
    td = state.trust_domain
    source_identity = source.identity(td)
    ip = canonical_or_none(ip) or ip   # once, here: every lookup and the plan below use this text
    service = state.service_by_vip(ip, canonical=True)
    if service is not None:
        return _to_service(state, source, source_identity, service, ip, port, balancer)
    workload = state.workload_by_ip(ip, canonical=True)
    if workload is not None:
        ref = workload.waypoint
        if ref is not None and not _is_waypoint(state, source, ref):
            waypoint = state.waypoint_for(ref)
            if waypoint is None or waypoint.traffic_type in ("workload", "all"):   # missing: refused
                return _via_waypoint(state, source_identity, ref, join_host_port(ip, port), "", workload.uid,
                                     balancer)
        if workload.protocol is Protocol.HBONE:
            return Plan(Kind.HBONE, (ip, HBONE_PORT), join_host_port(ip, port), source_identity,
                        workload.identity(td), "", workload.uid, (ip, port))
        return Plan(Kind.PASSTHROUGH, (ip, port), destination_workload=workload.uid)
    return Plan(Kind.PASSTHROUGH, (ip, port))


def address_for(workload: Workload, dialled: str) -> str:
    """The workload's address of the family of `dialled` (an address), else its first (primary) one;
    "" when it has none. ":" tells the families apart: canonical IPv4 text never holds one."""
    want_ipv6 = ":" in dialled
    for ip in workload.ips:
        if (":" in ip) == want_ipv6:
            return ip
    return workload.ips[0] if workload.ips else ""


def _is_waypoint(state: ProxyState, source: Workload, ref: WaypointRef) -> bool:
    """Is the source that waypoint itself? By its identity (what its certificate says), never by a
    name or a label, which any pod of the namespace could take."""
    waypoint = state.waypoint_for(ref)
    return (waypoint is not None and source.namespace == waypoint.namespace
            and source.service_account == waypoint.service_account)


def _to_service(state, source, source_identity, service: Service, vip, port, balancer) -> Plan:
    if service.port(port) is None:
        ports = ", ".join(str(p.port) for p in service.ports) or "none"
        raise UnknownServicePort(f"service {service.hostname} has no port {port} (its ports: {ports}); "
                                 "check the Service's spec.ports")
    ref = service.waypoint
    if ref is not None and not _is_waypoint(state, source, ref):
        waypoint = state.waypoint_for(ref)
        if waypoint is None or waypoint.traffic_type in ("service", "all"):
            return _via_waypoint(state, source_identity, ref, join_host_port(vip, port), service.hostname, "",
                                 balancer)
    if service.resolution is Resolution.NONE:
        return Plan(Kind.PASSTHROUGH, (vip, port), service=service.hostname)
    candidates: list[tuple[str, int]] = []
    by_target: dict[tuple[str, int], tuple[Workload, Endpoint]] = {}
    for endpoint in service.endpoints_for(port):
        workload = state.workloads.get(endpoint.workload_uid)
        if workload is None:
            continue
        address = address_for(workload, vip) or workload.hostname
        if not address:
            continue
        target = (address, endpoint.target_port)
        candidates.append(target)
        by_target[target] = (workload, endpoint)
    if not candidates:
        raise NoEndpoints(f"service {service.hostname} port {port} has no ready endpoints; "
                          "check that its selector matches running pods")
    chosen = balancer.pick(f"{service.hostname}:{port}", candidates)
    workload, _ = by_target[chosen]
    ip, target_port = chosen
    if workload.protocol is Protocol.HBONE:
        return Plan(Kind.HBONE, (ip, HBONE_PORT), join_host_port(ip, target_port), source_identity,
                    workload.identity(state.trust_domain), service.hostname, workload.uid, chosen)
    return Plan(Kind.DIRECT, chosen, service=service.hostname, destination_workload=workload.uid, endpoint=chosen)


def _via_waypoint(state, source_identity, ref: WaypointRef, authority, hostname, uid, balancer) -> Plan:
    waypoint = state.waypoint_for(ref)
    waypoint_service = state.service_by_host(ref.hostname)
    if waypoint is None or waypoint_service is None:
        raise WaypointMissing(f"waypoint {ref.namespace}/{ref.name} is not known or has no Service; "
                              "check the Gateway (gatewayClassName shoal-waypoint) and its pods")
    candidates = []
    dialled = authority.rpartition(":")[0].strip("[]")
    for endpoint in waypoint_service.endpoints:
        workload = state.workloads.get(endpoint.workload_uid)
        if workload is not None and workload.ips:
            # Its address of the dialled family (the waypoint listens on both, waypoint.config `listen`),
            # so an IPv6 client's connection stays IPv6 end to end, as to any other endpoint.
            candidates.append((address_for(workload, dialled), HBONE_PORT))
    candidates = sorted(set(candidates))
    if not candidates:
        raise NoHealthyEndpoints(f"waypoint {ref.namespace}/{ref.name} has no running pods; "
                                 "check its Deployment in namespace " + ref.namespace)
    chosen = balancer.pick(f"waypoint:{ref.namespace}/{ref.name}", candidates)
    return Plan(Kind.WAYPOINT, chosen, authority, source_identity, waypoint.identity(state.trust_domain),
                hostname, uid, chosen)
