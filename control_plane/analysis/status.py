"""A mesh object's `status`, from its findings, as Istio and Gateway API objects carry theirs.

    status:
      conditions:
      - {type: Accepted, status: "True", reason: Accepted, observedGeneration: 3, message: ...}
      - {type: ResolvedRefs, status: "False", reason: UndefinedSubset, message: ...}
      validationMessages:
      - {code: SH0103, reason: UndefinedSubset, level: error, field: ..., message: ...}

Accepted is False when the object is refused (it contributes nothing);
ResolvedRefs is False when it names something that does not exist. Another
writer's conditions and keys are kept: a Gateway's Accepted and Programmed
belong to its controller (the waypoint controller), so on a Gateway the
analysis writes ResolvedRefs and validationMessages only.
"""

from __future__ import annotations

from typing import Iterable

from control_plane.analysis.findings import (
    HOST_NOT_FOUND, INVALID_OBJECT, POLICY_SELECTS_NOTHING, REF_NOT_PERMITTED, UNDEFINED_SUBSET, WAYPOINT_NOT_FOUND,
    Finding,
)

CONTROLLED_KINDS = ("Gateway",)   # kinds whose controller owns Accepted
UNRESOLVED = (UNDEFINED_SUBSET, HOST_NOT_FOUND, WAYPOINT_NOT_FOUND, POLICY_SELECTS_NOTHING, REF_NOT_PERMITTED)


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
    mine = [resolved] if obj.get("kind") in CONTROLLED_KINDS else [accepted, resolved]
    status = {k: v for k, v in (obj.get("status") or {}).items() if k != "validationMessages"}
    by_type = {c["type"]: c for c in mine}
    kept = [by_type.pop(c.get("type"), c) for c in status.get("conditions") or ()]   # in place, in their order
    status["conditions"] = kept + list(by_type.values())
    if findings:
        status["validationMessages"] = [
            {"code": f.code.code, "reason": f.code.name, "level": str(f.severity), "field": f.field,
             "message": f.message, "action": f.action} for f in findings]
    return status
