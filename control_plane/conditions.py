"""Gateway API status conditions, as the controllers of this package write them."""

from __future__ import annotations


def condition(previous: dict, type_: str, ok: bool, reason: str, message: str, generation, now: str) -> dict:
    """A condition; its lastTransitionTime is kept while its status stays the same (no rewrite churn)."""
    old = previous.get(type_) or {}
    status = "True" if ok else "False"
    since = old.get("lastTransitionTime") if old.get("status") == status and old.get("lastTransitionTime") else now
    out = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        out["observedGeneration"] = generation
    return out
