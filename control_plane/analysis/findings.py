"""What the analysis finds: one frozen `Finding` per problem, with a code, the object, the field and what to do.

Codes are stable (scripts and docs may name them); each has one severity:
- `error`: the object, or traffic it governs, does not work as written;
- `warning`: it works, but not as the operator most likely meant.

Pre-flight checks use SH00xx, config analysis SH01xx, health SH02xx.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Code:
    code: str
    name: str
    severity: Severity


INVALID_OBJECT = Code("SH0101", "InvalidObject", Severity.ERROR)
IGNORED_SETTING = Code("SH0102", "IgnoredSetting", Severity.WARNING)
UNDEFINED_SUBSET = Code("SH0103", "UndefinedSubset", Severity.ERROR)
HOST_NOT_FOUND = Code("SH0104", "HostNotFound", Severity.WARNING)
ROUTE_SHADOWED = Code("SH0105", "RouteShadowed", Severity.WARNING)
STRICT_WITH_UNENROLLED_CLIENTS = Code("SH0106", "StrictWithUnenrolledClients", Severity.WARNING)
WAYPOINT_NOT_FOUND = Code("SH0107", "WaypointNotFound", Severity.ERROR)
POLICY_SELECTS_NOTHING = Code("SH0108", "PolicySelectsNothing", Severity.WARNING)
UNKNOWN_MESH_VALUE = Code("SH0109", "UnknownMeshValue", Severity.ERROR)
REF_NOT_PERMITTED = Code("SH0110", "RefNotPermitted", Severity.ERROR)    # Gateway API's reason, as it names it

ANALYSIS_CODES = (INVALID_OBJECT, IGNORED_SETTING, UNDEFINED_SUBSET, HOST_NOT_FOUND, ROUTE_SHADOWED,
                  STRICT_WITH_UNENROLLED_CLIENTS, WAYPOINT_NOT_FOUND, POLICY_SELECTS_NOTHING, UNKNOWN_MESH_VALUE,
                  REF_NOT_PERMITTED)


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: `field` is a path in the object (`spec.http[0].route[1].destination.subset`), or ""
    when the problem is the object as a whole; `action` says what to do about it."""
    kind: str
    namespace: str          # "" for cluster-scoped objects
    name: str
    field: str
    code: Code
    message: str
    action: str

    @property
    def severity(self) -> Severity:
        return self.code.severity

    @property
    def object(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def line(self) -> str:
        """One line for a terminal: `Warning [SH0103] VirtualService ns/x spec...: message; action`."""
        where = f"{self.object} {self.field}" if self.field else self.object
        return f"{self.severity.capitalize()} [{self.code.code}] {where}: {self.message}; {self.action}"

    def to_json(self) -> dict:
        out = asdict(self)
        out["code"] = self.code.code
        out["reason"] = self.code.name
        out["severity"] = str(self.severity)
        out["object"] = self.object
        return out
