"""Namespaces, Pods and Services become Workloads and Services.

Enrollment: a pod is meshed (protocol HBONE) when `shoal.contracts.enrollment`
says so, the one decision the node agent also makes before it captures the
pod's traffic (the precedence order is in its docstring: hostNetwork pods
never, then the pod's own `shoal.io/dataplane-mode` or `istio.io/dataplane-mode`,
label or annotation, then its Namespace's). hostNetwork pods share the node's
address: they are published as plain-TCP workloads and are Service endpoints
only when the Service says so with the annotation
`shoal.io/select-host-network: "true"`.

Waypoints: `shoal.io/use-waypoint` / `istio.io/use-waypoint` (with the
optional `*/use-waypoint-namespace`) on a Pod, a Service or their Namespace,
read in the same order as the dataplane mode (`shoal.contracts.setting`);
the object's own setting wins over its Namespace's, and the value `none`
turns a namespace waypoint off. A reference is kept only when it names a
known waypoint that serves that kind of traffic (`service`, `workload`,
`all`): traffic is never sent to a waypoint that does not exist. A
waypoint's own pods and Service (label `gateway.networking.k8s.io/gateway-name`
naming a known waypoint) never use a waypoint, so traffic cannot loop; its
pods speak HBONE whether or not their namespace is enrolled. So does a pod
labelled `networking.istio.io/tunnel: http`: its own proxy (a sidecar)
accepts HBONE, and the node agent does not capture it for that.

Canonical service and revision follow Istio's label order:
`service.istio.io/canonical-name`, `app.kubernetes.io/name`, `app`, then the
workload (Deployment) name; `service.istio.io/canonical-revision`,
`app.kubernetes.io/version`, `version`, then `latest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from shoal.contracts import (
    GATEWAY_NAME_LABEL,
    NONE,
    SELECT_HOST_NETWORK,
    TUNNEL_HBONE,
    TUNNEL_LABEL,
    USE_WAYPOINT_KEYS,
    USE_WAYPOINT_NAMESPACE_KEYS,
    enrollment,
    setting,
)
from shoal.model import (
    Endpoint,
    Protocol,
    Service,
    ServicePort,
    Waypoint,
    WaypointRef,
    Workload,
    canonical_ips,
    freeze_labels,
    service_hostname,
)
from shoal.workload_names import canonical_names, workload_name

_APP_PROTOCOLS = {"http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "h2c", "mongo", "redis", "mysql"}


def _meta(obj: dict | None) -> dict:
    return (obj or {}).get("metadata") or {}


def _setting(meta: dict, keys: tuple[str, ...]) -> str | None:
    """The value of the first of `keys` that `meta` sets (see shoal.contracts.setting)."""
    found = setting(meta, keys)
    return None if found is None else found[1]


@dataclass(frozen=True)
class WaypointSetting:
    """What an object says about waypoints: nothing (None), off, or a reference."""
    ref: WaypointRef | None
    off: bool = False


def waypoint_setting(meta: dict, default_namespace: str) -> WaypointSetting | None:
    name = _setting(meta, USE_WAYPOINT_KEYS)
    if name is None:
        return None
    if name == NONE:
        return WaypointSetting(None, off=True)
    namespace = _setting(meta, USE_WAYPOINT_NAMESPACE_KEYS) or default_namespace
    return WaypointSetting(WaypointRef(namespace, name))


def _resolve_waypoint(own: WaypointSetting | None, inherited: WaypointSetting | None,
                      waypoints: Mapping[str, Waypoint], traffic: str) -> WaypointRef | None:
    setting = own or inherited
    if setting is None or setting.off or setting.ref is None:
        return None
    waypoint = waypoints.get(f"{setting.ref.namespace}/{setting.ref.name}")
    if waypoint is None:
        # Kept: the ztunnel refuses traffic to a missing waypoint (as Istio's does) rather than send it
        # straight to the endpoints, past the L7 policy the operator asked for. The translator warns.
        return setting.ref
    if waypoint.traffic_type not in (traffic, "all"):
        return None
    return setting.ref


def is_host_network(pod: dict) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def pod_enrolled(pod: dict, namespace_obj: dict | None) -> bool:
    """The contract's decision (the node agent captures exactly the pods this says yes to)."""
    return enrollment(namespace_obj, pod).enrolled


