from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TCP: _ClassVar[Protocol]
    HBONE: _ClassVar[Protocol]

class PolicyScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESH: _ClassVar[PolicyScope]
    NAMESPACE: _ClassVar[PolicyScope]
    WORKLOAD: _ClassVar[PolicyScope]
    TARGETS: _ClassVar[PolicyScope]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOW: _ClassVar[Action]
    DENY: _ClassVar[Action]

class PeerAuthMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNSET: _ClassVar[PeerAuthMode]
    STRICT: _ClassVar[PeerAuthMode]
    PERMISSIVE: _ClassVar[PeerAuthMode]
    DISABLE: _ClassVar[PeerAuthMode]

class MatchKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXACT: _ClassVar[MatchKind]
    PREFIX: _ClassVar[MatchKind]
    REGEX: _ClassVar[MatchKind]
    PRESENT: _ClassVar[MatchKind]
TCP: Protocol
HBONE: Protocol
MESH: PolicyScope
NAMESPACE: PolicyScope
WORKLOAD: PolicyScope
TARGETS: PolicyScope
ALLOW: Action
DENY: Action
UNSET: PeerAuthMode
STRICT: PeerAuthMode
PERMISSIVE: PeerAuthMode
DISABLE: PeerAuthMode
EXACT: MatchKind
PREFIX: MatchKind
REGEX: MatchKind
PRESENT: MatchKind

