"""The analysis's own checks: what is valid object by object but wrong together.

Each check is a pure function of a `View` of the objects and returns
Findings. Pods that do not exist yet count through their Deployment's
template, so `shoal local apply` of a Deployment and a policy selecting it
in one file finds nothing wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from shoal.contracts import (
    GATEWAY_NAME_LABEL, ISTIO_WAYPOINT_FOR, USE_WAYPOINT_KEYS, WAYPOINT_CLASSES, enrollment, setting,
)
from shoal.local import keys
from shoal.model import service_hostname

from control_plane.analysis.findings import (
    HOST_NOT_FOUND, POLICY_SELECTS_NOTHING, STRICT_WITH_UNENROLLED_CLIENTS, UNKNOWN_MESH_VALUE, WAYPOINT_NOT_FOUND,
    Finding,
)
from control_plane.translate import resolve_host
from control_plane.translate.common import ROOT_NAMESPACES
from control_plane.translate.core import waypoint_setting

SYSTEM_NAMESPACES = (*ROOT_NAMESPACES, "kube-system")


def _meta(obj: dict) -> dict:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _namespace(obj: dict) -> str:
    return "" if obj.get("kind") == "Namespace" else str(_meta(obj).get("namespace") or "default")


def _finding(obj: dict, path: str, code, message: str, action: str) -> Finding:
    return Finding(str(obj.get("kind")), _namespace(obj), str(_meta(obj).get("name")), path, code, message, action)


@dataclass
class View:
    """The objects, indexed the way the checks ask: `valid` holds the mesh objects the translator took."""
    objects: list[dict]
    valid: set[tuple[str, str, str]] = field(default_factory=set)
    model_hosts: set[str] = field(default_factory=set)   # the translator's Services: ServiceEntry hosts too

    def __post_init__(self) -> None:
        self.namespaces = {_meta(o).get("name"): o for o in self.objects if o.get("kind") == "Namespace"}
        self.hosts = {service_hostname(_meta(o).get("name"), _namespace(o))
                      for o in self.objects if o.get("kind") == "Service"} | self.model_hosts
        self.waypoints = {(_namespace(o), _meta(o).get("name")) for o in self.objects if o.get("kind") == "Gateway"
                          and ((o.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES)}

    def of_kind(self, kind: str) -> Iterator[dict]:
        for obj in self.objects:
            if obj.get("kind") == kind and (kind, _namespace(obj), _meta(obj).get("name")) in self.valid:
                yield obj

    def pods(self) -> Iterator[dict]:
        """Every Pod, and a pod-shaped stand-in for each Deployment's template (its pods may not exist yet)."""
        for obj in self.objects:
            if obj.get("kind") == "Pod":
                yield obj
            elif obj.get("kind") == "Deployment":
                template = (obj.get("spec") or {}).get("template") or {}
                meta = dict(template.get("metadata") or {})
                meta.update(namespace=_namespace(obj), name=f"{_meta(obj).get('name')} (Deployment)")
                yield {"kind": "Pod", "metadata": meta, "spec": template.get("spec") or {}}

    def enrolled(self, pod: dict) -> bool:
        return enrollment(self.namespaces.get(_namespace(pod)), pod).enrolled


def unknown_mesh_values(view: View) -> list[Finding]:
    out = []
    for obj in view.objects:
        for place in ("labels", "annotations"):
            for key, value in (_meta(obj).get(place) or {}).items():
                problem = keys.mesh_value_problem(key, value)
                if problem:
                    out.append(_finding(obj, f"metadata.{place}[{key}]", UNKNOWN_MESH_VALUE, problem,
                                        f"set one of its values, or remove it: `shoal local label ... {key}-`"))
    return out


def missing_waypoints(view: View) -> list[Finding]:
    out = []
    for obj in view.objects:
        if obj.get("kind") not in ("Namespace", "Service", "Pod"):
            continue
        ns = _meta(obj).get("name") if obj.get("kind") == "Namespace" else _namespace(obj)
        chosen = waypoint_setting(_meta(obj), ns)
        if chosen is None or chosen.ref is None or (chosen.ref.namespace, chosen.ref.name) in view.waypoints:
            continue
        where, _ = setting(_meta(obj), USE_WAYPOINT_KEYS)
        place, key = where.split(" ", 1)
        out.append(_finding(
            obj, f"metadata.{place}s[{key}]", WAYPOINT_NOT_FOUND,
            f"names waypoint {chosen.ref.namespace}/{chosen.ref.name}, which does not exist; "
            "traffic that should pass it is refused",
            f"create it (`shoal waypoint apply -n {chosen.ref.namespace} --name {chosen.ref.name}`) "
            f"or remove the {place} (`{key}-`)"))
    return out


