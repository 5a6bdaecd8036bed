from shoal.api import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("subscribe", "ack")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    ack: Ack
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Held(_message.Message):
    __slots__ = ("version", "resources")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    version: str
    resources: _containers.ScalarMap[str, str]
    def __init__(self, version: _Optional[str] = ..., resources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("node", "waypoint", "held")
    class HeldEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Held
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Held, _Mapping]] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    node: str
    waypoint: WaypointScope
    held: _containers.MessageMap[str, Held]
    def __init__(self, node: _Optional[str] = ..., waypoint: _Optional[_Union[WaypointScope, _Mapping]] = ..., held: _Optional[_Mapping[str, Held]] = ...) -> None: ...

class WaypointScope(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("type", "nonce", "error")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    type: str
    nonce: str
    error: str
    def __init__(self, type: _Optional[str] = ..., nonce: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("key", "version", "workload", "service", "waypoint", "authorization", "peer_authentication", "route_table", "tls_credential")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    PEER_AUTHENTICATION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_TABLE_FIELD_NUMBER: _ClassVar[int]
    TLS_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: str
    workload: _resources_pb2.Workload
    service: _resources_pb2.Service
    waypoint: _resources_pb2.Waypoint
    authorization: _resources_pb2.Authorization
    peer_authentication: _resources_pb2.PeerAuthentication
    route_table: _resources_pb2.RouteTable
    tls_credential: _resources_pb2.TlsCredential
    def __init__(self, key: _Optional[str] = ..., version: _Optional[str] = ..., workload: _Optional[_Union[_resources_pb2.Workload, _Mapping]] = ..., service: _Optional[_Union[_resources_pb2.Service, _Mapping]] = ..., waypoint: _Optional[_Union[_resources_pb2.Waypoint, _Mapping]] = ..., authorization: _Optional[_Union[_resources_pb2.Authorization, _Mapping]] = ..., peer_authentication: _Optional[_Union[_resources_pb2.PeerAuthentication, _Mapping]] = ..., route_table: _Optional[_Union[_resources_pb2.RouteTable, _Mapping]] = ..., tls_credential: _Optional[_Union[_resources_pb2.TlsCredential, _Mapping]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("type", "version", "nonce", "resources", "removed", "initial", "replace")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    type: str
    version: str
    nonce: str
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    removed: _containers.RepeatedScalarFieldContainer[str]
    initial: bool
    replace: bool
    def __init__(self, type: _Optional[str] = ..., version: _Optional[str] = ..., nonce: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ..., initial: _Optional[bool] = ..., replace: _Optional[bool] = ...) -> None: ...
