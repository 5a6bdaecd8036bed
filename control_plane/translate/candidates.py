"""Route tables as the dialects propose them, before precedence and subset resolution.

Each routing dialect (HTTPRoute, VirtualService, TrafficSplit) turns one object
into `RouteCandidate`s. The translator then picks one candidate per
(host, port) (see `precedence`), resolves DestinationRule subsets and emits
`RouteTable`s. Destinations in a candidate carry only the subset *name*.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from shoal.model import Route, WaypointRef


class Dialect(IntEnum):
    """Lower wins: the documented precedence between dialects (see `precedence`)."""
    HTTPROUTE = 0
    VIRTUALSERVICE = 1
    TRAFFICSPLIT = 2


@dataclass(frozen=True)
class RouteCandidate:
    host: str | None                 # a service FQDN, or None when attached to a waypoint (see below)
    port: int                        # a port, or ANY_PORT (every port of the service)
    routes: tuple[Route, ...]
    namespace: str                   # the routing object's namespace (DestinationRule lookup)
    origin: str                      # "HTTPRoute ns/name", for messages and config dumps
    dialect: Dialect
    created: str                     # creationTimestamp: older wins within a dialect
    path: str = "spec"               # the field that made it, for messages
    waypoint: WaypointRef | None = None   # HTTPRoute parentRef to a Gateway: kept only if it is a known
                                          # waypoint; with host None the routes apply to every Service
                                          # bound to that waypoint

    section: str = ""                     # HTTPRoute parentRef sectionName: a Service port *name*
    order: tuple[tuple, ...] = ()         # HTTPRoute only: each route's Gateway API precedence key
                                          # (specificity, rule index, match index); see gateway_api
    subset_fields: tuple[tuple[str, str, str], ...] = ()
                                          # VirtualService only: (host, subset name, field path) of each
                                          # destination that names a subset, so a warning names that field

    @property
    def rank(self) -> tuple:
        return (int(self.dialect), self.created or "~", self.origin)
