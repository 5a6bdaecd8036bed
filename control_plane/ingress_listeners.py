"""The `status.listeners` of an ingress Gateway (class `shoal`), as the Gateway API spec asks for them.

For each listener: its name, the route kinds it takes (HTTPRoute), how many
HTTPRoutes attach to it, and its conditions:
- Accepted: True, or False (UnsupportedProtocol) for a protocol other than
  HTTP and HTTPS (the translator refuses such a Gateway whole);
- ResolvedRefs: False with reason RefNotPermitted while its certificateRef
  names a Secret in another namespace that no ReferenceGrant there allows
  (the translator then serves no certificate and opens no port for it),
  InvalidCertificateRef for a ref that is not a Secret, else True.

Pure, shared by both waypoint controllers (local store and Kubernetes): they
pass the Gateway, the ReferenceGrants and HTTPRoutes they see, and write the
result beside `control_plane.waypoints.ingress_status`'s conditions.
"""

from __future__ import annotations

from typing import Iterable

from control_plane.translate.reference_grants import GROUP, grants_of, permits
from control_plane.conditions import condition

PROTOCOLS = ("HTTP", "HTTPS")


def _attached(routes: Iterable[dict], namespace: str, name: str, listener: dict) -> int:
    count = 0
    for route in routes:
        if route.get("kind") != "HTTPRoute":
            continue
        own = str((route.get("metadata") or {}).get("namespace") or "default")
        for ref in (route.get("spec") or {}).get("parentRefs") or ():
            if not isinstance(ref, dict) or ref.get("kind", "Gateway") != "Gateway" \
                    or ref.get("group", GROUP) != GROUP:
                continue
            if (str(ref.get("namespace") or own), str(ref.get("name"))) != (namespace, name):
                continue
            if ref.get("sectionName") not in (None, listener.get("name")) or \
                    ref.get("port") not in (None, listener.get("port")):
                continue
            count += 1
            break
    return count


def _refs(listener: dict, namespace: str, grants) -> tuple[bool, str, str]:
    """(resolved, reason, message) of a listener's certificateRefs."""
    if listener.get("protocol") != "HTTPS":
        return True, "ResolvedRefs", "no references to resolve"
    tls = listener.get("tls") if isinstance(listener.get("tls"), dict) else {}
    for ref in tls.get("certificateRefs") or ():
        if not isinstance(ref, dict) or str(ref.get("kind") or "Secret") != "Secret" \
                or str(ref.get("group") or "") not in ("", "core"):
            return False, "InvalidCertificateRef", "a certificateRef must name a Secret (group \"\", kind Secret)"
        where, secret = str(ref.get("namespace") or namespace), str(ref.get("name") or "")
        if not permits(grants, "Gateway", namespace, "Secret", where, secret):
            return False, "RefNotPermitted", (f"Secret {where}/{secret} is in another namespace and no "
                                              f"ReferenceGrant in {where} allows Gateways of {namespace} to use it")
    return True, "ResolvedRefs", "every certificateRef is permitted"


def listener_statuses(gateway: dict, grants: Iterable[dict], routes: Iterable[dict], now: str) -> list[dict]:
    """`status.listeners` for the Gateway; a condition keeps its lastTransitionTime while its status holds."""
    meta = gateway.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
    generation = meta.get("generation")
    allowed = grants_of(grants)
    routes = list(routes)
    before = {str(l.get("name")): l for l in (gateway.get("status") or {}).get("listeners") or ()
              if isinstance(l, dict)}
    out = []
    for listener in (gateway.get("spec") or {}).get("listeners") or ():
        if not isinstance(listener, dict):
            continue
        previous = {c.get("type"): c for c in (before.get(str(listener.get("name"))) or {}).get("conditions") or ()}
        supported = listener.get("protocol") in PROTOCOLS
        accepted = (condition(previous, "Accepted", True, "Accepted", "served by the mesh's ingress gateway",
                               generation, now) if supported else
                    condition(previous, "Accepted", False, "UnsupportedProtocol",
                               f"protocol {listener.get('protocol')!r}: shoal serves HTTP and HTTPS", generation, now))
        resolved = condition(previous, "ResolvedRefs", *_refs(listener, namespace, allowed), generation, now)
        out.append({"name": listener.get("name"),
                    "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}] if supported else [],
                    "attachedRoutes": _attached(routes, namespace, name, listener) if supported else 0,
                    "conditions": [accepted, resolved]})
    return out
