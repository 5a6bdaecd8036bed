"""Reading and checking Kubernetes-style YAML for `shoal local apply` and `delete`.

A manifest is refused whole when any object in it is wrong: every error
names the object, the field and the reason, and nothing is applied.
Mesh kinds (Istio, Gateway API, SMI) are checked by a validator that the CLI
passes in, so this module knows the shapes of the core kinds only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

import yaml

from shoal.local import keys, service_ips
from shoal.local.errors import LocalClusterError
from shoal.store import SERVICE_NETWORK

CORE_KINDS = {
    "Namespace": ("v1",),
    "Pod": ("v1",),
    "Service": ("v1",),
    "ServiceAccount": ("v1",),
    "Deployment": ("apps/v1",),
    # Kept in the store, as a cluster without a controller for them keeps them (no ingress controller here).
    "ConfigMap": ("v1",),
    "Secret": ("v1",),
    "Ingress": ("networking.k8s.io/v1",),
}
MESH_KINDS = {
    "VirtualService": ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"),
    "DestinationRule": ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"),
    "Gateway": ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1",
                "gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "AuthorizationPolicy": ("security.istio.io/v1beta1", "security.istio.io/v1"),
    "PeerAuthentication": ("security.istio.io/v1beta1", "security.istio.io/v1"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "ReferenceGrant": ("gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1"),
    "TrafficSplit": tuple(f"split.smi-spec.io/v1alpha{i}" for i in range(1, 5)),
    "ServiceEntry": ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"),
}
CLUSTER_SCOPED = {"Namespace"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

MeshValidator = Callable[[dict], list[str]]


class ManifestError(LocalClusterError):
    """A manifest refused whole; `errors` names each object, field and reason."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        listing = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{source}: refused, nothing was applied:\n{listing}")


def describe(obj: dict) -> str:
    kind = obj.get("kind", "<no kind>")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name", "<no name>")
    if kind in CLUSTER_SCOPED:
        return f"{kind} {name}"
    return f"{kind} {meta.get('namespace') or 'default'}/{name}"


def load(path: str | Path) -> list[dict]:
    """The objects of a YAML file, or of every .yaml/.yml file in a directory ('-' is stdin)."""
    import sys

    if str(path) == "-":
        return _parse(sys.stdin.read(), "<stdin>")
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml"))
        return [obj for f in files for obj in _parse(f.read_text(), str(f))]
    if not p.exists():
        raise ManifestError(str(path), ["file not found"])
    return _parse(p.read_text(), str(p))


def _parse(text: str, source: str) -> list[dict]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError(source, [f"bad YAML at {where}{problem}"]) from None
    objects = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            objects.extend(doc.get("items") or [])
        elif not isinstance(doc, dict):
            raise ManifestError(source, [f"document {i + 1}: expected a mapping, got {type(doc).__name__}"])
        else:
            objects.append(doc)
    return objects


def validate(objects: Iterable[dict], *, existing_namespaces: set[str],
             mesh_validator: MeshValidator | None = None,
             service_ranges: tuple[str, ...] = (SERVICE_NETWORK,)) -> list[str]:
    """Every error of `objects`; a Service is checked against the cluster's Service ranges (its IP families)."""
    objects = list(objects)
    errors: list[str] = []
    namespaces = set(existing_namespaces) | {
        o.get("metadata", {}).get("name") for o in objects if isinstance(o, dict) and o.get("kind") == "Namespace"}
    for obj in objects:
        errors.extend(_validate_one(obj, namespaces, mesh_validator, service_ranges))
    return errors


def _validate_one(obj: dict, namespaces: set[str], mesh_validator: MeshValidator | None,
                  service_ranges: tuple[str, ...]) -> list[str]:
    who = describe(obj)
    errors = []

    def err(field: str, reason: str) -> None:
        errors.append(f"{who}: {field}: {reason}")

    kind, api = obj.get("kind"), obj.get("apiVersion")
    if not kind:
        err("kind", "required field is missing")
        return errors
    known = {**CORE_KINDS, **MESH_KINDS}
    if kind not in known:
        err("kind", f"unknown kind {kind!r}; shoal local knows {', '.join(sorted(known))}")
        return errors
    if not api:
        err("apiVersion", "required field is missing")
    elif api not in known[kind]:
        err("apiVersion", f"{api!r} does not serve {kind}; use one of {', '.join(known[kind])}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        err("metadata.name", "required field is missing")
        return errors
    name = str(meta["name"])
    if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        err("metadata.name", f"{name!r} is not a valid name (lowercase letters, digits, '-' and '.')")
    if kind not in CLUSTER_SCOPED:
        namespace = meta.get("namespace") or "default"
        if namespace not in namespaces:
            err("metadata.namespace", f"namespace {namespace!r} does not exist; create it first or in the same file")
    _check_metadata_keys(meta, "metadata", err)
    spec = obj.get("spec")
    if kind == "Deployment" and isinstance(spec, dict) and isinstance(spec.get("template"), dict) \
            and isinstance(spec["template"].get("metadata"), dict):
        _check_metadata_keys(spec["template"]["metadata"], "spec.template.metadata", err)
    checker = _CORE_CHECKS.get(kind)
    if checker:
        checker(spec, err)
        if kind == "Service" and isinstance(spec, dict):
            for field, reason in service_ips.problems(spec, service_ranges):
                err(field, reason)
    elif mesh_validator is not None:
        errors.extend(mesh_validator(obj))
    return errors


def _check_metadata_keys(meta: dict, prefix: str, err) -> None:
    """Labels and annotations: Kubernetes keys and values, and only their values for the mesh's keys."""
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(x, str) for item in value.items() for x in item):
            err(f"{prefix}.{field}", "must be a mapping of strings to strings (quote numbers and booleans, "
                                     "and keys such as on, yes or no, which YAML reads as booleans)")
            continue
        for key, reason in keys.problems(field, value):
            err(f"{prefix}.{field}.{key}", reason)


