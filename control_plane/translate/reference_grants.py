"""Gateway API ReferenceGrants: may an object in one namespace name an object in another?

A Gateway's `certificateRefs` to a Secret, or an HTTPRoute's `backendRefs` to
a Service, in another namespace is allowed exactly when a ReferenceGrant
(gateway.networking.k8s.io v1beta1, or v1) in the *target's* namespace lists

    from: [{group: gateway.networking.k8s.io, kind: Gateway|HTTPRoute, namespace: <the referrer's>}]
    to:   [{group: "", kind: Secret|Service, name: <optional: only that one>}]

(the Gateway API spec: the owner of the target namespace consents). A
reference within one namespace needs no grant. Everything else is refused:
a grant that is malformed grants nothing (fail closed).

Pure: `Grant`s from objects, `permits(grants, ...)` to ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

GROUP = "gateway.networking.k8s.io"
KIND = "ReferenceGrant"
VERSIONS = ("v1", "v1beta1")
CORE_GROUP = ""


@dataclass(frozen=True)
class Peer:
    group: str
    kind: str
    namespace: str = ""       # a `from` entry's namespace
    name: str = ""            # a `to` entry's name; "" is any


@dataclass(frozen=True)
class Grant:
    namespace: str                 # where it stands: the targets' namespace
    name: str
    sources: tuple[Peer, ...]      # spec.from
    targets: tuple[Peer, ...]      # spec.to


def is_reference_grant(obj: dict) -> bool:
    api_version = str(obj.get("apiVersion") or "")
    return (obj.get("kind") == KIND and api_version.rpartition("/")[0] == GROUP
            and api_version.rpartition("/")[2] in VERSIONS)


def _group(value) -> str:
    return "" if value in (None, "", "core") else str(value)


def grant_of(obj: dict) -> Grant | None:
    """The grant an object makes; None when it is not a well-formed ReferenceGrant (which grants nothing)."""
    if not is_reference_grant(obj):
        return None
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not isinstance(meta, dict) or not meta.get("name"):
        return None
    sources, targets = [], []
    for raw in spec.get("from") or ():
        if not isinstance(raw, dict) or not raw.get("kind") or not raw.get("namespace"):
            return None          # the spec requires group, kind and namespace of each
        sources.append(Peer(_group(raw.get("group")), str(raw["kind"]), namespace=str(raw["namespace"])))
    for raw in spec.get("to") or ():
        if not isinstance(raw, dict) or not raw.get("kind"):
            return None
        targets.append(Peer(_group(raw.get("group")), str(raw["kind"]), name=str(raw.get("name") or "")))
    return Grant(str(meta.get("namespace") or "default"), str(meta["name"]), tuple(sources), tuple(targets))


def grants_of(objects: Iterable[dict]) -> tuple[Grant, ...]:
    return tuple(g for g in (grant_of(o) for o in objects if isinstance(o, dict)) if g is not None)


def permits(grants: Iterable[Grant], from_kind: str, from_namespace: str, to_kind: str, to_namespace: str,
            to_name: str, *, from_group: str = GROUP, to_group: str = CORE_GROUP) -> bool:
    """May a `from_kind` in `from_namespace` name the `to_kind` `to_namespace/to_name`?"""
    if from_namespace == to_namespace:
        return True
    source = Peer(from_group, from_kind, namespace=from_namespace)
    for grant in grants:
        if grant.namespace != to_namespace or source not in grant.sources:
            continue
        if any(t.group == to_group and t.kind == to_kind and t.name in ("", to_name) for t in grant.targets):
            return True
    return False
