"""A mesh object's `status`, from its findings, as Istio and Gateway API objects carry theirs.

    status:
      conditions:
      - {type: Accepted, status: "True", reason: Accepted, observedGeneration: 3, message: ...}
      - {type: ResolvedRefs, status: "False", reason: UndefinedSubset, message: ...}
      validationMessages:
      - {code: SH0103, reason: UndefinedSubset, level: error, field: ..., message: ...}

Accepted is False when the object is refused (it contributes nothing);
ResolvedRefs is False when it names something that does not exist. Other
keys of an existing status (another writer's) are kept.
"""

from __future__ import annotations

from typing import Iterable

from control_plane.analysis.findings import (
    HOST_NOT_FOUND, INVALID_OBJECT, POLICY_SELECTS_NOTHING, UNDEFINED_SUBSET, WAYPOINT_NOT_FOUND, Finding,
)

UNRESOLVED = (UNDEFINED_SUBSET, HOST_NOT_FOUND, WAYPOINT_NOT_FOUND, POLICY_SELECTS_NOTHING)


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "observedGeneration": generation}


def status_of(obj: dict, findings: Iterable[Finding]) -> dict:
    """The status `obj` should carry, given the findings about it."""
    findings = list(findings)
    generation = int(((obj.get("metadata") or {}).get("generation")) or 0)
    invalid = [f for f in findings if f.code == INVALID_OBJECT]
    unresolved = [f for f in findings if f.code in UNRESOLVED]
    accepted = (_condition("Accepted", False, "Invalid", "; ".join(f.line() for f in invalid), generation)
                if invalid else _condition("Accepted", True, "Accepted", "the mesh applies this object", generation))
    resolved = (_condition("ResolvedRefs", False, unresolved[0].code.name,
                           "; ".join(f.line() for f in unresolved), generation)
                if unresolved else _condition("ResolvedRefs", True, "ResolvedRefs",
                                              "everything it names exists", generation))
    status = {k: v for k, v in (obj.get("status") or {}).items() if k not in ("conditions", "validationMessages")}
    status["conditions"] = [accepted, resolved]
    if findings:
        status["validationMessages"] = [
            {"code": f.code.code, "reason": f.code.name, "level": str(f.severity), "field": f.field,
             "message": f.message, "action": f.action} for f in findings]
    return status