def _check_containers(containers, prefix: str, err) -> None:
    if not isinstance(containers, list) or not containers:
        err(f"{prefix}.containers", "required field is missing (a list of at least one container)")
        return
    seen = set()
    for i, c in enumerate(containers):
        where = f"{prefix}.containers[{i}]"
        if not isinstance(c, dict):
            err(where, "must be a mapping")
            continue
        if not c.get("name"):
            err(f"{where}.name", "required field is missing")
        elif c["name"] in seen:
            err(f"{where}.name", f"duplicate container name {c['name']!r}")
        seen.add(c.get("name"))
        for field in ("command", "args"):
            value = c.get(field)
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(a, (str, int, float)) for a in value)):
                err(f"{where}.{field}", "must be a list of strings")
        for j, port in enumerate(c.get("ports") or []):
            if not isinstance(port, dict) or not _is_port(port.get("containerPort")):
                err(f"{where}.ports[{j}].containerPort", "must be a port number from 1 to 65535")
        for j, env in enumerate(c.get("env") or []):
            if not isinstance(env, dict) or not env.get("name"):
                err(f"{where}.env[{j}].name", "required field is missing")


def _check_pod_spec(spec, prefix: str, err) -> None:
    if not isinstance(spec, dict):
        err(prefix, "required field is missing")
        return
    _check_containers(spec.get("containers"), prefix, err)
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in ("Always", "OnFailure", "Never"):
        err(f"{prefix}.restartPolicy", f"{policy!r} is not one of Always, OnFailure, Never")
    selector = spec.get("nodeSelector")
    if selector is not None and not isinstance(selector, dict):
        err(f"{prefix}.nodeSelector", "must be a mapping")


def _check_pod(spec, err) -> None:
    _check_pod_spec(spec, "spec", err)


def _check_deployment(spec, err) -> None:
    if not isinstance(spec, dict):
        err("spec", "required field is missing")
        return
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        err("spec.replicas", f"must be a whole number of at least 0, got {replicas!r}")
    match = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(match, dict) or not match:
        err("spec.selector.matchLabels", "required field is missing")
    template = spec.get("template")
    if not isinstance(template, dict):
        err("spec.template", "required field is missing")
        return
    labels = (template.get("metadata") or {}).get("labels") or {}
    if isinstance(match, dict) and any(labels.get(k) != v for k, v in match.items()):
        err("spec.template.metadata.labels", f"do not match spec.selector.matchLabels {match}")
    _check_pod_spec(template.get("spec"), "spec.template.spec", err)


def _check_service(spec, err) -> None:
    if not isinstance(spec, dict):
        err("spec", "required field is missing")
        return
    ports = spec.get("ports")
    if not isinstance(ports, list) or not ports:
        err("spec.ports", "required field is missing (a list of at least one port)")
        ports = []
    names = set()
    for i, port in enumerate(ports):
        where = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            err(where, "must be a mapping")
            continue
        if not _is_port(port.get("port")):
            err(f"{where}.port", "must be a port number from 1 to 65535")
        target = port.get("targetPort")
        if target is not None and not (_is_port(target) or (isinstance(target, str) and DNS_LABEL.match(target))):
            err(f"{where}.targetPort", "must be a port number or a container port name")
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            err(f"{where}.protocol", f"{port.get('protocol')!r} is not TCP, UDP or SCTP")
        if len(ports) > 1 and not port.get("name"):
            err(f"{where}.name", "required when a Service has more than one port")
        if port.get("name") in names:
            err(f"{where}.name", f"duplicate port name {port.get('name')!r}")
        names.add(port.get("name"))
    selector = spec.get("selector")
    if selector is not None and not isinstance(selector, dict):
        err("spec.selector", "must be a mapping of labels")


def _check_nothing(spec, err) -> None:
    pass


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


_CORE_CHECKS = {
    "Pod": _check_pod,
    "Deployment": _check_deployment,
    "Service": _check_service,
    "Namespace": _check_nothing,
    "ServiceAccount": _check_nothing,
    "ConfigMap": _check_nothing,
    "Secret": _check_nothing,
    "Ingress": _check_nothing,
}
