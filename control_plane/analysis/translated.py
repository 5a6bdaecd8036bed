"""The translator's own findings, as analysis Findings: errors refuse an object, warnings are sorted by kind.

The translator writes each problem as `Kind ns/name: field.path: reason`;
route warnings carry fixed words (`precedence.SUBSET_UNDEFINED`,
`precedence.TAKES_PRECEDENCE`) that say which problem it is. A missing
waypoint is left to `checks.missing_waypoints`, which names the object that
carries the label rather than every pod it governs.
"""

from __future__ import annotations

import re

from control_plane.analysis.findings import (
    IGNORED_SETTING, INVALID_OBJECT, REF_NOT_PERMITTED, ROUTE_SHADOWED, UNDEFINED_SUBSET, Code, Finding,
)
from shoal.local import keys

from control_plane.translate import Findings, ObjectKey
from control_plane.translate.precedence import SUBSET_UNDEFINED, TAKES_PRECEDENCE

FIELD_PATH = re.compile(r"[A-Za-z][\w.\-/]*(\[[^\]]*\][\w.\-/]*)*")
MISSING_WAYPOINT_WORDS = "use-waypoint names waypoint"

ACTIONS = {
    INVALID_OBJECT: "correct the field and apply again; until then the object has no effect",
    IGNORED_SETTING: "remove the setting, or accept that shoal does not act on it",
    UNDEFINED_SUBSET: "define the subset in a DestinationRule for that host, or route to a subset that exists",
    ROUTE_SHADOWED: "delete one of the objects, or move their routes into the one that takes precedence",
    REF_NOT_PERMITTED: "create a gateway.networking.k8s.io ReferenceGrant in the target's namespace that allows "
                       "it (from: the referring kind and namespace; to: the target's kind and name), or move the "
                       "target into the referring object's namespace",
}
REF_NOT_PERMITTED_WORDS = "RefNotPermitted"     # ingress and translator messages about refs a grant lacks


def split(key: ObjectKey, text: str) -> tuple[str, str]:
    """(field path, reason) of one translator message about the object `key`."""
    kind, namespace, name = key
    for prefix in (f"{kind} {namespace}/{name}: ", f"{kind} {name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    else:
        # a merged HTTPRoute origin ("HTTPRoute a/x, HTTPRoute a/y: ..."): drop everything up to the field
        head, sep, rest = text.partition(": ")
        if sep and " " in head:
            text = rest
    path, sep, reason = text.partition(": ")
    if sep and FIELD_PATH.fullmatch(path):
        return path, reason
    return "", text


def _mesh_key_of(path: str) -> str | None:
    """The mesh label or annotation key a field path names (`metadata.labels.shoal.io/dataplane-mode`)."""
    for place in ("metadata.labels.", "metadata.annotations."):
        if path.startswith(place) and path[len(place):] in keys.MESH_KEYS:
            return path[len(place):]
    return None


def classify(text: str) -> Code | None:
    if SUBSET_UNDEFINED in text:
        return UNDEFINED_SUBSET
    if TAKES_PRECEDENCE in text:
        return ROUTE_SHADOWED
    if REF_NOT_PERMITTED_WORDS in text:
        return REF_NOT_PERMITTED
    if MISSING_WAYPOINT_WORDS in text:
        return None
    return IGNORED_SETTING


def from_translator(problems: dict[ObjectKey, Findings]) -> list[Finding]:
    out = []
    for key, found in problems.items():
        kind, namespace, name = key
        for text in found.errors:
            path, reason = split(key, text)
            if _mesh_key_of(path) is not None:
                continue  # checks.unknown_mesh_values names it, with the values to choose from
            out.append(Finding(kind, namespace, name, path, INVALID_OBJECT, reason, ACTIONS[INVALID_OBJECT]))
        for text in found.warnings:
            code = classify(text)
            if code is None:
                continue
            path, reason = split(key, text)
            out.append(Finding(kind, namespace, name, path, code, reason, ACTIONS[code]))
    return out