def pod_ips(pod: dict) -> tuple[str, ...]:
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    # Every family, primary first as Kubernetes orders them; one text per address (shoal.model.addresses).
    return canonical_ips(ips)


def pod_live(pod: dict) -> bool:
    """Has an address and has not finished: it is a workload."""
    return _live(pod, pod_ips(pod))


def _live(pod: dict, ips: tuple[str, ...]) -> bool:
    """pod_live, given the pod's addresses (a caller that needs them too reads them once)."""
    return bool(ips) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def pod_serving(pod: dict) -> bool:
    """Running, addressed and not terminating: it can be a Service endpoint."""
    return (pod_live(pod) and (pod.get("status") or {}).get("phase") == "Running"
            and not _meta(pod).get("deletionTimestamp"))


def pod_uid(pod: dict) -> str:
    meta = _meta(pod)
    return str(meta.get("uid") or f"Pod/{meta.get('namespace', '')}/{meta.get('name', '')}")


def _waypoint_named_by(obj: dict, waypoints: Mapping[str, Waypoint]) -> Waypoint | None:
    meta = _meta(obj)
    gateway = (meta.get("labels") or {}).get(GATEWAY_NAME_LABEL)
    return waypoints.get(f"{meta.get('namespace') or 'default'}/{gateway}") if gateway else None


def is_waypoint_service(svc: dict, waypoints: Mapping[str, Waypoint]) -> bool:
    """A waypoint's own Service: Gateway API's gateway-name label names a known waypoint."""
    return _waypoint_named_by(svc, waypoints) is not None


def is_waypoint_pod(pod: dict, waypoints: Mapping[str, Waypoint]) -> bool:
    """A waypoint's own pod: the gateway-name label names a known waypoint AND the pod runs as that
    waypoint's service account. A label alone makes no pod a waypoint; its identity does, since that
    is what the waypoint's certificate names and what clients check."""
    waypoint = _waypoint_named_by(pod, waypoints)
    return waypoint is not None and pod_service_account(pod) == waypoint.service_account


def pod_service_account(pod: dict) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def workload_of(pod: dict, namespace_obj: dict | None, waypoints: Mapping[str, Waypoint]) -> Workload | None:
    """The Workload for a pod, or None when it has no address yet or has finished."""
    ips = pod_ips(pod)
    if not _live(pod, ips):
        return None
    meta, spec = _meta(pod), pod.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    service, revision = canonical_names(pod)
    waypoint_part = is_waypoint_pod(pod, waypoints)
    enrolled = pod_enrolled(pod, namespace_obj) or waypoint_part
    own_proxy = (meta.get("labels") or {}).get(TUNNEL_LABEL) == TUNNEL_HBONE
    waypoint = None
    if enrolled and not waypoint_part:
        waypoint = _resolve_waypoint(waypoint_setting(meta, namespace),
                                     waypoint_setting(_meta(namespace_obj), namespace), waypoints, "workload")
    return Workload(
        uid=pod_uid(pod),
        name=str(meta.get("name", "")),
        namespace=namespace,
        service_account=pod_service_account(pod),
        node=str(spec.get("nodeName") or ""),
        ips=ips,
        labels=freeze_labels(meta.get("labels")),
        canonical_service=service,
        canonical_revision=revision,
        workload_name=workload_name(pod),
        waypoint=waypoint,
        protocol=Protocol.HBONE if enrolled or own_proxy else Protocol.TCP,
    )


