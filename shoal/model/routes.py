"""L7 routing for waypoints: one RouteTable per service host and port.

A waypoint receives the RouteTables of its namespace. For a request to
`hostname:port` it takes the table with that key (or `hostname:0`, ANY_PORT,
when there is none for the exact port), then the first Route whose matches
accept the request (a route with no matches accepts every request). Times
are seconds (float). Percentages are 0..100 (float).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shoal.model.labels import Labels

ANY_PORT = 0


class MatchKind(StrEnum):
    EXACT = "EXACT"
    PREFIX = "PREFIX"      # a plain string prefix (Istio's meaning); Gateway API's element-wise
                           # PathPrefix arrives as REGEX ("/foo" -> "/foo(/.*)?")
    REGEX = "REGEX"        # Python `re.fullmatch` (RE2-compatible patterns are accepted by validation)
    PRESENT = "PRESENT"    # headers only: the header exists, any value


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: MatchKind
    value: str = ""


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str              # lower-case
    match: StringMatch
    invert: bool = False   # VirtualService withoutHeaders


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All set fields must match (AND). The matches of a Route are alternatives (OR)."""
    path: StringMatch | None = None
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Destination:
    host: str                       # service FQDN
    port: int | None = None         # None: the port the request came on
    subset: Labels = ()             # endpoint label filter (a DestinationRule subset's labels)
    subset_name: str = ""           # for logs and metrics only
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int                       # retries after the first try (Istio's `attempts`)
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ()      # e.g. "5xx", "gateway-error", "connect-failure", "reset", "503"
    backoff: float | None = None        # base interval between tries


@dataclass(frozen=True, slots=True)
class Mirror:
    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    delay: float | None = None          # seconds
    delay_percentage: float = 100.0
    abort_status: int | None = None     # HTTP status to answer with
    abort_percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Route:
    name: str = ""
    matches: tuple[RouteMatch, ...] = ()
    destinations: tuple[Destination, ...] = ()
    timeout: float | None = None
    retry: RetryPolicy | None = None
    mirrors: tuple[Mirror, ...] = ()
    fault: Fault | None = None
    request_headers: HeaderChanges = HeaderChanges()
    response_headers: HeaderChanges = HeaderChanges()


@dataclass(frozen=True, slots=True)
class RouteTable:
    hostname: str                   # the service FQDN the routes are for
    port: int                       # a service port, or ANY_PORT (0)
    namespace: str                  # the service's namespace (waypoints get their namespace's tables)
    routes: tuple[Route, ...] = ()
    origin: str = ""                # which object made it, e.g. "HTTPRoute default/reviews" (for humans)
    gateway: str = ""               # "namespace/service-account" of the ingress gateway it is for; "": the mesh's

    @property
    def key(self) -> str:
        """An ingress gateway's tables are keyed apart, so no mesh lookup ever finds one."""
        return f"{self.gateway}@{self.hostname}:{self.port}" if self.gateway else f"{self.hostname}:{self.port}"
