"""The waypoint controller: a waypoint Gateway becomes a ServiceAccount, a Deployment and a Service.

For every Gateway with `gatewayClassName: shoal-waypoint` (or `istio-waypoint`)
in namespace N, named G, it keeps, in N:
- ServiceAccount G (the waypoint's identity: spiffe://td/ns/N/sa/G);
- Deployment G, 1 replica, whose pod runs `shoal waypoint run --namespace N
  --name G ...`, opts out of capture (`shoal.io/dataplane-mode: none`: the
  waypoint speaks HBONE itself on 15008 in its own netns) and carries the
  label `gateway.networking.k8s.io/gateway-name: G`, by which the translator
  knows it is a waypoint (it never sends a waypoint's traffic to a waypoint);
- Service G, port 15008 (HBONE), selecting those pods.
Every object it makes carries `shoal.io/managed-by: waypoint-controller`
and an ownerReference to its Gateway (so Kubernetes' garbage collector
removes them with it, even with the control plane down); when the Gateway
goes, they go. Objects without that label are never touched.

As the Gateway's controller it writes its status (`gateway_status`): the
conditions Accepted and Programmed (True once the waypoint Deployment has a
ready pod; False, Pending, before; False, Invalid, when an object shoal does
not manage holds a name the waypoint needs), each with the Gateway's
observedGeneration, and `addresses` (the waypoint Service's cluster IP, else
its DNS name). Only Gateways of class `shoal-waypoint` get a status (an
`istio-waypoint` Gateway's belongs to Istio's controller). The GatewayClass
`shoal-waypoint` is marked Accepted when its controllerName is shoal's
(`WAYPOINT_CONTROLLER`).

`plan(gateways, owned, ...)` is pure (what to apply, what to delete);
`LocalWaypointController` carries it out on the local cluster's store;
`control_plane.waypoints_kube.KubeWaypointController` through the Kubernetes API.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from shoal import log, store as store_module
from shoal.contracts import (
    DATAPLANE_MODE_KEYS, GATEWAY_NAME_LABEL as GATEWAY_NAME, HBONE_PORT, INGRESS_CLASS, INGRESS_GATEWAY_SELECTOR,
    METRICS_PORT, NONE, READINESS_PORT, WAYPOINT_ACCESS_LOG, WAYPOINT_CLASS,
)
from shoal.observe.targets import scrape_annotations

from control_plane.conditions import condition
from control_plane.ingress_listeners import listener_statuses
from control_plane.translate.gateway_api import is_waypoint_gateway

logger = log.get("shoal.control_plane.waypoints")

MANAGED_BY = "shoal.io/managed-by"
MANAGER = "waypoint-controller"
KINDS = ("ServiceAccount", "Deployment", "Service")
# The GatewayClass's spec.controllerName that names shoal's waypoint controller (daemonset/gatewayclass.yaml).
WAYPOINT_CONTROLLER = "shoal.io/waypoint-controller"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"

Argv = Callable[[str, str], list[str]]   # (namespace, gateway name) -> the waypoint pod's command


@dataclass(frozen=True)
class Plan:
    apply: tuple[dict, ...]
    delete: tuple[tuple[str, str, str], ...]      # (kind, namespace, name)


def owner_reference(gateway: dict, controller: bool = True) -> dict | None:
    """An ownerReference to the Gateway (None until it has a uid, as an object not yet stored)."""
    meta = gateway.get("metadata") or {}
    if not meta.get("uid"):
        return None
    ref = {"apiVersion": gateway.get("apiVersion") or GATEWAY_API_VERSION, "kind": "Gateway",
           "name": str(meta["name"]), "uid": str(meta["uid"])}
    return {**ref, "controller": True} if controller else ref


def _meta(namespace: str, name: str, owner: dict | None = None) -> dict:
    meta = {"name": name, "namespace": namespace, "labels": {MANAGED_BY: MANAGER, GATEWAY_NAME: name}}
    if owner:
        meta["ownerReferences"] = [owner]
    return meta


def desired(gateway: dict, argv: Argv) -> list[dict]:
    meta = gateway.get("metadata") or {}
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    owner = owner_reference(gateway)
    pod_labels = {GATEWAY_NAME: name, **{key: NONE for key in DATAPLANE_MODE_KEYS}, "app": name}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(namespace, name, owner)},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(namespace, name, owner),
         "spec": {"replicas": 1, "selector": {"matchLabels": {GATEWAY_NAME: name}},
                  "template": {"metadata": {"labels": pod_labels, "annotations": scrape_annotations(METRICS_PORT)},
                               "spec": {"serviceAccountName": name, "containers": [{
                                   "name": "waypoint", "command": [*argv(namespace, name), *access_log_args(gateway)],
                                   "ports": [{"name": "hbone", "containerPort": HBONE_PORT},
                                             {"name": "metrics", "containerPort": METRICS_PORT}],
                                   "readinessProbe": {"httpGet": {"port": READINESS_PORT,
                                                                  "path": "/healthz/ready"}}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(namespace, name, owner),
         "spec": {"selector": {GATEWAY_NAME: name},
                  "ports": [{"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT, "protocol": "TCP",
                             "appProtocol": "hbone"}]}},
    ]


def access_log_args(gateway: dict) -> tuple[str, ...]:
    """The waypoint's access log is off unless its Gateway's annotation asks for it."""
    asked = ((gateway.get("metadata") or {}).get("annotations") or {}).get(WAYPOINT_ACCESS_LOG, "")
    return ("--access-log", "on") if str(asked).lower() == "true" else ()


def _waypoint(gateway: dict) -> bool:
    """A Gateway API Gateway of a waypoint class (an Istio networking Gateway is an ingress, never one)."""
    return (str(gateway.get("apiVersion", "")).startswith("gateway.networking.k8s.io/")
            and is_waypoint_gateway(gateway))


def _key(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), str(meta.get("namespace") or "default"), str(meta.get("name"))


def managed(obj: dict) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == MANAGER


Build = Callable[[dict], list[dict]]   # a waypoint Gateway -> the objects it wants


def plan(gateways: list[dict], existing: list[dict], build: Build) -> Plan:
    """What to write so that every waypoint Gateway has its objects and no others remain.

    `existing` are the objects of KINDS now stored; only managed ones are deleted,
    and an unmanaged object in the way is left alone (with a warning from the caller)."""
    want: dict[tuple, dict] = {}
    for gateway in gateways:
        if not _waypoint(gateway) or (gateway.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for obj in build(gateway):
            key = _key(obj)
            if key in want:   # shared by the namespace's waypoints: owned by each of them, controlled by none
                obj = _shared(want[key], obj)
            want[key] = obj
    have = {_key(o): o for o in existing}
    apply = tuple(obj for key, obj in want.items() if key not in have or managed(have[key]))
    delete = tuple(key for key, obj in have.items() if managed(obj) and key not in want)
    return Plan(apply, delete)


def _shared(first: dict, second: dict) -> dict:
    refs = {}
    for obj in (first, second):
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            refs[ref["uid"]] = {k: v for k, v in ref.items() if k != "controller"}
    merged = {**second, "metadata": {**second["metadata"]}}
    if refs:
        merged["metadata"]["ownerReferences"] = [refs[uid] for uid in sorted(refs)]
    return merged


def blocked(gateways: list[dict], existing: list[dict], build: Build) -> list[tuple[str, str, str]]:
    """Objects a waypoint needs whose names are taken by objects the controller does not manage."""
    have = {_key(o): o for o in existing}
    out = []
    for gateway in gateways:
        if _waypoint(gateway):
            out += [k for k in (_key(o) for o in build(gateway)) if k in have and not managed(have[k])]
    return out


# -- status ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Observed:
    """What the platform reports about one waypoint: has its Deployment a ready pod, and its Service's IP."""
    ready: bool = False
    address: str | None = None