def app_protocol(port: dict) -> str:
    given = port.get("appProtocol")
    if given:
        given = str(given).lower()
        return "h2c" if given == "kubernetes.io/h2c" else given
    prefix = str(port.get("name") or "").lower().split("-")[0]
    if prefix == "grpc" and str(port.get("name", "")).lower().startswith("grpc-web"):
        return "grpc-web"
    return prefix if prefix in _APP_PROTOCOLS else ""


def service_ports(svc: dict) -> tuple[ServicePort, ...]:
    out = []
    for port in (svc.get("spec") or {}).get("ports") or []:
        if not isinstance(port, dict) or not isinstance(port.get("port"), int):
            continue
        out.append(ServicePort(port=port["port"], name=str(port.get("name") or ""),
                               protocol=str(port.get("protocol") or "TCP"), app_protocol=app_protocol(port)))
    return tuple(out)


def service_vips(svc: dict) -> tuple[str, ...]:
    spec = svc.get("spec") or {}
    ips = list(spec.get("clusterIPs") or []) or [spec.get("clusterIP")]
    return canonical_ips(ip for ip in ips if ip and ip != "None")


def target_port(pod: dict, port: dict) -> int | None:
    """The pod port a service port leads to: a number, or a named container port."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for container_port in container.get("ports") or []:
            if container_port.get("name") == target and isinstance(container_port.get("containerPort"), int):
                return container_port["containerPort"]
    return None


def selects(svc: dict, pod: dict) -> bool:
    """The Service's selector picks this pod (same namespace, non-empty selector)."""
    spec = svc.get("spec") or {}
    selector = spec.get("selector")
    if not selector or _meta(svc).get("namespace") != _meta(pod).get("namespace"):
        return False
    if is_host_network(pod) and str((_meta(svc).get("annotations") or {}).get(SELECT_HOST_NETWORK)).lower() != "true":
        return False
    return _matches(selector, _meta(pod).get("labels"))


def _matches(selector: Mapping, labels: Mapping | None) -> bool:
    """shoal.model.selector_matches of two label mappings (keys and values compared as text), without
    freezing both into sorted tuples first: a Service's endpoints are this, once per pod of its namespace."""
    have = {str(k): str(v) for k, v in labels.items()} if labels else {}
    return all(have.get(str(k)) == str(v) for k, v in selector.items())


def service_of(svc: dict, namespace_obj: dict | None, pods: Iterable[dict],
               waypoints: Mapping[str, Waypoint], cluster_domain: str = "cluster.local") -> Service | None:
    """The Service with its endpoints among `pods` (pass the pods of its namespace)."""
    meta, spec = _meta(svc), svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace") or "default")
    endpoints = []
    raw_ports = [p for p in spec.get("ports") or [] if isinstance(p, dict) and isinstance(p.get("port"), int)]
    own_pods_only = is_waypoint_service(svc, waypoints)   # a waypoint's Service: its identity's pods only
    for pod in pods:
        if not pod_serving(pod) or not selects(svc, pod):
            continue
        if own_pods_only and not is_waypoint_pod(pod, waypoints):
            continue
        for port in raw_ports:
            target = target_port(pod, port)
            if target is not None:
                endpoints.append(Endpoint(pod_uid(pod), port["port"], target))
    waypoint = None
    if not is_waypoint_service(svc, waypoints):
        waypoint = _resolve_waypoint(waypoint_setting(meta, namespace),
                                     waypoint_setting(_meta(namespace_obj), namespace), waypoints, "service")
    return Service(
        name=name,
        namespace=namespace,
        hostname=service_hostname(name, namespace, cluster_domain),
        vips=service_vips(svc),
        ports=service_ports(svc),
        endpoints=tuple(sorted(endpoints, key=lambda e: (e.service_port, e.workload_uid))),
        waypoint=waypoint,
        labels=freeze_labels(meta.get("labels")),
    )


# -- the boundary: core objects as the translator reads them ---------------------

