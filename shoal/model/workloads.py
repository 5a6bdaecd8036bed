"""Workloads (pods), Services and waypoints."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shoal.contracts import HBONE_PORT
from shoal.model.identity import SpiffeId, spiffe_id
from shoal.model.labels import Labels

CLUSTER_DOMAIN = "cluster.local"


def service_hostname(name: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{cluster_domain}"


class Resolution(StrEnum):
    """How a Service's endpoints are found (ServiceEntry's `resolution`; Kubernetes Services are STATIC).

    NONE: no endpoints; a connection goes to the address the client dialled."""
    STATIC = "STATIC"
    DNS = "DNS"
    NONE = "NONE"


class Protocol(StrEnum):
    """How a workload is reached: HBONE (enrolled in the mesh) or plain TCP."""
    HBONE = "HBONE"
    TCP = "TCP"


@dataclass(frozen=True, slots=True)
class WaypointRef:
    """A reference to a waypoint (a `Gateway` of class shoal-waypoint) by namespace and name."""
    namespace: str
    name: str

    @property
    def hostname(self) -> str:
        """The waypoint's Service hostname; resolve it through the Service store."""
        return service_hostname(self.name, self.namespace)


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str
    node: str
    ips: tuple[str, ...]
    labels: Labels = ()
    canonical_service: str = ""
    canonical_revision: str = "latest"
    waypoint: WaypointRef | None = None
    protocol: Protocol = Protocol.TCP
    workload_name: str = ""      # the owning controller (a Deployment): shoal.workload_names
    hostname: str = ""           # a ServiceEntry endpoint given by name: resolved when connecting, no ips

    @property
    def key(self) -> str:
        return self.uid

    def identity(self, trust_domain: str) -> SpiffeId:
        """The SPIFFE ID its certificate carries."""
        return spiffe_id(trust_domain, self.namespace, self.service_account)


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    name: str = ""
    protocol: str = "TCP"        # the L4 protocol from the Service (TCP, UDP, SCTP)
    app_protocol: str = ""       # spec.ports[].appProtocol, or inferred from the port name (http, grpc, ...)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One workload behind one service port, with the port to connect to on the workload."""
    workload_uid: str
    service_port: int
    target_port: int


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    waypoint: WaypointRef | None = None
    labels: Labels = ()
    source_kind: str = "Service"             # or "ServiceEntry": what policy targetRefs name
    resolution: Resolution = Resolution.STATIC

    @property
    def key(self) -> str:
        return self.hostname

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    def endpoints_for(self, service_port: int) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.service_port == service_port)


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A waypoint proxy requested by a `Gateway` with gatewayClassName shoal-waypoint.

    Its identity is `service_account` in `namespace` (Istio's convention: the
    Gateway's name). `traffic_type` is what it serves: service, workload, all
    or none (label `istio.io/waypoint-for`; `service` by default).
    """
    name: str
    namespace: str
    service_account: str
    traffic_type: str = "service"
    ports: tuple[int, ...] = (HBONE_PORT,)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> WaypointRef:
        return WaypointRef(self.namespace, self.name)

    @property
    def hostname(self) -> str:
        return service_hostname(self.name, self.namespace)

    def identity(self, trust_domain: str) -> SpiffeId:
        return spiffe_id(trust_domain, self.namespace, self.service_account)
