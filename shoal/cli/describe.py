"""`shoal describe pod|svc|ns NAME [-n NS]`: how the mesh sees one object, and why.

For a pod: whether it is enrolled and which setting decided it, its identity,
its waypoint, the Services that select it, the policies that apply to it, the
route tables of its Services. For a Service: address, ports, endpoints, its
waypoint, its route table, the policies that target it. For a namespace:
enrollment, waypoint, its pods in and out of the mesh, its policies. Each
ends with the analysis's findings about the object and the recent events.

Everything is computed by the control plane's own translator from the
cluster's objects, so what is shown is what the mesh does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from shoal.cli import context
from shoal.cli.output import age, fail
from shoal.contracts import enrollment
from shoal.model import ResourceType, selector_matches, service_hostname
from shoal.model.policy import PolicyScope

KINDS = {"pod": "Pod", "pods": "Pod", "po": "Pod", "svc": "Service", "service": "Service", "services": "Service",
         "ns": "Namespace", "namespace": "Namespace", "namespaces": "Namespace"}
TRUST_DOMAIN = "cluster.local"
ROOT_NAMESPACES = ("shoal-system", "istio-system")


def register(sub) -> None:
    p = sub.add_parser("describe", help="how the mesh sees a pod, service or namespace, and why",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(KINDS), metavar="pod|svc|ns", help="what to describe")
    p.add_argument("name", help="the object's name")
    p.add_argument("-n", "--namespace", default="default", help="the object's namespace (default: default)")
    context.add_option(p)
    p.set_defaults(func=cmd_describe)


@dataclass
class Mesh:
    """The cluster's objects, the translator's model of them, and the analysis's findings."""
    objects: list[dict]

    def __post_init__(self) -> None:
        from control_plane.analysis import analyze
        from control_plane.translate import Translator
        from shoal.store import Event

        translator = Translator()
        for obj in self.objects:
            translator.apply_event(Event("ADDED", obj))
        translator.flush()
        self.snapshot = translator.snapshot()
        self.findings = analyze(self.objects)

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        return next((o for o in self.objects if o.get("kind") == kind and o["metadata"]["name"] == name
                     and (namespace is None or o["metadata"].get("namespace", "default") == namespace)), None)

    def of(self, rtype: ResourceType) -> list:
        return list(self.snapshot[rtype].values())

    def workload(self, namespace: str, name: str):
        return next((w for w in self.of(ResourceType.WORKLOAD) if (w.namespace, w.name) == (namespace, name)), None)

    def service(self, namespace: str, name: str):
        return self.snapshot[ResourceType.SERVICE].get(service_hostname(name, namespace))

    def policies_for_labels(self, namespace: str, labels) -> list[str]:
        out = []
        for p in self.of(ResourceType.AUTHORIZATION):
            applies = (p.scope == PolicyScope.MESH or (p.scope == PolicyScope.NAMESPACE and p.namespace == namespace)
                       or (p.scope == PolicyScope.WORKLOAD and (p.namespace == namespace or p.namespace in ROOT_NAMESPACES)
                           and selector_matches(p.selector, labels)))
            if applies:
                out.append(f"AuthorizationPolicy {p.namespace}/{p.name} ({p.action}, {len(p.rules)} rules)")
        for p in self.of(ResourceType.PEER_AUTHENTICATION):
            applies = (p.scope == PolicyScope.MESH or (p.scope == PolicyScope.NAMESPACE and p.namespace == namespace)
                       or (p.scope == PolicyScope.WORKLOAD and p.namespace == namespace
                           and selector_matches(p.selector, labels)))
            if applies:
                out.append(f"PeerAuthentication {p.namespace}/{p.name} ({p.mode})")
        return out

    def routes_of(self, hostname: str) -> list[str]:
        out = []
        for rt in sorted(self.of(ResourceType.ROUTE_TABLE), key=lambda t: t.key):
            if rt.hostname != hostname:
                continue
            for route in rt.routes:
                dests = ", ".join(f"{d.host.split('.svc.')[0]}"
                                  + (f" subset {d.subset_name}" if d.subset_name else "") + f" ({d.weight})"
                                  for d in route.destinations) or "-"
                out.append(f"port {rt.port or 'any'}, {rt.origin}: {route.name or 'route'} -> {dests}")
        return out

    def findings_about(self, kind: str, namespace: str, name: str) -> list[str]:
        key = (kind, "" if kind == "Namespace" else namespace, name)
        return [f.line() for f in self.findings if f.key == key]

    def events_about(self, kind: str, namespace: str, name: str) -> list[str]:
        events = [e for e in self.objects if e.get("kind") == "Event"
                  and (e.get("involvedObject") or {}).get("kind") == kind
                  and (e.get("involvedObject") or {}).get("name") == name
                  and (kind == "Namespace" or (e.get("involvedObject") or {}).get("namespace") == namespace)]
        events.sort(key=lambda e: e.get("lastTimestamp") or "")
        return [f"{age(e.get('lastTimestamp'))} ago  {e.get('type', '')}  {e.get('reason', '')}: {e.get('message', '')}"
                for e in events[-10:]]


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"{title}:"] + ([f"  {line}" for line in lines] if lines else ["  <none>"])