def gateway_status(gateway: dict, observed: Observed, blocked_by: list[tuple[str, str, str]], now: str) -> dict:
    """The status shoal writes on a waypoint Gateway it controls (Gateway API conditions and addresses)."""
    meta = gateway.get("metadata") or {}
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    generation = meta.get("generation")
    current = dict(gateway.get("status") or {})
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    accepted = condition(previous, "Accepted", True, "Accepted", "shoal's waypoint controller runs this waypoint",
                          generation, now)
    if blocked_by:
        taken = ", ".join(f"{k}/{ns}/{n}" for k, ns, n in blocked_by)
        programmed = condition(previous, "Programmed", False, "Invalid",
                                f"{taken} exists and is not managed by shoal (no label {MANAGED_BY}={MANAGER}); "
                                "remove or rename it", generation, now)
    elif not observed.ready:
        programmed = condition(previous, "Programmed", False, "Pending",
                                f"the waypoint Deployment {namespace}/{name} has no ready pod yet", generation, now)
    else:
        programmed = condition(previous, "Programmed", True, "Programmed", "the waypoint is ready", generation, now)
    others = [c for t, c in previous.items() if t not in ("Accepted", "Programmed")]
    address = ({"type": "IPAddress", "value": observed.address} if observed.address else
               {"type": "Hostname", "value": f"{name}.{namespace}.svc.cluster.local"})
    return {**current, "conditions": [accepted, programmed, *others], "addresses": [address]}


