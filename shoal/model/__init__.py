"""shoal's domain model: what the mesh knows, as frozen dataclasses.

Every proxy and the control plane speak these types. Kubernetes objects are
turned into them by `control_plane.translate`; protobuf messages are turned
into them at the edge of each proxy. Nothing else travels inside a process.

All types are frozen, slotted and hashable: collections are tuples, label
sets are sorted tuples of pairs (`Labels`). Each top-level resource has a
`key` (a string, unique within its resource type) so that stores and the
Watch stream can index and diff them:

| resource           | key                          |
|--------------------|------------------------------|
| Workload           | uid                          |
| Service            | hostname                     |
| Waypoint           | "namespace/name"             |
| Authorization      | "namespace/name"             |
| PeerAuthentication | "namespace/name"             |
| RouteTable         | "hostname:port" (an ingress gateway's: "gateway@hostname:port") |
| TlsCredential      | "gateway@port/secret"        |

`Snapshot` holds one of each map and `diff()` tells what changed between two.
"""

from shoal.model.addresses import canonical_ip, canonical_ips, join_address, join_host_port
from shoal.model.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, parse_spiffe_id, spiffe_id
from shoal.model.labels import Labels, freeze_labels, labels_dict, selector_matches
from shoal.model.policy import (
    Action,
    Authorization,
    Operation,
    PeerAuthentication,
    PeerAuthMode,
    PolicyScope,
    Rule,
    Source,
    TargetRef,
)
from shoal.model.routes import (
    ANY_PORT,
    Destination,
    Fault,
    HeaderChanges,
    HeaderMatch,
    MatchKind,
    Mirror,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteTable,
    StringMatch,
)
from shoal.model.snapshot import Delta, ResourceType, Snapshot, diff
from shoal.model.tls import TlsCredential
from shoal.model.workloads import (
    Endpoint,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    Waypoint,
    WaypointRef,
    Workload,
    service_hostname,
)

__all__ = [
    "ANY_PORT", "Action", "Authorization", "DEFAULT_TRUST_DOMAIN", "Delta", "Destination", "Endpoint",
    "Fault", "HeaderChanges", "HeaderMatch", "Labels", "MatchKind", "Mirror", "Operation",
    "PeerAuthMode", "PeerAuthentication", "PolicyScope", "Protocol", "Resolution", "ResourceType", "RetryPolicy",
    "Route", "RouteMatch", "RouteTable", "Rule", "Service", "ServicePort", "Snapshot", "Source",
    "SpiffeId", "StringMatch", "TargetRef", "TlsCredential", "Waypoint", "WaypointRef", "Workload", "diff",
    "freeze_labels", "labels_dict", "parse_spiffe_id", "selector_matches", "service_hostname",
    "spiffe_id", "canonical_ip", "canonical_ips", "join_address", "join_host_port",
]