def _host_paths(obj: dict) -> Iterator[tuple[str, str]]:
    """(field path, resolved Service host) of every Service an object routes for or to."""
    spec = obj.get("spec") or {}
    ns = _namespace(obj)
    kind = obj.get("kind")
    if kind == "VirtualService":
        for i, host in enumerate(spec.get("hosts") or ()):
            if isinstance(host, str) and "*" not in host:
                yield f"spec.hosts[{i}]", resolve_host(host, ns)
        for i, http in enumerate(spec.get("http") or ()):
            for k, item in enumerate((http or {}).get("route") or ()):
                dest = (item or {}).get("destination") or {}
                if isinstance(dest.get("host"), str):
                    yield f"spec.http[{i}].route[{k}].destination.host", resolve_host(dest["host"], ns)
            mirror = (http or {}).get("mirror") or {}
            if isinstance(mirror.get("host"), str):
                yield f"spec.http[{i}].mirror.host", resolve_host(mirror["host"], ns)
    elif kind == "DestinationRule":
        if isinstance(spec.get("host"), str) and "*" not in spec["host"]:
            yield "spec.host", resolve_host(spec["host"], ns)
    elif kind == "HTTPRoute":
        for i, ref in enumerate(spec.get("parentRefs") or ()):
            if (ref or {}).get("kind") == "Service":
                yield f"spec.parentRefs[{i}].name", service_hostname(ref.get("name"), ref.get("namespace") or ns)
        for i, rule in enumerate(spec.get("rules") or ()):
            for j, ref in enumerate((rule or {}).get("backendRefs") or ()):
                if (ref or {}).get("kind", "Service") == "Service" and ref.get("name"):
                    yield (f"spec.rules[{i}].backendRefs[{j}].name",
                           service_hostname(ref["name"], ref.get("namespace") or ns))
    elif kind == "TrafficSplit":
        if isinstance(spec.get("service"), str):
            yield "spec.service", resolve_host(spec["service"], ns)
        for i, backend in enumerate(spec.get("backends") or ()):
            if isinstance((backend or {}).get("service"), str):
                yield f"spec.backends[{i}].service", resolve_host(backend["service"], ns)


def hosts_not_found(view: View) -> list[Finding]:
    out = []
    for kind in ("VirtualService", "DestinationRule", "HTTPRoute", "TrafficSplit"):
        for obj in view.of_kind(kind):
            for path, host in dict.fromkeys(_host_paths(obj)):
                if host not in view.hosts:
                    out.append(_finding(obj, path, HOST_NOT_FOUND, f"{host} matches no Service",
                                        "create the Service, or correct the name (short names are looked up "
                                        "in the object's namespace)"))
    return out


def _selector(obj: dict) -> dict:
    return ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}


def _selected(view: View, obj: dict, selector: dict) -> list[dict]:
    """The pods a namespaced policy applies to (a root namespace's policy reaches every namespace)."""
    ns = _namespace(obj)
    return [p for p in view.pods()
            if (ns in ROOT_NAMESPACES or _namespace(p) == ns)
            and all((_meta(p).get("labels") or {}).get(k) == str(v) for k, v in selector.items())]


def policies_selecting_nothing(view: View) -> list[Finding]:
    out = []
    for obj in view.of_kind("AuthorizationPolicy"):
        spec = obj.get("spec") or {}
        selector = _selector(obj)
        if selector and not _selected(view, obj, selector):
            wanted = ",".join(f"{k}={v}" for k, v in selector.items())
            out.append(_finding(obj, "spec.selector.matchLabels", POLICY_SELECTS_NOTHING,
                                f"no pod in {'the mesh' if _namespace(obj) in ROOT_NAMESPACES else 'its namespace'} "
                                f"has the labels {wanted}, so the policy applies to nothing",
                                "correct the labels, or move the policy to the namespace of the pods it is for"))
        refs = list(spec.get("targetRefs") or ()) + ([spec["targetRef"]] if spec.get("targetRef") else [])
        for i, ref in enumerate(refs):
            ref = ref or {}
            if ref.get("kind") == "Service":
                host = service_hostname(ref.get("name"), ref.get("namespace") or _namespace(obj))
                if host not in view.hosts:
                    path = f"spec.targetRefs[{i}].name" if spec.get("targetRefs") else "spec.targetRef.name"
                    out.append(_finding(obj, path, POLICY_SELECTS_NOTHING,
                                        f"targets Service {host}, which does not exist",
                                        "correct the name, or create the Service"))
    return out


def strict_with_unenrolled_clients(view: View) -> list[Finding]:
    out = []
    clients = [p for p in view.pods() if _namespace(p) not in SYSTEM_NAMESPACES
               and not (p.get("spec") or {}).get("hostNetwork")
               and GATEWAY_NAME_LABEL not in (_meta(p).get("labels") or {})
               and ISTIO_WAYPOINT_FOR not in (_meta(p).get("labels") or {})
               and not view.enrolled(p)]
    if not clients:
        return out
    for obj in view.of_kind("PeerAuthentication"):
        spec = obj.get("spec") or {}
        modes = [str((spec.get("mtls") or {}).get("mode") or "")] + [
            str((m or {}).get("mode") or "") for m in (spec.get("portLevelMtls") or {}).values()]
        if "STRICT" not in modes:
            continue
        servers = [p for p in _selected(view, obj, _selector(obj)) if view.enrolled(p)]
        if not servers:
            continue
        names = ", ".join(f"{_namespace(p)}/{_meta(p).get('name')}" for p in clients[:3])
        more = f" and {len(clients) - 3} more" if len(clients) > 3 else ""
        out.append(_finding(obj, "spec.mtls.mode", STRICT_WITH_UNENROLLED_CLIENTS,
                            f"STRICT refuses plaintext, and pods outside the mesh ({names}{more}) can only "
                            "send plaintext; their connections to the selected workloads are refused",
                            "enroll those pods' namespaces (shoal.io/dataplane-mode=ambient), or use PERMISSIVE"))
    return out


CHECKS = (unknown_mesh_values, missing_waypoints, hosts_not_found, policies_selecting_nothing,
          strict_with_unenrolled_clients)