def status_updates(gateways: list[dict], existing: list[dict], build: Build, observe, now: str,
                   taken: set | frozenset = frozenset()) -> list[tuple]:
    """(gateway, new status) for every `shoal-waypoint` Gateway whose status must change.
    `observe(gateway) -> Observed` reads the platform; `taken` are keys known to be held by objects
    shoal does not manage (besides those among `existing`)."""
    have = {_key(o): o for o in existing}
    out = []
    for gateway in gateways:
        spec = gateway.get("spec") or {}
        if (not _waypoint(gateway) or spec.get("gatewayClassName") != WAYPOINT_CLASS
                or (gateway.get("metadata") or {}).get("deletionTimestamp")):
            continue
        held = [k for k in (_key(o) for o in build(gateway)) if k in taken or k in have and not managed(have[k])]
        status = gateway_status(gateway, observe(gateway), held, now)
        if status != (gateway.get("status") or {}):
            out.append((gateway, status))
    return out


def ingress_status(gateway: dict, observed: Observed, now: str) -> dict:
    """The status of a Gateway of class `shoal` (an ingress Gateway, served by the mesh's ingress gateway pods):
    Accepted; Programmed once an ingress gateway pod is ready; its address, the gateway's LoadBalancer's."""
    meta = gateway.get("metadata") or {}
    generation = meta.get("generation")
    current = dict(gateway.get("status") or {})
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    accepted = condition(previous, "Accepted", True, "Accepted", "served by the mesh's ingress gateway",
                          generation, now)
    programmed = (condition(previous, "Programmed", True, "Programmed", "the ingress gateway is ready", generation, now)
                  if observed.ready else
                  condition(previous, "Programmed", False, "Pending", "no ingress gateway pod (labelled "
                             "istio: ingressgateway) is ready", generation, now))
    others = [c for t, c in previous.items() if t not in ("Accepted", "Programmed")]
    status = {**current, "conditions": [accepted, programmed, *others]}
    if observed.address:
        status["addresses"] = [{"type": "IPAddress", "value": observed.address}]
    return status


def gatewayclass_status(gatewayclass: dict, now: str) -> dict | None:
    """The GatewayClass's new status if shoal controls it and it is not yet Accepted as such, else None."""
    if (gatewayclass.get("spec") or {}).get("controllerName") != WAYPOINT_CONTROLLER:
        return None
    meta = gatewayclass.get("metadata") or {}
    current = dict(gatewayclass.get("status") or {})
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    accepted = condition(previous, "Accepted", True, "Accepted", "handled by shoal's waypoint controller",
                          meta.get("generation"), now)
    status = {**current, "conditions": [accepted, *(c for t, c in previous.items() if t != "Accepted")]}
    return status if status != current else None


def pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


