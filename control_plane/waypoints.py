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
Every object it makes carries `shoal.io/managed-by: waypoint-controller`;
when the Gateway goes, they go. Objects without that label are never touched.

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
    DATAPLANE_MODE_KEYS, GATEWAY_NAME_LABEL as GATEWAY_NAME, HBONE_PORT, METRICS_PORT, NONE, READINESS_PORT,
)

from control_plane.translate.gateway_api import is_waypoint_gateway

logger = log.get("shoal.control_plane.waypoints")

MANAGED_BY = "shoal.io/managed-by"
MANAGER = "waypoint-controller"
KINDS = ("ServiceAccount", "Deployment", "Service")

Argv = Callable[[str, str], list[str]]   # (namespace, gateway name) -> the waypoint pod's command


@dataclass(frozen=True)
class Plan:
    apply: tuple[dict, ...]
    delete: tuple[tuple[str, str, str], ...]      # (kind, namespace, name)


def _meta(namespace: str, name: str, extra: dict | None = None) -> dict:
    return {"name": name, "namespace": namespace,
            "labels": {MANAGED_BY: MANAGER, GATEWAY_NAME: name, **(extra or {})}}


def desired(gateway: dict, argv: Argv) -> list[dict]:
    meta = gateway.get("metadata") or {}
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    pod_labels = {GATEWAY_NAME: name, **{key: NONE for key in DATAPLANE_MODE_KEYS}, "app": name}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(namespace, name)},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(namespace, name),
         "spec": {"replicas": 1, "selector": {"matchLabels": {GATEWAY_NAME: name}},
                  "template": {"metadata": {"labels": pod_labels},
                               "spec": {"serviceAccountName": name, "containers": [{
                                   "name": "waypoint", "command": argv(namespace, name),
                                   "ports": [{"name": "hbone", "containerPort": HBONE_PORT},
                                             {"name": "metrics", "containerPort": METRICS_PORT}],
                                   "readinessProbe": {"httpGet": {"port": READINESS_PORT,
                                                                  "path": "/healthz/ready"}}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(namespace, name),
         "spec": {"selector": {GATEWAY_NAME: name},
                  "ports": [{"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT, "protocol": "TCP",
                             "appProtocol": "hbone"}]}},
    ]


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
            want[_key(obj)] = obj
    have = {_key(o): o for o in existing}
    apply = tuple(obj for key, obj in want.items() if key not in have or managed(have[key]))
    delete = tuple(key for key, obj in have.items() if managed(obj) and key not in want)
    return Plan(apply, delete)


def blocked(gateways: list[dict], existing: list[dict], build: Build) -> list[tuple[str, str, str]]:
    """Objects a waypoint needs whose names are taken by objects the controller does not manage."""
    have = {_key(o): o for o in existing}
    out = []
    for gateway in gateways:
        if _waypoint(gateway):
            out += [k for k in (_key(o) for o in build(gateway)) if k in have and not managed(have[k])]
    return out


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
        return rv

    async def run(self, poll: float = 0.2) -> None:
        kinds = ("Gateway", *KINDS)
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


def local_argv(cluster: str, control_plane: str) -> Argv:
    from shoal.local.components import shoal_argv

    def argv(namespace: str, name: str) -> list[str]:
        return shoal_argv("waypoint", "run", "--namespace", namespace, "--name", name, "--cluster", cluster,
                          "--control-plane", control_plane)
    return argv
