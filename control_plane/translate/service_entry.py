"""Istio `ServiceEntry` (networking.istio.io v1, v1beta1, v1alpha3): services the mesh did not
discover, outside it (`MESH_EXTERNAL`) or inside it (`MESH_INTERNAL`).

Each host of a ServiceEntry becomes one model `Service` (key: the host),
`source_kind` "ServiceEntry", with the entry's ports and addresses. Its
endpoints:
- `resolution: STATIC`: the listed `endpoints` (IP addresses), each one a
  Workload of its own (uid `ServiceEntry/<ns>/<name>/<index>`); or, with a
  `workloadSelector`, the pods of the entry's namespace it selects;
- `resolution: DNS`: the listed endpoints, by IP or by name, or, with none,
  the host itself; a Workload that has a `hostname` is resolved by the
  ztunnel when it connects (as Istio's Workload.hostname is);
- `resolution: NONE`: none; the connection goes where the client sent it,
  after policy and any waypoint.
`MESH_EXTERNAL` endpoints are reached in plain TCP; `MESH_INTERNAL` ones
speak HBONE with the endpoint's `serviceAccount` (default `default`).

Addresses: an entry without `addresses` gets one IPv4 and one IPv6 address
per host that is not a wildcard, as Istio's DNS auto-allocation does, so a
client that looked the host up in the ztunnel's DNS proxy connects to an
address the ztunnel knows. They come from ranges inside the local cluster's
own (`AUTO_ALLOCATE_V4`, `AUTO_ALLOCATE_V6`) and are stable: a host's slot is
a hash of its name, probed forward past hosts that took it first (in name order).

`istio.io/use-waypoint` (or shoal's key) on the ServiceEntry sends its
traffic through that waypoint, where AuthorizationPolicies with
`targetRefs: [{kind: ServiceEntry}]` govern the egress.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from shoal.model import (
    Endpoint,
    Labels,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    Waypoint,
    Workload,
    canonical_ip,
    freeze_labels,
    selector_matches,
)

from control_plane.translate import core
from control_plane.translate.common import Checker

GROUP = "networking.istio.io"
VERSIONS = ("v1", "v1beta1", "v1alpha3")  # newest first: the order of preference
KIND = "ServiceEntry"

AUTO_ALLOCATE_V4 = ipaddress.ip_network("198.18.64.0/20")
AUTO_ALLOCATE_V6 = ipaddress.ip_network("fd73:686f:616c:fe::/112")

_SPEC_FIELDS = ("hosts", "addresses", "ports", "location", "resolution", "endpoints", "workloadSelector",
                "exportTo", "subjectAltNames")
_PORT_FIELDS = ("number", "protocol", "name", "targetPort")
_ENDPOINT_FIELDS = ("address", "ports", "labels", "network", "locality", "weight", "serviceAccount")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")


@dataclass(frozen=True)
class EntryEndpoint:
    address: str                              # an IP, or a name resolved when connecting (DNS)
    ports: tuple[tuple[str, int], ...] = ()   # port name -> the endpoint's port
    labels: Labels = ()
    service_account: str = ""


@dataclass(frozen=True)
class ServiceEntrySpec:
    """A ServiceEntry as parsed: what translation needs, well typed."""
    name: str
    namespace: str
    hosts: tuple[str, ...]
    addresses: tuple[str, ...]
    ports: tuple[tuple[ServicePort, int], ...]   # (port, target port)
    location: str
    resolution: Resolution
    endpoints: tuple[EntryEndpoint, ...] = ()
    workload_selector: Labels | None = None
    labels: Labels = ()
    annotations: Labels = ()

    @property
    def external(self) -> bool:
        return self.location == "MESH_EXTERNAL"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def service_entry(obj: dict, c: Checker) -> ServiceEntrySpec | None:
    meta = obj.get("metadata") or {}
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    c.fields(spec, "spec", _SPEC_FIELDS)
    hosts = []
    for i, host in enumerate(c.strings(spec.get("hosts"), "spec.hosts")):
        host = host.strip().rstrip(".").lower()
        if _is_ip(host) or not _HOST.match(host) or len(host) > 253:
            c.error(f"spec.hosts[{i}]", f"{host!r} is not a host name (a DNS name, optionally '*.'-prefixed)")
        else:
            hosts.append(host)
    if not spec.get("hosts"):
        c.error("spec.hosts", "is required: list the names clients use for this service")
    addresses = []
    for i, address in enumerate(c.strings(spec.get("addresses"), "spec.addresses")):
        if not _is_ip(address):
            c.error(f"spec.addresses[{i}]", f"{address!r} is not an IP address (shoal does not match CIDR ranges; "
                                            "list single addresses)")
        else:
            addresses.append(canonical_ip(address))
    ports = _ports(c, spec)
    location = c.string(spec.get("location"), "spec.location") or "MESH_EXTERNAL"
    if location not in _LOCATIONS:
        c.error("spec.location", f"must be MESH_EXTERNAL or MESH_INTERNAL, not {location!r}")
    resolution_text = c.string(spec.get("resolution"), "spec.resolution") or "NONE"
    if resolution_text not in Resolution.__members__:
        c.error("spec.resolution", f"must be STATIC, DNS or NONE, not {resolution_text!r} "
                                   "(DNS_ROUND_ROBIN is not supported by shoal; use DNS)")
        return None
    resolution = Resolution(resolution_text)
    endpoints = _endpoints(c, spec, resolution, {p.name for p, _ in ports})
    selector = None
    if "workloadSelector" in spec:
        ws = c.mapping(spec.get("workloadSelector"), "spec.workloadSelector")
        c.fields(ws, "spec.workloadSelector", ("labels",))
        selector = freeze_labels({k: str(v) for k, v in c.mapping(ws.get("labels"), "spec.workloadSelector.labels",
                                                                  required=True).items()})
        if spec.get("endpoints"):
            c.error("spec.workloadSelector", "set either endpoints or workloadSelector, not both")
        if location != "MESH_INTERNAL":
            c.error("spec.workloadSelector", "selects mesh pods, so it needs location: MESH_INTERNAL")
        if resolution is not Resolution.STATIC:
            c.error("spec.resolution", "a workloadSelector needs resolution: STATIC")
    if resolution is Resolution.DNS and not spec.get("endpoints"):
        for i, host in enumerate(hosts):
            if host.startswith("*."):
                c.error(f"spec.hosts[{i}]", f"{host!r}: resolution DNS without endpoints resolves the host "
                                            "itself, which a wildcard cannot be; list endpoints or use NONE")
    if resolution is Resolution.STATIC and not spec.get("endpoints") and selector is None:
        c.warn("spec.endpoints", "resolution STATIC with no endpoints and no workloadSelector: "
                                 "connections to this service are refused")
    if c.errors:
        return None
    return ServiceEntrySpec(
        name=str(meta.get("name", "")), namespace=str(meta.get("namespace") or "default"),
        hosts=tuple(dict.fromkeys(hosts)), addresses=tuple(addresses), ports=ports, location=location,
        resolution=resolution, endpoints=endpoints, workload_selector=selector,
        labels=freeze_labels({k: str(v) for k, v in (meta.get("labels") or {}).items()}),
        annotations=freeze_labels({k: str(v) for k, v in (meta.get("annotations") or {}).items()}))


def _ports(c: Checker, spec: dict) -> tuple[tuple[ServicePort, int], ...]:
    out = []
    seen: set[int] = set()
    items = c.sequence(spec.get("ports"), "spec.ports", required=True)
    for i, raw in enumerate(items):
        path = f"spec.ports[{i}]"
        port = c.mapping(raw, path)
        c.fields(port, path, _PORT_FIELDS)
        number = c.port(port.get("number"), f"{path}.number", required=True)
        target = c.port(port.get("targetPort"), f"{path}.targetPort")
        name = c.string(port.get("name"), f"{path}.name") or ""
        protocol = (c.string(port.get("protocol"), f"{path}.protocol") or "TCP").upper()
        if number is None:
            continue
        if number in seen:
            c.error(f"{path}.number", f"port {number} is listed twice")
            continue
        seen.add(number)
        app = protocol.lower() if protocol.lower() in ("http", "http2", "https", "grpc", "tls", "tcp") else ""
        l4 = "UDP" if protocol == "UDP" else "TCP"
        out.append((ServicePort(port=number, name=name, protocol=l4, app_protocol=app), target or number))
    if not items and "ports" in spec:
        c.error("spec.ports", "lists no port; list the ports clients connect to")
    return tuple(out)


def _endpoints(c: Checker, spec: dict, resolution: Resolution, port_names: set[str]) -> tuple[EntryEndpoint, ...]:
    out = []
    for i, raw in enumerate(c.sequence(spec.get("endpoints"), "spec.endpoints")):
        path = f"spec.endpoints[{i}]"
        endpoint = c.mapping(raw, path)
        c.fields(endpoint, path, _ENDPOINT_FIELDS)
        address = c.string(endpoint.get("address"), f"{path}.address", required=True)
        if address is None:
            continue
        if address.startswith("unix://"):
            c.error(f"{path}.address", "unix domain socket endpoints are not supported by shoal")
            continue
        if resolution is Resolution.STATIC and not _is_ip(address):
            c.error(f"{path}.address", f"{address!r} is not an IP address; resolution STATIC needs addresses "
                                       "(use resolution DNS for names)")
            continue
        if resolution is Resolution.NONE:
            c.error(f"{path}.address", "resolution NONE uses no endpoints; remove them or use STATIC or DNS")
            continue
        ports = []
        for name, value in c.mapping(endpoint.get("ports"), f"{path}.ports").items():
            number = c.port(value, f"{path}.ports.{name}")
            if name not in port_names:
                c.error(f"{path}.ports.{name}", f"names no port of spec.ports (named: {', '.join(sorted(port_names))})")
            elif number is not None:
                ports.append((str(name), number))
        labels = freeze_labels({k: str(v) for k, v in c.mapping(endpoint.get("labels"), f"{path}.labels").items()})
        account = c.string(endpoint.get("serviceAccount"), f"{path}.serviceAccount") or ""
        out.append(EntryEndpoint(canonical_ip(address) if _is_ip(address) else address.lower(),
                                 tuple(ports), labels, account))
    return tuple(out)


# -- addresses -------------------------------------------------------------------

def allocate(hosts: Iterable[str]) -> dict[str, tuple[str, str]]:
    """host -> (IPv4, IPv6) from the auto-allocation ranges; stable for a given set of hosts."""
    taken: set[int] = set()
    out: dict[str, tuple[str, str]] = {}
    size = AUTO_ALLOCATE_V4.num_addresses - 2          # neither the network nor the broadcast address
    for host in sorted(set(hosts)):
        if len(taken) >= size:
            break                                      # the range is full: later hosts get no address
        slot = int.from_bytes(hashlib.sha256(host.encode()).digest()[:8], "big") % size
        while slot in taken:
            slot = (slot + 1) % size
        taken.add(slot)
        out[host] = (str(AUTO_ALLOCATE_V4.network_address + 1 + slot),
                     str(AUTO_ALLOCATE_V6.network_address + 1 + slot))
    return out


def hosts_to_allocate(specs: Iterable[ServiceEntrySpec]) -> list[str]:
    """The hosts that need auto-allocated addresses: those of entries without addresses, not wildcards."""
    return [h for s in specs if not s.addresses for h in s.hosts if not h.startswith("*.")]


# -- the model -----------------------------------------------------------------

def entry_uid(spec: ServiceEntrySpec, index: int) -> str:
    return f"ServiceEntry/{spec.namespace}/{spec.name}/{index}"


def to_model(spec: ServiceEntrySpec, allocated: Mapping[str, tuple[str, str]], pods: Iterable[dict],
             namespace_obj: dict | None, waypoints: Mapping[str, Waypoint]) -> tuple[list[Service], list[Workload]]:
    """The Services (one per host) and endpoint Workloads of one ServiceEntry.

    `pods`: the pods of its namespace (for a workloadSelector); `allocated`: from `allocate`."""
    workloads: list[Workload] = []
    endpoints: list[Endpoint] = []
    if spec.workload_selector is not None:
        for pod in pods:
            if not core.pod_serving(pod) or not selector_matches(spec.workload_selector,
                                                                  freeze_labels(core._meta(pod).get("labels"))):
                continue
            endpoints.extend(Endpoint(core.pod_uid(pod), port.port, target) for port, target in spec.ports)
    else:
        listed = spec.endpoints
        if spec.resolution is Resolution.DNS and not listed:
            listed = tuple(EntryEndpoint(host) for host in spec.hosts)
        for index, entry in enumerate(listed):
            uid = entry_uid(spec, index)
            by_name = dict(entry.ports)
            is_ip = _is_ip(entry.address)
            workloads.append(Workload(
                uid=uid, name=spec.name, namespace=spec.namespace,
                service_account=entry.service_account or "default", node="",
                ips=(entry.address,) if is_ip else (), hostname="" if is_ip else entry.address,
                labels=entry.labels, canonical_service=spec.name, workload_name=spec.name,
                protocol=Protocol.TCP if spec.external else Protocol.HBONE))
            endpoints.extend(Endpoint(uid, port.port, by_name.get(port.name, target)) for port, target in spec.ports)
    meta = {"labels": dict(spec.labels), "annotations": dict(spec.annotations)}
    waypoint = core._resolve_waypoint(core.waypoint_setting(meta, spec.namespace),
                                      core.waypoint_setting(core._meta(namespace_obj), spec.namespace),
                                      waypoints, "service")
    services = []
    for host in spec.hosts:
        vips = spec.addresses or allocated.get(host, ())
        services.append(Service(
            name=spec.name, namespace=spec.namespace, hostname=host, vips=tuple(vips),
            ports=tuple(port for port, _ in spec.ports),
            endpoints=tuple(sorted(endpoints, key=lambda e: (e.service_port, e.workload_uid))),
            waypoint=waypoint, labels=spec.labels, source_kind=KIND, resolution=spec.resolution))
    return services, workloads