class LocalWaypointController:
    """Keeps the local cluster's store in line with its waypoint Gateways."""

    def __init__(self, cluster_store: store_module.Store, argv: Argv) -> None:
        self.store = cluster_store
        self.build: Build = lambda gateway: desired(gateway, argv)
        self._warned: set = set()

    def reconcile(self) -> int:
        """One pass; returns the resourceVersion it read at."""
        gateways, rv = self.store.list("Gateway")
        existing = [o for kind in KINDS for o in self.store.list(kind)[0]]
        for key in blocked(gateways, existing, self.build):
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("a waypoint's object is taken by an object shoal does not manage; not touching it",
                               kind=key[0], namespace=key[1], name=key[2])
        todo = plan(gateways, existing, self.build)
        if todo.apply:
            written = self.store.apply_many(todo.apply)
            changed = [o for o, w in zip(todo.apply, written)]
            if changed:
                logger.debug("waypoint objects applied", objects=len(changed))
        if todo.delete:
            self.store.delete_many(todo.delete)
            logger.info("waypoint objects removed", objects=[f"{k}/{ns}/{n}" for k, ns, n in todo.delete])
        self._write_status(gateways, existing)
        return rv

    def _write_status(self, gateways: list[dict], existing: list[dict]) -> None:
        pods = self.store.list("Pod")[0]

        def observe(gateway: dict) -> Observed:
            meta = gateway["metadata"]
            namespace, name = meta.get("namespace") or "default", meta["name"]
            service = self.store.get("Service", namespace, name) or {}
            ready = any(pod_ready(p) for p in pods if (p["metadata"].get("namespace") == namespace and
                                                       (p["metadata"].get("labels") or {}).get(GATEWAY_NAME) == name))
            return Observed(ready, (service.get("spec") or {}).get("clusterIP") or None)
        now = store_module.now_rfc3339()
        updates = status_updates(gateways, existing, self.build, observe, now)
        grants, routes = self.store.list("ReferenceGrant")[0], self.store.list("HTTPRoute")[0]
        for gateway in gateways:
            if (gateway.get("spec") or {}).get("gatewayClassName") == INGRESS_CLASS:
                status = ingress_status(gateway, self._observe_ingress(pods), now)
                status["listeners"] = listener_statuses(gateway, grants, routes, now)
                if status != (gateway.get("status") or {}):
                    updates.append((gateway, status))
        for gateway, status in updates:
            meta = gateway["metadata"]
            try:
                self.store.update_status("Gateway", meta.get("namespace") or "default", meta["name"], status)
            except store_module.NotFound:
                continue   # deleted meanwhile
        for gatewayclass in self.store.list("GatewayClass")[0]:
            status = gatewayclass_status(gatewayclass, now)
            if status is not None:
                self.store.update_status("GatewayClass", None, gatewayclass["metadata"]["name"], status)

    def _observe_ingress(self, pods: list[dict]) -> Observed:
        """Is an ingress gateway pod ready, and what address does its LoadBalancer Service show?"""
        selector = INGRESS_GATEWAY_SELECTOR.items()
        ready = any(pod_ready(p) for p in pods if selector <= ((p["metadata"].get("labels") or {}).items()))
        address = None
        for service in self.store.list("Service")[0]:
            spec = service.get("spec") or {}
            if spec.get("type") == "LoadBalancer" and selector <= (spec.get("selector") or {}).items():
                address = next(iter(spec.get("externalIPs") or []), None) or address
        return Observed(ready, address)

    async def run(self, poll: float = 0.2) -> None:
        # Pods: a waypoint's readiness is its Programmed; ReferenceGrants and HTTPRoutes: ingress listeners' status
        kinds = ("Gateway", "GatewayClass", "Pod", "ReferenceGrant", "HTTPRoute", *KINDS)
        while True:
            try:
                rv = await asyncio.to_thread(self.reconcile)
                async for event in self.store.awatch(rv, kinds):
                    if event.type == "BOOKMARK":
                        continue
                    await asyncio.to_thread(self.reconcile)
            except store_module.Expired:
                continue
            except (OSError, ValueError) as e:
                logger.warning("waypoint controller pass failed; retrying", error=str(e))
                await asyncio.sleep(1.0)


def local_argv(cluster: str, control_plane: str, extra: tuple[str, ...] = ()) -> Argv:
    """`extra`: the mesh-wide settings every waypoint gets (tracing)."""
    from shoal.local.components import shoal_argv

    def argv(namespace: str, name: str) -> list[str]:
        return shoal_argv("waypoint", "run", "--namespace", namespace, "--name", name, "--cluster", cluster,
                          "--control-plane", control_plane, *extra)
    return argv
