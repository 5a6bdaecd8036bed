"""Protobuf messages <-> `shoal.model` dataclasses: the one place they meet.

`to_proto(resource)` and `from_proto(message)` work for every top-level
resource type (Workload, Service, Waypoint, Authorization, PeerAuthentication,
RouteTable). `resource_message(resource)` wraps one in the `Resource` envelope
of Config.Watch, with its key and content version; `from_resource(envelope)`
unwraps it. A message that cannot become a model object raises
`ConversionError`, naming the resource and the field.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from shoal import model
from shoal.api import config_pb2
from shoal.api import resources_pb2 as pb
from shoal.errors import ShoalError
from shoal.model import ResourceType


class ConversionError(ShoalError, ValueError):
    """A message does not describe a valid model object."""


# -- small pieces ------------------------------------------------------------------

def _labels(mapping) -> model.Labels:
    return model.freeze_labels(dict(mapping))


def _waypoint_ref_to(ref: model.WaypointRef | None, target) -> None:
    if ref is not None:
        target.namespace, target.name = ref.namespace, ref.name


def _waypoint_ref_from(msg, parent) -> model.WaypointRef | None:
    if not parent.HasField("waypoint"):
        return None
    return model.WaypointRef(msg.namespace, msg.name)


def _enum(enum_type, proto_enum, value: int, what: str):
    try:
        return enum_type(proto_enum.Name(value))
    except ValueError:
        raise ConversionError(f"{what}: unknown value {value}") from None


def _enum_name(enum_type, name: str, what: str):
    try:
        return enum_type(name)
    except ValueError:
        raise ConversionError(f"{what}: unknown value {name!r}") from None


def _opt(msg, field: str):
    return getattr(msg, field) if msg.HasField(field) else None


# -- workloads and services ----------------------------------------------------------

def workload_to(w: model.Workload) -> pb.Workload:
    msg = pb.Workload(uid=w.uid, name=w.name, namespace=w.namespace, service_account=w.service_account,
                      node=w.node, ips=w.ips, labels=dict(w.labels), canonical_service=w.canonical_service,
                      canonical_revision=w.canonical_revision, protocol=pb.Protocol.Value(w.protocol.value),
                      workload_name=w.workload_name, hostname=w.hostname)
    if w.waypoint is not None:
        _waypoint_ref_to(w.waypoint, msg.waypoint)
    return msg


def workload_from(m: pb.Workload) -> model.Workload:
    return model.Workload(
        uid=m.uid, name=m.name, namespace=m.namespace, service_account=m.service_account, node=m.node,
        ips=tuple(m.ips), labels=_labels(m.labels), canonical_service=m.canonical_service,
        canonical_revision=m.canonical_revision, waypoint=_waypoint_ref_from(m.waypoint, m),
        protocol=_enum(model.Protocol, pb.Protocol, m.protocol, f"Workload {m.uid}: protocol"),
        workload_name=m.workload_name, hostname=m.hostname)


def service_to(s: model.Service) -> pb.Service:
    msg = pb.Service(
        name=s.name, namespace=s.namespace, hostname=s.hostname, vips=s.vips,
        ports=[pb.ServicePort(port=p.port, name=p.name, protocol=p.protocol, app_protocol=p.app_protocol)
               for p in s.ports],
        endpoints=[pb.Endpoint(workload_uid=e.workload_uid, service_port=e.service_port, target_port=e.target_port)
                   for e in s.endpoints],
        labels=dict(s.labels), source_kind=s.source_kind, resolution=s.resolution.value)
    if s.waypoint is not None:
        _waypoint_ref_to(s.waypoint, msg.waypoint)
    return msg


def service_from(m: pb.Service) -> model.Service:
    return model.Service(
        name=m.name, namespace=m.namespace, hostname=m.hostname, vips=tuple(m.vips),
        ports=tuple(model.ServicePort(p.port, p.name, p.protocol, p.app_protocol) for p in m.ports),
        endpoints=tuple(model.Endpoint(e.workload_uid, e.service_port, e.target_port) for e in m.endpoints),
        waypoint=_waypoint_ref_from(m.waypoint, m), labels=_labels(m.labels),
        source_kind=m.source_kind or "Service",
        resolution=_enum_name(model.Resolution, m.resolution or "STATIC", f"Service {m.hostname}: resolution"))


def waypoint_to(w: model.Waypoint) -> pb.Waypoint:
    return pb.Waypoint(name=w.name, namespace=w.namespace, service_account=w.service_account,
                       traffic_type=w.traffic_type, ports=w.ports)


def waypoint_from(m: pb.Waypoint) -> model.Waypoint:
    return model.Waypoint(m.name, m.namespace, m.service_account, m.traffic_type, tuple(m.ports))


# -- policy ----------------------------------------------------------------------------

def _source_to(s: model.Source) -> pb.Source:
    return pb.Source(principals=s.principals, not_principals=s.not_principals, namespaces=s.namespaces,
                     not_namespaces=s.not_namespaces, ip_blocks=s.ip_blocks, not_ip_blocks=s.not_ip_blocks)


def _source_from(m: pb.Source) -> model.Source:
    return model.Source(tuple(m.principals), tuple(m.not_principals), tuple(m.namespaces),
                        tuple(m.not_namespaces), tuple(m.ip_blocks), tuple(m.not_ip_blocks))


def _operation_to(o: model.Operation) -> pb.Operation:
    return pb.Operation(ports=o.ports, not_ports=o.not_ports, methods=o.methods, not_methods=o.not_methods,
                        paths=o.paths, not_paths=o.not_paths, hosts=o.hosts, not_hosts=o.not_hosts)


def _operation_from(m: pb.Operation) -> model.Operation:
    return model.Operation(tuple(m.ports), tuple(m.not_ports), tuple(m.methods), tuple(m.not_methods),
                           tuple(m.paths), tuple(m.not_paths), tuple(m.hosts), tuple(m.not_hosts))


def authorization_to(a: model.Authorization) -> pb.Authorization:
    return pb.Authorization(
        name=a.name, namespace=a.namespace, scope=pb.PolicyScope.Value(a.scope.value),
        action=pb.Action.Value(a.action.value),
        rules=[pb.Rule(sources=[_source_to(s) for s in r.sources],
                       operations=[_operation_to(o) for o in r.operations]) for r in a.rules],
        selector=dict(a.selector),
        targets=[pb.TargetRef(kind=t.kind, name=t.name, namespace=t.namespace, group=t.group) for t in a.targets])


def authorization_from(m: pb.Authorization) -> model.Authorization:
    what = f"Authorization {m.namespace}/{m.name}"
    return model.Authorization(
        name=m.name, namespace=m.namespace,
        scope=_enum(model.PolicyScope, pb.PolicyScope, m.scope, f"{what}: scope"),
        action=_enum(model.Action, pb.Action, m.action, f"{what}: action"),
        rules=tuple(model.Rule(tuple(_source_from(s) for s in r.sources),
                               tuple(_operation_from(o) for o in r.operations)) for r in m.rules),
        selector=_labels(m.selector),
        targets=tuple(model.TargetRef(t.kind, t.name, t.namespace, t.group) for t in m.targets))


def peer_authentication_to(p: model.PeerAuthentication) -> pb.PeerAuthentication:
    return pb.PeerAuthentication(
        name=p.name, namespace=p.namespace, scope=pb.PolicyScope.Value(p.scope.value),
        mode=pb.PeerAuthMode.Value(p.mode.value), selector=dict(p.selector),
        port_modes=[pb.PortMode(port=port, mode=pb.PeerAuthMode.Value(mode.value)) for port, mode in p.port_modes])


def peer_authentication_from(m: pb.PeerAuthentication) -> model.PeerAuthentication:
    what = f"PeerAuthentication {m.namespace}/{m.name}"
    return model.PeerAuthentication(
        name=m.name, namespace=m.namespace,
        scope=_enum(model.PolicyScope, pb.PolicyScope, m.scope, f"{what}: scope"),
        mode=_enum(model.PeerAuthMode, pb.PeerAuthMode, m.mode, f"{what}: mode"),
        selector=_labels(m.selector),
        port_modes=tuple((pm.port, _enum(model.PeerAuthMode, pb.PeerAuthMode, pm.mode, f"{what}: port mode"))
                         for pm in m.port_modes))


# -- routes -----------------------------------------------------------------------------

def _string_match_to(s: model.StringMatch, target) -> None:
    target.kind, target.value = pb.MatchKind.Value(s.kind.value), s.value


def _string_match_from(m: pb.StringMatch, what: str) -> model.StringMatch:
    return model.StringMatch(_enum(model.MatchKind, pb.MatchKind, m.kind, what), m.value)


def _header_match_to(h: model.HeaderMatch) -> pb.HeaderMatch:
    msg = pb.HeaderMatch(name=h.name, invert=h.invert)
    _string_match_to(h.match, msg.match)
    return msg


def _header_match_from(m: pb.HeaderMatch, what: str) -> model.HeaderMatch:
    return model.HeaderMatch(m.name, _string_match_from(m.match, f"{what}: header {m.name}"), m.invert)


def _route_match_to(r: model.RouteMatch) -> pb.RouteMatch:
    msg = pb.RouteMatch(headers=[_header_match_to(h) for h in r.headers],
                        query_params=[_header_match_to(h) for h in r.query_params])
    if r.path is not None:
        _string_match_to(r.path, msg.path)
    if r.method is not None:
        msg.method = r.method
    return msg


def _route_match_from(m: pb.RouteMatch, what: str) -> model.RouteMatch:
    return model.RouteMatch(
        path=_string_match_from(m.path, f"{what}: path") if m.HasField("path") else None,
        method=_opt(m, "method"),
        headers=tuple(_header_match_from(h, what) for h in m.headers),
        query_params=tuple(_header_match_from(h, what) for h in m.query_params))


def _destination_to(d: model.Destination, target=None) -> pb.Destination:
    msg = target if target is not None else pb.Destination()
    msg.host, msg.subset_name, msg.weight = d.host, d.subset_name, d.weight
    msg.subset.update(dict(d.subset))
    if d.port is not None:
        msg.port = d.port
    return msg


def _destination_from(m: pb.Destination) -> model.Destination:
    return model.Destination(m.host, _opt(m, "port"), _labels(m.subset), m.subset_name, m.weight)


def _header_changes_to(h: model.HeaderChanges, target) -> None:
    target.set.extend(pb.KeyValue(key=k, value=v) for k, v in h.set)
    target.add.extend(pb.KeyValue(key=k, value=v) for k, v in h.add)
    target.remove.extend(h.remove)


def _header_changes_from(m: pb.HeaderChanges) -> model.HeaderChanges:
    return model.HeaderChanges(tuple((kv.key, kv.value) for kv in m.set),
                               tuple((kv.key, kv.value) for kv in m.add), tuple(m.remove))


def _route_to(r: model.Route) -> pb.Route:
    msg = pb.Route(name=r.name, matches=[_route_match_to(m) for m in r.matches],
                   destinations=[_destination_to(d) for d in r.destinations])
    if r.timeout is not None:
        msg.timeout = r.timeout
    if r.retry is not None:
        msg.retry.attempts = r.retry.attempts
        msg.retry.retry_on.extend(r.retry.retry_on)
        if r.retry.per_try_timeout is not None:
            msg.retry.per_try_timeout = r.retry.per_try_timeout
        if r.retry.backoff is not None:
            msg.retry.backoff = r.retry.backoff
    for mirror in r.mirrors:
        _destination_to(mirror.destination, msg.mirrors.add(percentage=mirror.percentage).destination)
    if r.fault is not None:
        msg.fault.delay_percentage = r.fault.delay_percentage
        msg.fault.abort_percentage = r.fault.abort_percentage
        if r.fault.delay is not None:
            msg.fault.delay = r.fault.delay
        if r.fault.abort_status is not None:
            msg.fault.abort_status = r.fault.abort_status
    _header_changes_to(r.request_headers, msg.request_headers)
    _header_changes_to(r.response_headers, msg.response_headers)
    return msg


def _route_from(m: pb.Route, what: str) -> model.Route:
    retry = None
    if m.HasField("retry"):
        retry = model.RetryPolicy(m.retry.attempts, _opt(m.retry, "per_try_timeout"), tuple(m.retry.retry_on),
                                  _opt(m.retry, "backoff"))
    fault = None
    if m.HasField("fault"):
        fault = model.Fault(_opt(m.fault, "delay"), m.fault.delay_percentage, _opt(m.fault, "abort_status"),
                            m.fault.abort_percentage)
    return model.Route(
        name=m.name, matches=tuple(_route_match_from(x, f"{what} route {m.name!r}") for x in m.matches),
        destinations=tuple(_destination_from(d) for d in m.destinations), timeout=_opt(m, "timeout"),
        retry=retry, mirrors=tuple(model.Mirror(_destination_from(x.destination), x.percentage) for x in m.mirrors),
        fault=fault, request_headers=_header_changes_from(m.request_headers),
        response_headers=_header_changes_from(m.response_headers))


def route_table_to(t: model.RouteTable) -> pb.RouteTable:
    return pb.RouteTable(hostname=t.hostname, port=t.port, namespace=t.namespace,
                         routes=[_route_to(r) for r in t.routes], origin=t.origin, gateway=t.gateway)


def route_table_from(m: pb.RouteTable) -> model.RouteTable:
    what = f"RouteTable {m.hostname}:{m.port}"
    return model.RouteTable(m.hostname, m.port, m.namespace, tuple(_route_from(r, what) for r in m.routes),
                            m.origin, m.gateway)


def tls_credential_to(t: model.TlsCredential) -> pb.TlsCredential:
    return pb.TlsCredential(gateway=t.gateway, port=t.port, secret=t.secret, hosts=t.hosts, chain_pem=t.chain_pem,
                            key_pem=t.key_pem)


def tls_credential_from(m: pb.TlsCredential) -> model.TlsCredential:
    return model.TlsCredential(m.gateway, m.port, m.secret, tuple(m.hosts), bytes(m.chain_pem), bytes(m.key_pem))


# -- dispatch ----------------------------------------------------------------------------

# ResourceType -> (Resource oneof field, to_proto, from_proto)
_TYPES: dict[ResourceType, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    ResourceType.WORKLOAD: ("workload", workload_to, workload_from),
    ResourceType.SERVICE: ("service", service_to, service_from),
    ResourceType.WAYPOINT: ("waypoint", waypoint_to, waypoint_from),
    ResourceType.AUTHORIZATION: ("authorization", authorization_to, authorization_from),
    ResourceType.PEER_AUTHENTICATION: ("peer_authentication", peer_authentication_to, peer_authentication_from),
    ResourceType.ROUTE_TABLE: ("route_table", route_table_to, route_table_from),
    ResourceType.TLS_CREDENTIAL: ("tls_credential", tls_credential_to, tls_credential_from),
}
_BY_FIELD = {field: t for t, (field, _, _) in _TYPES.items()}


def type_of(resource: Any) -> ResourceType:
    try:
        return ResourceType(type(resource).__name__)
    except ValueError:
        raise ConversionError(f"{type(resource).__name__} is not a top-level model resource") from None


def to_proto(resource: Any):
    return _TYPES[type_of(resource)][1](resource)


def from_proto(message: Any) -> Any:
    rtype = ResourceType(type(message).__name__)
    return _TYPES[rtype][2](message)


def version_of(message: Any) -> str:
    """A content digest: two resources with equal messages get the same version."""
    return hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=8).hexdigest()


def resource_message(resource: Any) -> config_pb2.Resource:
    field, to, _ = _TYPES[type_of(resource)]
    body = to(resource)
    envelope = config_pb2.Resource(key=resource.key, version=version_of(body))
    getattr(envelope, field).CopyFrom(body)
    return envelope


def from_resource(envelope: config_pb2.Resource) -> tuple[ResourceType, Any]:
    field = envelope.WhichOneof("body")
    if field is None:
        raise ConversionError(f"resource {envelope.key!r} has no body")
    rtype = _BY_FIELD[field]
    try:
        resource = _TYPES[rtype][2](getattr(envelope, field))
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{rtype} {envelope.key!r}: {e}") from None
    if resource.key != envelope.key:
        raise ConversionError(f"{rtype} {envelope.key!r}: its content has key {resource.key!r}")
    return rtype, resource
