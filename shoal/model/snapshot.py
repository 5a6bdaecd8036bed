"""A whole mesh configuration at one moment, and the difference between two.

`Snapshot` maps each ResourceType to {key: resource}. It is immutable in
practice (read-only mappings). `diff(old, new)` gives, per type, the keys
added or changed (with their new values) and the keys removed: what an
incremental push must send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Iterable, Mapping


class ResourceType(StrEnum):
    WORKLOAD = "Workload"
    SERVICE = "Service"
    WAYPOINT = "Waypoint"
    AUTHORIZATION = "Authorization"
    PEER_AUTHENTICATION = "PeerAuthentication"
    ROUTE_TABLE = "RouteTable"
    TLS_CREDENTIAL = "TlsCredential"


def _type_of(resource: Any) -> ResourceType:
    return ResourceType(type(resource).__name__)


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[ResourceType, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, items: Iterable[Any]) -> "Snapshot":
        """Build from model objects of any resource type (each needs `.key`)."""
        maps: dict[ResourceType, dict[str, Any]] = {t: {} for t in ResourceType}
        for item in items:
            maps[_type_of(item)][item.key] = item
        return cls({t: MappingProxyType(m) for t, m in maps.items()})

    def __getitem__(self, resource_type: ResourceType) -> Mapping[str, Any]:
        return self.resources.get(resource_type, MappingProxyType({}))

    def all(self) -> Iterable[Any]:
        for mapping in self.resources.values():
            yield from mapping.values()

    def __len__(self) -> int:
        return sum(len(m) for m in self.resources.values())


@dataclass(frozen=True)
class Delta:
    """What changed: upserted[type][key] = new value; removed[type] = keys gone."""
    upserted: Mapping[ResourceType, Mapping[str, Any]]
    removed: Mapping[ResourceType, frozenset[str]]

    def __bool__(self) -> bool:
        return any(self.upserted.values()) or any(self.removed.values())


def diff(old: Snapshot, new: Snapshot) -> Delta:
    upserted: dict[ResourceType, dict[str, Any]] = {}
    removed: dict[ResourceType, frozenset[str]] = {}
    for t in ResourceType:
        before, after = old[t], new[t]
        upserted[t] = {k: v for k, v in after.items() if before.get(k) != v}
        removed[t] = frozenset(k for k in before if k not in after)
    return Delta(upserted, removed)