def _scalar_map(c, value, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        c.error(path, f"must be a mapping of strings, not {type(value).__name__}")
        return {}
    out = {}
    for k, v in value.items():
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            out[str(k)] = str(v)
        else:
            c.error(f"{path}.{k}", f"must be a string, not {v!r}")
    return out


def _dicts(c, value, path: str) -> list[dict]:
    items = c.sequence(value, path)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            out.append(item)
        else:
            c.error(f"{path}[{i}]", f"must be a mapping, not {item!r}")
    return out


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def normalize(obj: dict, c) -> dict:
    """A well-typed copy of a Namespace, Pod or Service holding only what translation reads.

    Malformed fields are dropped and recorded on `c` (a Checker), so one odd
    object can neither crash the translator nor harm the others.
    """
    meta = c.mapping(obj.get("metadata"), "metadata")
    out_meta = {k: _str(meta.get(k)) for k in ("name", "namespace", "uid", "creationTimestamp",
                                                "deletionTimestamp", "resourceVersion") if _str(meta.get(k))}
    out_meta["labels"] = _scalar_map(c, meta.get("labels"), "metadata.labels")
    out_meta["annotations"] = _scalar_map(c, meta.get("annotations"), "metadata.annotations")
    owners = [{"kind": _str(o.get("kind")), "name": _str(o.get("name")), "controller": o.get("controller", True)}
              for o in _dicts(c, meta.get("ownerReferences"), "metadata.ownerReferences")]
    if owners:
        out_meta["ownerReferences"] = owners
    out = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": out_meta}
    spec = c.mapping(obj.get("spec"), "spec")
    status = c.mapping(obj.get("status"), "status")
    if obj.get("kind") == "Pod":
        # Tuples, and only the containers that name ports (all that translation reads of them): a large
        # cluster holds a view per pod, and every list or dict in it is one more for the garbage collector.
        containers = []
        for i, container in enumerate(_dicts(c, spec.get("containers"), "spec.containers")):
            ports = tuple({"name": _str(p.get("name")), "containerPort": p.get("containerPort")}
                          for p in _dicts(c, container.get("ports"), f"spec.containers[{i}].ports")
                          if isinstance(p.get("containerPort"), int) and not isinstance(p.get("containerPort"), bool))
            if ports:
                containers.append({"ports": ports})
        out["spec"] = {"nodeName": _str(spec.get("nodeName")), "hostNetwork": spec.get("hostNetwork") is True,
                       "serviceAccountName": _str(spec.get("serviceAccountName")),
                       "serviceAccount": _str(spec.get("serviceAccount")), "containers": tuple(containers)}
        out["status"] = {"phase": _str(status.get("phase")), "podIP": _str(status.get("podIP")),
                         "podIPs": tuple({"ip": _str(p.get("ip"))}
                                         for p in _dicts(c, status.get("podIPs"), "status.podIPs"))}
    elif obj.get("kind") == "Service":
        ports = []
        for i, p in enumerate(_dicts(c, spec.get("ports"), "spec.ports")):
            port = c.port(p.get("port"), f"spec.ports[{i}].port", required=True)
            target = p.get("targetPort", port)
            if isinstance(target, bool) or not isinstance(target, (int, str)):
                c.error(f"spec.ports[{i}].targetPort", f"must be a port number or name, not {target!r}")
                continue
            if port is not None:
                ports.append({"port": port, "targetPort": target, "name": _str(p.get("name")),
                              "protocol": _str(p.get("protocol")) or "TCP", "appProtocol": _str(p.get("appProtocol"))})
        cluster_ips = [ip for ip in c.sequence(spec.get("clusterIPs"), "spec.clusterIPs") if isinstance(ip, str)]
        out["spec"] = {"type": _str(spec.get("type")), "selector": _scalar_map(c, spec.get("selector"), "spec.selector"),
                       "ports": ports, "clusterIP": _str(spec.get("clusterIP")), "clusterIPs": cluster_ips}
    return out
