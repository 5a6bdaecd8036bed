"""The waypoint controller in Kubernetes: the same plan (`control_plane.waypoints`), through the API.

Differences from the local cluster: the pod runs the image `image` with
`shoal waypoint run ... --control-plane shoal-control-plane.shoal-system.svc:15012`,
authenticates with a projected service-account token of shoal's audience
(`control_plane.authn.TOKEN_AUDIENCE`; it gets no API-server token, as it
never talks to the API server), and reads the mesh
root from a ConfigMap `shoal-ca-root-cert` that the controller keeps in the
waypoint's namespace (a copy of the one the CA publishes in shoal-system;
pods cannot mount a ConfigMap of another namespace). Istio does the same
with `istio-ca-root-cert`.

The controller polls (`poll` seconds): list waypoint Gateways and the objects
it manages (label selector), create what is missing, patch what drifted,
delete what no Gateway wants, then write the status of each `shoal-waypoint`
Gateway (and of the GatewayClass, if shoal is its controller) where it
changed (`control_plane.waypoints.gateway_status`). A Gateway of class
`shoal` (an ingress Gateway, served by the ingress gateway pods of
daemonset/ingress-gateway.yaml) gets Accepted, Programmed once a pod
labelled `istio: ingressgateway` is ready (Pending before), and the address
its LoadBalancer Service (labelled the same) shows
(`control_plane.waypoints.ingress_status`), and each listener's status
(`control_plane.ingress_listeners`: attached HTTPRoutes, ResolvedRefs False
with RefNotPermitted while its certificate's namespace grants it nothing). Every object it makes is
owned by its Gateway (ownerReferences; the namespace's root-cert ConfigMap by
all of the namespace's waypoint Gateways), so the garbage collector removes
them with it. An object of the same name that it does not manage is left
alone, reported once, and tried again after a minute.

API failures are `shoal.kube_client.KubeError`s: 429/5xx with Retry-After are
tried again at once, the rest end the pass, which is logged with what to
check and tried again at the next poll. Without the Gateway API CRDs there is
nothing to do: one warning, and the next polls look again. The calls it
makes are listed in `shoal.kube_calls.API_CALLS`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from shoal import log
from shoal.contracts import CONTROL_PLANE_GRPC_PORT, INGRESS_CLASS, INGRESS_GATEWAY_SELECTOR
from shoal.kube_client import KubeConflict, KubeError, KubeNotFound, call
from shoal.store import now_rfc3339

from control_plane.authn import TOKEN_AUDIENCE
from control_plane.ingress_listeners import listener_statuses
from control_plane.waypoints import (
    GATEWAY_NAME, MANAGED_BY, MANAGER, Observed, _key, blocked, desired, gatewayclass_status, ingress_status, managed,
    owner_reference, plan, pod_ready, status_updates,
)

logger = log.get("shoal.control_plane.waypoints")

CONTROL_PLANE = f"shoal-control-plane.shoal-system.svc:{CONTROL_PLANE_GRPC_PORT}"
ROOT_CERT_CONFIGMAP = "shoal-ca-root-cert"
ROOT_CERT_DIR = "/var/run/shoal/ca"
TOKEN_DIR = "/var/run/secrets/shoal"
TOKEN_PATH = f"{TOKEN_DIR}/token"
TOKEN_SECONDS = 3600
GATEWAY_GROUP = "gateway.networking.k8s.io"
BLOCKED_RETRY_SECONDS = 60.0
# kind -> (API, the client's method suffix)
KINDS = {"ServiceAccount": ("core", "service_account"), "ConfigMap": ("core", "config_map"),
         "Service": ("core", "service"), "Deployment": ("apps", "deployment")}


def kube_argv(namespace: str, name: str) -> list[str]:
    return ["shoal", "--log-format", "json", "waypoint", "run", "--namespace", namespace, "--name", name,
            "--control-plane", CONTROL_PLANE, "--token-file", TOKEN_PATH,
            "--ca-bundle", f"{ROOT_CERT_DIR}/root-cert.pem"]


def kube_desired(gateway: dict, image: str, bundle_pem: bytes, extra: tuple[str, ...] = ()) -> list[dict]:
    """`extra`: the mesh-wide settings every waypoint's command gets (tracing)."""
    objects = desired(gateway, lambda namespace, name: [*kube_argv(namespace, name), *extra])
    namespace = gateway["metadata"].get("namespace") or "default"
    for obj in objects:
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            container = pod["containers"][0]
            container["image"] = image
            container["volumeMounts"] = [{"name": "root-cert", "mountPath": ROOT_CERT_DIR, "readOnly": True},
                                         {"name": "shoal-token", "mountPath": TOKEN_DIR, "readOnly": True}]
            pod["automountServiceAccountToken"] = False
            pod["volumes"] = [{"name": "root-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
                              {"name": "shoal-token", "projected": {"sources": [{"serviceAccountToken": {
                                  "path": "token", "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS}}]}}]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": namespace,
                              "labels": {MANAGED_BY: MANAGER, GATEWAY_NAME: "all"}},
                 "data": {"root-cert.pem": bundle_pem.decode()}}
    owner = owner_reference(gateway, controller=False)   # shared by the namespace's waypoints
    if owner:
        configmap["metadata"]["ownerReferences"] = [owner]
    objects.append(configmap)
    return objects


def covers(have, want) -> bool:
    """Every field of `want` is in `have` with the same value (the API server adds defaults)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and covers(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(covers(h, w) for h, w in zip(have, want))
    return have == want


class KubeWaypointController:
    def __init__(self, api_client, image: str, bundle: Callable[[], bytes | None], poll: float = 5.0,
                 now: Callable[[], str] = now_rfc3339, waypoint_args: tuple[str, ...] = ()) -> None:
        from kubernetes import client

        self.apis = {"core": client.CoreV1Api(api_client), "apps": client.AppsV1Api(api_client)}
        self.custom = client.CustomObjectsApi(api_client)
        self.api_client = api_client
        self.image = image
        self.waypoint_args = waypoint_args
        self.bundle = bundle
        self.poll = poll
        self.now = now
        self._warned: set = set()
        self._blocked_until: dict[tuple, float] = {}   # names held by others: tried again after a while
        self._gateway_version: str | None = None        # the Gateway API version served
        self._no_crds_warned = False
        self.writes = 0

    def _list_gateway_api(self, plural: str, version: str) -> list[dict]:
        listing = call(lambda: self.custom.list_cluster_custom_object(GATEWAY_GROUP, version, plural),
                       f"listing {plural}.{GATEWAY_GROUP}/{version}")
        items = listing.get("items") or []
        for item in items:
            item.setdefault("apiVersion", f"{GATEWAY_GROUP}/{version}")
            item.setdefault("kind", {"gateways": "Gateway", "httproutes": "HTTPRoute"}.get(plural, "GatewayClass"))
        return items

    def _gateways(self) -> list[dict]:
        for version in ("v1", "v1beta1"):
            try:
                items = self._list_gateway_api("gateways", version)
            except KubeNotFound:
                continue
            self._gateway_version = version
            self._no_crds_warned = False
            return items
        self._gateway_version = None
        if not self._no_crds_warned:
            self._no_crds_warned = True
            logger.warning("the Gateway API CRDs are not installed (gateways.gateway.networking.k8s.io is served in "
                           "neither v1 nor v1beta1): no waypoints; looked for again at every pass")
        return []

    def _existing(self) -> list[dict]:
        out = []
        for kind, (api, method) in KINDS.items():
            lister = getattr(self.apis[api], f"list_{method}_for_all_namespaces")
            listing = call(lambda: lister(label_selector=f"{MANAGED_BY}={MANAGER}"), f"listing shoal's {kind}s")
            for item in listing.items:
                obj = self.api_client.sanitize_for_serialization(item)
                # A list's items carry no kind or apiVersion (the real server leaves them out); without
                # them every object would look drifted and be patched on every pass.
                obj["kind"], obj["apiVersion"] = kind, "apps/v1" if api == "apps" else "v1"
                out.append(obj)
        return out

    def reconcile(self) -> None:
        """One pass. KubeError when the API refuses or fails (the next pass tries again)."""
        bundle = self.bundle()
        if not bundle:
            logger.info("no mesh root published yet; waypoints wait for it")
            return
        gateways, existing = self._gateways(), self._existing()

        def build(gateway):
            return kube_desired(gateway, self.image, bundle, self.waypoint_args)
        have = {_key(o): o for o in existing}
        todo = plan(gateways, existing, build)
        for key in blocked(gateways, existing, build):
            self._warn(key)
        now = time.monotonic()
        for obj in todo.apply:
            key = _key(obj)
            if key in have and covers(have[key], obj) or self._blocked_until.get(key, 0) > now:
                continue
            kind, namespace, name = key
            api, method = KINDS[kind]
            try:
                if key in have:
                    patch = getattr(self.apis[api], f"patch_namespaced_{method}")
                    call(lambda: patch(name, namespace, obj), f"patching {kind} {namespace}/{name}")
                else:
                    create = getattr(self.apis[api], f"create_namespaced_{method}")
                    call(lambda: create(namespace, obj), f"creating {kind} {namespace}/{name}")
                self.writes += 1
            except KubeConflict:
                self._warn(key)     # a same-named object shoal does not manage
                self._blocked_until[key] = now + BLOCKED_RETRY_SECONDS
        for kind, namespace, name in todo.delete:
            if not managed(have[(kind, namespace, name)]):
                continue
            api, method = KINDS[kind]
            remove = getattr(self.apis[api], f"delete_namespaced_{method}")
            try:
                call(lambda: remove(name, namespace), f"deleting {kind} {namespace}/{name}")
                self.writes += 1
            except KubeNotFound:
                pass        # the garbage collector was first
        if todo.delete:
            logger.info("waypoint objects removed", objects=[f"{k}/{ns}/{n}" for k, ns, n in todo.delete])
        if self._gateway_version is not None:
            taken = {k for k, until in self._blocked_until.items() if until > now}
            self._write_status(gateways, existing, build, taken)

    def _write_status(self, gateways: list[dict], existing: list[dict], build, taken: set) -> None:
        by_key = {_key(o): o for o in existing}

        def observe(gateway: dict) -> Observed:
            meta = gateway["metadata"]
            namespace, name = meta.get("namespace") or "default", meta["name"]
            deployment = by_key.get(("Deployment", namespace, name)) or {}
            service = by_key.get(("Service", namespace, name)) or {}
            ready = int((deployment.get("status") or {}).get("readyReplicas") or 0) >= 1
            address = (service.get("spec") or {}).get("clusterIP")
            return Observed(ready, address if address and address != "None" else None)
        version, now = self._gateway_version, self.now()
        updates = status_updates(gateways, existing, build, observe, now, taken)
        ingress = [g for g in gateways if (g.get("spec") or {}).get("gatewayClassName") == INGRESS_CLASS]
        if ingress:
            observed = self._observe_ingress()
            grants, routes = self._grants(), self._list_gateway_api("httproutes", version)
            for gateway in ingress:
                status = ingress_status(gateway, observed, now)
                status["listeners"] = listener_statuses(gateway, grants, routes, now)
                if status != (gateway.get("status") or {}):
                    updates.append((gateway, status))
        for gateway, status in updates:
            meta = gateway["metadata"]
            namespace, name = meta.get("namespace") or "default", meta["name"]
            try:
                call(lambda: self.custom.patch_namespaced_custom_object_status(
                    GATEWAY_GROUP, version, namespace, "gateways", name, {"status": status}),
                    f"writing the status of Gateway {namespace}/{name}")
                self.writes += 1
            except KubeNotFound:
                pass        # deleted meanwhile
        try:
            classes = self._list_gateway_api("gatewayclasses", version)
        except KubeNotFound:
            return
        for gatewayclass in classes:
            status = gatewayclass_status(gatewayclass, now)
            if status is None:
                continue
            name = gatewayclass["metadata"]["name"]
            call(lambda: self.custom.patch_cluster_custom_object_status(
                GATEWAY_GROUP, version, "gatewayclasses", name, {"status": status}),
                f"writing the status of GatewayClass {name}")
            self.writes += 1

    def _grants(self) -> list[dict]:
        """The ReferenceGrants (v1beta1, as upstream serves them); none when their CRD is not installed."""
        try:
            listing = call(lambda: self.custom.list_cluster_custom_object(GATEWAY_GROUP, "v1beta1", "referencegrants"),
                           f"listing referencegrants.{GATEWAY_GROUP}/v1beta1")
        except KubeNotFound:
            return []
        items = listing.get("items") or []
        for item in items:
            item.setdefault("apiVersion", f"{GATEWAY_GROUP}/v1beta1")
            item.setdefault("kind", "ReferenceGrant")
        return items

    def _observe_ingress(self) -> Observed:
        """Is a pod labelled as the ingress gateway ready, and what address does its LoadBalancer Service show
        (the load balancer's, else an external IP)?"""
        selector = ",".join(f"{k}={v}" for k, v in INGRESS_GATEWAY_SELECTOR.items())
        core = self.apis["core"]
        pods = call(lambda: core.list_pod_for_all_namespaces(label_selector=selector),
                    "listing the ingress gateway's pods")
        ready = any(pod_ready(self.api_client.sanitize_for_serialization(p)) for p in pods.items)
        services = call(lambda: core.list_service_for_all_namespaces(label_selector=selector),
                        "listing the ingress gateway's Services")
        address = None
        for item in services.items:
            service = self.api_client.sanitize_for_serialization(item)
            spec, status = service.get("spec") or {}, service.get("status") or {}
            if spec.get("type") != "LoadBalancer":
                continue
            balancer = (status.get("loadBalancer") or {}).get("ingress") or []
            ingress = [i.get("ip") or i.get("hostname") for i in balancer]
            address = next((a for a in ingress + list(spec.get("externalIPs") or []) if a), None) or address
        return Observed(ready, address)

    def _warn(self, key) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("a waypoint's object is taken by an object shoal does not manage; not touching it",
                           kind=key[0], namespace=key[1], name=key[2])

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.reconcile)
            except KubeError as e:
                logger.warning("waypoint controller pass failed; retrying at the next poll", error=str(e),
                               status=e.status)
            await asyncio.sleep(self.poll)


def published_bundle(api_client, namespace: str = "shoal-system") -> Callable[[], bytes | None]:
    """Reads the mesh root the CA publishes (ConfigMap shoal-system/shoal-ca-root-cert)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def read() -> bytes | None:
        try:
            cm = call(lambda: core.read_namespaced_config_map(ROOT_CERT_CONFIGMAP, namespace),
                      f"reading the mesh root (ConfigMap {namespace}/{ROOT_CERT_CONFIGMAP})")
        except KubeNotFound:
            return None
        data = (cm.data or {}).get("root-cert.pem")
        return data.encode() if data else None
    return read