class WaypointRef(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("uid", "name", "namespace", "service_account", "node", "ips", "labels", "canonical_service", "canonical_revision", "waypoint", "protocol", "workload_name", "hostname")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_SERVICE_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_REVISION_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    uid: str
    name: str
    namespace: str
    service_account: str
    node: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    canonical_service: str
    canonical_revision: str
    waypoint: WaypointRef
    protocol: Protocol
    workload_name: str
    hostname: str
    def __init__(self, uid: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., node: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., canonical_service: _Optional[str] = ..., canonical_revision: _Optional[str] = ..., waypoint: _Optional[_Union[WaypointRef, _Mapping]] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., workload_name: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("port", "name", "protocol", "app_protocol")
    PORT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    APP_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    port: int
    name: str
    protocol: str
    app_protocol: str
    def __init__(self, port: _Optional[int] = ..., name: _Optional[str] = ..., protocol: _Optional[str] = ..., app_protocol: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("workload_uid", "service_port", "target_port")
    WORKLOAD_UID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    workload_uid: str
    service_port: int
    target_port: int
    def __init__(self, workload_uid: _Optional[str] = ..., service_port: _Optional[int] = ..., target_port: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "namespace", "hostname", "vips", "ports", "endpoints", "waypoint", "labels", "source_kind", "resolution")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VIPS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KIND_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    hostname: str
    vips: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    waypoint: WaypointRef
    labels: _containers.ScalarMap[str, str]
    source_kind: str
    resolution: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., hostname: _Optional[str] = ..., vips: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., waypoint: _Optional[_Union[WaypointRef, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., source_kind: _Optional[str] = ..., resolution: _Optional[str] = ...) -> None: ...

class Waypoint(_message.Message):
    __slots__ = ("name", "namespace", "service_account", "traffic_type", "ports")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_TYPE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    service_account: str
    traffic_type: str
    ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., traffic_type: _Optional[str] = ..., ports: _Optional[_Iterable[int]] = ...) -> None: ...

class TargetRef(_message.Message):
    __slots__ = ("kind", "name", "namespace", "group")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    namespace: str
    group: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("principals", "not_principals", "namespaces", "not_namespaces", "ip_blocks", "not_ip_blocks")
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NOT_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NOT_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    IP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NOT_IP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedScalarFieldContainer[str]
    not_principals: _containers.RepeatedScalarFieldContainer[str]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    not_namespaces: _containers.RepeatedScalarFieldContainer[str]
    ip_blocks: _containers.RepeatedScalarFieldContainer[str]
    not_ip_blocks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principals: _Optional[_Iterable[str]] = ..., not_principals: _Optional[_Iterable[str]] = ..., namespaces: _Optional[_Iterable[str]] = ..., not_namespaces: _Optional[_Iterable[str]] = ..., ip_blocks: _Optional[_Iterable[str]] = ..., not_ip_blocks: _Optional[_Iterable[str]] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("ports", "not_ports", "methods", "not_methods", "paths", "not_paths", "hosts", "not_hosts")
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NOT_PORTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    NOT_METHODS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    NOT_PATHS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NOT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedScalarFieldContainer[int]
    not_ports: _containers.RepeatedScalarFieldContainer[int]
    methods: _containers.RepeatedScalarFieldContainer[str]
    not_methods: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    not_paths: _containers.RepeatedScalarFieldContainer[str]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    not_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ports: _Optional[_Iterable[int]] = ..., not_ports: _Optional[_Iterable[int]] = ..., methods: _Optional[_Iterable[str]] = ..., not_methods: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ..., not_paths: _Optional[_Iterable[str]] = ..., hosts: _Optional[_Iterable[str]] = ..., not_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("sources", "operations")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    def __init__(self, sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ...) -> None: ...

class Authorization(_message.Message):
    __slots__ = ("name", "namespace", "scope", "action", "rules", "selector", "targets")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    scope: PolicyScope
    action: Action
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    selector: _containers.ScalarMap[str, str]
    targets: _containers.RepeatedCompositeFieldContainer[TargetRef]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., scope: _Optional[_Union[PolicyScope, str]] = ..., action: _Optional[_Union[Action, str]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., selector: _Optional[_Mapping[str, str]] = ..., targets: _Optional[_Iterable[_Union[TargetRef, _Mapping]]] = ...) -> None: ...

class PortMode(_message.Message):
    __slots__ = ("port", "mode")
    PORT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    port: int
    mode: PeerAuthMode
    def __init__(self, port: _Optional[int] = ..., mode: _Optional[_Union[PeerAuthMode, str]] = ...) -> None: ...

class PeerAuthentication(_message.Message):
    __slots__ = ("name", "namespace", "scope", "mode", "selector", "port_modes")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PORT_MODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    scope: PolicyScope
    mode: PeerAuthMode
    selector: _containers.ScalarMap[str, str]
    port_modes: _containers.RepeatedCompositeFieldContainer[PortMode]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., scope: _Optional[_Union[PolicyScope, str]] = ..., mode: _Optional[_Union[PeerAuthMode, str]] = ..., selector: _Optional[_Mapping[str, str]] = ..., port_modes: _Optional[_Iterable[_Union[PortMode, _Mapping]]] = ...) -> None: ...

class StringMatch(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: MatchKind
    value: str
    def __init__(self, kind: _Optional[_Union[MatchKind, str]] = ..., value: _Optional[str] = ...) -> None: ...

class HeaderMatch(_message.Message):
    __slots__ = ("name", "match", "invert")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: StringMatch
    invert: bool
    def __init__(self, name: _Optional[str] = ..., match: _Optional[_Union[StringMatch, _Mapping]] = ..., invert: _Optional[bool] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("path", "method", "headers", "query_params")
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    path: StringMatch
    method: str
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatch]
    query_params: _containers.RepeatedCompositeFieldContainer[HeaderMatch]
    def __init__(self, path: _Optional[_Union[StringMatch, _Mapping]] = ..., method: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[HeaderMatch, _Mapping]]] = ..., query_params: _Optional[_Iterable[_Union[HeaderMatch, _Mapping]]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("host", "port", "subset", "subset_name", "weight")
    class SubsetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    SUBSET_NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    subset: _containers.ScalarMap[str, str]
    subset_name: str
    weight: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., subset: _Optional[_Mapping[str, str]] = ..., subset_name: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("attempts", "per_try_timeout", "retry_on", "backoff")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PER_TRY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    per_try_timeout: float
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    backoff: float
    def __init__(self, attempts: _Optional[int] = ..., per_try_timeout: _Optional[float] = ..., retry_on: _Optional[_Iterable[str]] = ..., backoff: _Optional[float] = ...) -> None: ...

class Mirror(_message.Message):
    __slots__ = ("destination", "percentage")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    percentage: float
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ..., percentage: _Optional[float] = ...) -> None: ...

class Fault(_message.Message):
    __slots__ = ("delay", "delay_percentage", "abort_status", "abort_percentage")
    DELAY_FIELD_NUMBER: _ClassVar[int]
    DELAY_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    ABORT_STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    delay: float
    delay_percentage: float
    abort_status: int
    abort_percentage: float
    def __init__(self, delay: _Optional[float] = ..., delay_percentage: _Optional[float] = ..., abort_status: _Optional[int] = ..., abort_percentage: _Optional[float] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HeaderChanges(_message.Message):
    __slots__ = ("set", "add", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[KeyValue]
    add: _containers.RepeatedCompositeFieldContainer[KeyValue]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., add: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "matches", "destinations", "timeout", "retry", "mirrors", "fault", "request_headers", "response_headers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    MIRRORS_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    matches: _containers.RepeatedCompositeFieldContainer[RouteMatch]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    timeout: float
    retry: RetryPolicy
    mirrors: _containers.RepeatedCompositeFieldContainer[Mirror]
    fault: Fault
    request_headers: HeaderChanges
    response_headers: HeaderChanges
    def __init__(self, name: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[RouteMatch, _Mapping]]] = ..., destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., timeout: _Optional[float] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., mirrors: _Optional[_Iterable[_Union[Mirror, _Mapping]]] = ..., fault: _Optional[_Union[Fault, _Mapping]] = ..., request_headers: _Optional[_Union[HeaderChanges, _Mapping]] = ..., response_headers: _Optional[_Union[HeaderChanges, _Mapping]] = ...) -> None: ...

class TlsCredential(_message.Message):
    __slots__ = ("gateway", "port", "secret", "hosts", "chain_pem", "key_pem")
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    gateway: str
    port: int
    secret: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    chain_pem: bytes
    key_pem: bytes
    def __init__(self, gateway: _Optional[str] = ..., port: _Optional[int] = ..., secret: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., chain_pem: _Optional[bytes] = ..., key_pem: _Optional[bytes] = ...) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("hostname", "port", "namespace", "routes", "origin", "gateway")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    port: int
    namespace: str
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    origin: str
    gateway: str
    def __init__(self, hostname: _Optional[str] = ..., port: _Optional[int] = ..., namespace: _Optional[str] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., origin: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...