def describe_pod(mesh: Mesh, namespace: str, name: str) -> list[str] | None:
    pod = mesh.get("Pod", namespace, name)
    if pod is None:
        return None
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    decision = enrollment(mesh.get("Namespace", None, namespace), pod)
    workload = mesh.workload(namespace, name)
    sa = spec.get("serviceAccountName") or "default"
    labels = tuple(sorted((pod["metadata"].get("labels") or {}).items()))
    services = [s for s in mesh.of(ResourceType.SERVICE) if s.namespace == namespace
                and workload is not None and any(e.workload_uid == workload.uid for e in s.endpoints)]
    lines = [f"Name:        {name}", f"Namespace:   {namespace}", f"Node:        {spec.get('nodeName', '<none>')}",
             f"IP:          {status.get('podIP', '<none>')}",
             f"IPs:         {', '.join(p.get('ip', '') for p in status.get('podIPs') or []) or '<none>'}",
             f"Status:      {status.get('phase', 'Pending')}",
             f"Enrolled:    {'yes' if decision.enrolled else 'no'} ({decision.reason})",
             f"Identity:    spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"
             + ("" if decision.enrolled else " (not used: the pod is not in the mesh)"),
             f"Waypoint:    {workload.waypoint.namespace}/{workload.waypoint.name}" if workload and workload.waypoint
             else "Waypoint:    <none> (for traffic addressed to the pod)"]
    lines += _section("Services", [f"{s.name} ({s.hostname})"
                                   + (f", waypoint {s.waypoint.namespace}/{s.waypoint.name}" if s.waypoint else "")
                                   for s in services])
    lines += _section("Policies", mesh.policies_for_labels(namespace, labels))
    lines += _section("Routes", [r for s in services for r in mesh.routes_of(s.hostname)])
    return lines


