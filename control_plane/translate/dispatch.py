"""Which kinds and API versions shoal reads, and one `parse` for every mesh object.

`parse(obj)` checks the envelope (apiVersion, kind, metadata) and runs the
dialect's parser. It returns the dialect's value and the Findings; the
translator and `validate` both use it, so what `shoal local apply` refuses is
exactly what the translator would skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from shoal.contracts import AMBIENT, DATAPLANE_MODE_KEYS, NONE, USE_WAYPOINT_KEYS

from control_plane.translate import gateway_api, ingress, istio_routing, istio_security, service_entry, smi
from control_plane.translate.common import ROOT_NAMESPACES, Checker, Findings

# kind -> (group, served versions, parser); the order of versions is the preference, newest first.
MESH_KINDS: dict[str, tuple[str, tuple[str, ...], Callable[[dict, Checker], Any]]] = {
    "HTTPRoute": (gateway_api.GROUP, gateway_api.HTTPROUTE_VERSIONS, gateway_api.http_route),
    "Gateway": (gateway_api.GROUP, gateway_api.GATEWAY_VERSIONS, gateway_api.gateway),
    "VirtualService": (istio_routing.GROUP, istio_routing.VERSIONS, istio_routing.virtual_service),
    "DestinationRule": (istio_routing.GROUP, istio_routing.VERSIONS, istio_routing.destination_rule),
    "AuthorizationPolicy": (istio_security.GROUP, istio_security.VERSIONS, istio_security.authorization_policy),
    "PeerAuthentication": (istio_security.GROUP, istio_security.VERSIONS, istio_security.peer_authentication),
    "TrafficSplit": (smi.GROUP, smi.VERSIONS, smi.traffic_split),
    "ServiceEntry": (service_entry.GROUP, service_entry.VERSIONS, service_entry.service_entry),
}
CORE_KINDS = ("Namespace", "Pod", "Service", "ServiceAccount")
# Secrets are read for one purpose: the TLS certificates an ingress Gateway's HTTPS servers name;
# ReferenceGrants for one too: which of another namespace's Secrets and Services ingress Gateways may name.
ALL_KINDS = CORE_KINDS + tuple(MESH_KINDS) + ("Secret", "ReferenceGrant")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")


def is_mesh_object(obj: dict) -> bool:
    """A mesh-config object shoal translates (an Istio `Gateway` or an Ingress is not)."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in MESH_KINDS:
        return False
    return str(obj.get("apiVersion", "")).split("/")[0] == MESH_KINDS[kind][0]


@dataclass(frozen=True)
class Parsed:
    value: Any
    findings: Findings

    @property
    def ok(self) -> bool:
        return not self.findings.errors


def _envelope(obj: dict, c: Checker) -> None:
    for key in obj:
        if key not in _TOP_LEVEL:
            c.error(key, "unknown top-level field; the fields of metadata and spec must be indented under them")
    meta = c.mapping(obj.get("metadata"), "metadata", required=True)
    name = c.string(meta.get("name"), "metadata.name", required=True)
    if name is not None and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        c.error("metadata.name", f"{name!r} is not a valid name (lower-case letters, digits, '-' and '.')")
    namespace = c.string(meta.get("namespace"), "metadata.namespace")
    if namespace is not None and (len(namespace) > 63 or not _DNS_LABEL.match(namespace)):
        c.error("metadata.namespace", f"{namespace!r} is not a valid namespace name")


_POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def _core_settings(obj: dict, c: Checker, meta: dict | None = None, path: str = "metadata") -> None:
    """Shoal's own labels and annotations on Namespaces, Pods, Services (and pod templates)."""
    meta = (obj.get("metadata") or {}) if meta is None else meta
    if not isinstance(meta, dict):
        return
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict):
            continue
        for key in DATAPLANE_MODE_KEYS:
            if key in values and values[key] not in (AMBIENT, NONE):
                c.error(f"{path}.{field}.{key}", f"must be {AMBIENT!r} or {NONE!r}, not {values[key]!r}")
        for key in USE_WAYPOINT_KEYS:
            value = values.get(key)
            if value is not None and value != NONE and (not isinstance(value, str) or not _DNS_LABEL.match(value)):
                c.error(f"{path}.{field}.{key}", f"must name a waypoint Gateway (or be 'none'), not {value!r}")


def _head(obj: dict, c: Checker) -> str | None:
    """Checks kind, apiVersion and metadata; the kind, or None when there is none to go on with."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        c.error("kind", "is required")
        return None
    api_version = obj.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        c.error("apiVersion", "is required")
    _envelope(obj, c)
    return kind


def check_core(obj: dict, c: Checker) -> None:
    """What `parse` checks of a core object (see CORE_KINDS), recorded on `c`: the translator's own Checker,
    which normalising the object goes on to use (one Checker, and one ref text, per object event)."""
    if _head(obj, c) is not None:
        _core_settings(obj, c)


def parse(obj: dict, root_namespaces: tuple[str, ...] = ROOT_NAMESPACES) -> Parsed:
    """Check and translate one mesh object (see MESH_KINDS); core kinds get their settings checked."""
    if not isinstance(obj, dict):
        return Parsed(None, Findings((f"<object>: must be a mapping, not {type(obj).__name__}",)))
    c = Checker.for_object(obj, root_namespaces)
    kind = _head(obj, c)
    if kind is None or not isinstance(obj.get("metadata"), dict):   # no name to go on with (an error said so)
        return Parsed(None, c.findings())
    api_version = obj.get("apiVersion")
    if kind in CORE_KINDS:
        _core_settings(obj, c)
        return Parsed(None, c.findings())
    if kind in _POD_TEMPLATE_KINDS:
        template = ((obj.get("spec") or {}) if isinstance(obj.get("spec"), dict) else {}).get("template")
        if isinstance(template, dict):
            _core_settings(obj, c, template.get("metadata") or {}, "spec.template.metadata")
        return Parsed(None, c.findings())
    if kind not in MESH_KINDS:
        return Parsed(None, c.findings())
    group, versions, parser = MESH_KINDS[kind]
    if isinstance(api_version, str) and "/" in api_version:
        api_group, version = api_version.split("/", 1)
        if api_group != group:
            if ingress.is_istio_gateway(obj):      # an ingress Gateway: checked here, translated by the Translator
                return Parsed(ingress.istio_gateway(obj, c), c.findings())
            return Parsed(None, c.findings())  # the same kind in another API group: not ours
        if version not in versions:
            c.error("apiVersion", f"{kind} is served as {', '.join(f'{group}/{v}' for v in versions)}, not {api_version}")
            return Parsed(None, c.findings())
    elif api_version:
        c.error("apiVersion", f"{api_version!r} is not a {kind} API version; use {group}/{versions[0]}")
        return Parsed(None, c.findings())
    value = parser(obj, c)
    if kind == "Gateway" and value is None and ingress.is_ingress_class(obj):
        value = ingress.gateway_api_gateway(obj, c)        # an ingress Gateway, not a waypoint
    return Parsed(value, c.findings())


def validate(obj: dict) -> list[str]:
    """The errors of one object, each `Kind ns/name: field.path: reason`; [] when it is fine.

    `shoal local apply` refuses a whole manifest when any object has errors.
    Warnings (valid features shoal does not act on) are in `parse(obj).findings.warnings`.
    """
    return list(parse(obj).findings.errors)