def describe_service(mesh: Mesh, namespace: str, name: str) -> list[str] | None:
    obj = mesh.get("Service", namespace, name)
    if obj is None:
        return None
    service = mesh.service(namespace, name)
    workloads = {w.uid: w for w in mesh.of(ResourceType.WORKLOAD)}
    lines = [f"Name:        {name}", f"Namespace:   {namespace}",
             f"Host:        {service_hostname(name, namespace)}",
             f"IP:          {(obj.get('spec') or {}).get('clusterIP', '<none>')}",
             f"IPs:         {', '.join((obj.get('spec') or {}).get('clusterIPs') or []) or '<none>'}"
             f" ({', '.join((obj.get('spec') or {}).get('ipFamilies') or []) or 'no family'}, "
             f"{(obj.get('spec') or {}).get('ipFamilyPolicy', 'SingleStack')})",
             "Ports:       " + ", ".join(f"{p.port}{'/' + p.name if p.name else ''}" for p in (service.ports if service else ())),
             f"Waypoint:    {service.waypoint.namespace}/{service.waypoint.name}" if service and service.waypoint
             else "Waypoint:    <none> (the ztunnel sends its traffic straight to the endpoints)"]
    endpoints = []
    for e in (service.endpoints if service else ()):
        w = workloads.get(e.workload_uid)
        endpoints.append(f"{w.ips[0] if w and w.ips else '?'}:{e.target_port} {w.namespace + '/' + w.name if w else e.workload_uid}"
                         f" ({'in the mesh' if w and str(w.protocol) == 'HBONE' else 'outside the mesh'})")
    lines += _section("Endpoints", endpoints)
    lines += _section("Routes", mesh.routes_of(service_hostname(name, namespace)))
    targeting = [f"AuthorizationPolicy {p.namespace}/{p.name} ({p.action})" for p in mesh.of(ResourceType.AUTHORIZATION)
                 if p.scope == PolicyScope.TARGETS and any(t.kind == "Service" and t.name == name and t.namespace == namespace
                                                           for t in p.targets)]
    lines += _section("Policies", targeting)
    return lines


def describe_namespace(mesh: Mesh, _: str, name: str) -> list[str] | None:
    obj = mesh.get("Namespace", None, name)
    if obj is None:
        return None
    pods = [p for p in mesh.objects if p.get("kind") == "Pod" and p["metadata"].get("namespace") == name]
    inside = [p["metadata"]["name"] for p in pods if enrollment(obj, p).enrolled]
    outside = [f"{p['metadata']['name']} ({enrollment(obj, p).reason})" for p in pods if not enrollment(obj, p).enrolled]
    labels = obj["metadata"].get("labels") or {}
    waypoints = [f"{w.namespace}/{w.name} (for {w.traffic_type})" for w in mesh.of(ResourceType.WAYPOINT) if w.namespace == name]
    lines = [f"Name:        {name}",
             "Labels:      " + (", ".join(f"{k}={v}" for k, v in labels.items()) or "<none>")]
    lines += _section("Pods in the mesh", inside)
    lines += _section("Pods outside the mesh", outside)
    lines += _section("Waypoints", waypoints)
    lines += _section("Policies", [f"AuthorizationPolicy {p.name} ({p.scope}, {p.action})"
                                   for p in mesh.of(ResourceType.AUTHORIZATION) if p.namespace == name]
                      + [f"PeerAuthentication {p.name} ({p.scope}, {p.mode})"
                         for p in mesh.of(ResourceType.PEER_AUTHENTICATION) if p.namespace == name])
    return lines


DESCRIBERS = {"Pod": describe_pod, "Service": describe_service, "Namespace": describe_namespace}


def describe(objects: list[dict], kind: str, namespace: str, name: str) -> str | None:
    """The text of `shoal describe`, or None when there is no such object."""
    mesh = Mesh(objects)
    lines = DESCRIBERS[kind](mesh, namespace, name)
    if lines is None:
        return None
    lines += _section("Findings", mesh.findings_about(kind, namespace, name))
    lines += _section("Events", mesh.events_about(kind, namespace, name))
    return "\n".join(lines)


def cmd_describe(args) -> int:
    from shoal.local.layout import Layout

    cluster = context.resolve(args)
    store = Layout(cluster).store()
    if not store.exists():
        return fail(f"cluster {cluster!r} is not up; run `shoal local up --cluster {cluster}`")
    kind = KINDS[args.kind]
    objects = [obj for k in store.kinds() for obj in store.list(k)[0]]
    text = describe(objects, kind, args.namespace, args.name)
    if text is None:
        where = "" if kind == "Namespace" else f" in namespace {args.namespace}"
        return fail(f"{kind} {args.name!r} not found{where}")
    print(text)
    sys.stdout.flush()
    return 0
