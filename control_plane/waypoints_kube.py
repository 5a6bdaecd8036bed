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
delete what no Gateway wants. An object of the same name that it does not
manage is left alone, reported once, and tried again after a minute. The control plane's service account
needs create/patch/delete on serviceaccounts, services, configmaps and
deployments for this.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from shoal import log
from shoal.contracts import CONTROL_PLANE_GRPC_PORT

from control_plane.authn import TOKEN_AUDIENCE
from control_plane.waypoints import (
    GATEWAY_NAME, MANAGED_BY, MANAGER, _key, blocked, desired, managed, plan,
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


def kube_desired(gateway: dict, image: str, bundle_pem: bytes) -> list[dict]:
    objects = desired(gateway, kube_argv)
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
    objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": namespace,
                                 "labels": {MANAGED_BY: MANAGER, GATEWAY_NAME: "all"}},
                    "data": {"root-cert.pem": bundle_pem.decode()}})
    return objects


def covers(have, want) -> bool:
    """Every field of `want` is in `have` with the same value (the API server adds defaults)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and covers(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(covers(h, w) for h, w in zip(have, want))
    return have == want


class KubeWaypointController:
    def __init__(self, api_client, image: str, bundle: Callable[[], bytes | None], poll: float = 5.0) -> None:
        from kubernetes import client

        self.apis = {"core": client.CoreV1Api(api_client), "apps": client.AppsV1Api(api_client)}
        self.custom = client.CustomObjectsApi(api_client)
        self.api_client = api_client
        self.image = image
        self.bundle = bundle
        self.poll = poll
        self._warned: set = set()
        self._blocked_until: dict[tuple, float] = {}   # names held by others: tried again after a while
        self.writes = 0

    def _gateways(self) -> list[dict]:
        from kubernetes.client.exceptions import ApiException

        for version in ("v1", "v1beta1"):
            try:
                listing = self.custom.list_cluster_custom_object(GATEWAY_GROUP, version, "gateways")
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            items = listing.get("items") or []
            for item in items:
                item.setdefault("apiVersion", f"{GATEWAY_GROUP}/{version}")
                item.setdefault("kind", "Gateway")
            return items
        return []

    def _existing(self) -> list[dict]:
        out = []
        for kind, (api, method) in KINDS.items():
            listing = getattr(self.apis[api], f"list_{method}_for_all_namespaces")(
                label_selector=f"{MANAGED_BY}={MANAGER}")
            for item in listing.items:
                obj = self.api_client.sanitize_for_serialization(item)
                obj["kind"] = kind
                out.append(obj)
        return out

    def reconcile(self) -> None:
        from kubernetes.client.exceptions import ApiException

        bundle = self.bundle()
        if not bundle:
            logger.info("no mesh root published yet; waypoints wait for it")
            return
        gateways, existing = self._gateways(), self._existing()

        def build(gateway):
            return kube_desired(gateway, self.image, bundle)
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
                    getattr(self.apis[api], f"patch_namespaced_{method}")(name, namespace, obj)
                else:
                    getattr(self.apis[api], f"create_namespaced_{method}")(namespace, obj)
                self.writes += 1
            except ApiException as e:
                if e.status != 409:
                    raise
                self._warn(key)     # a same-named object shoal does not manage
                self._blocked_until[key] = now + BLOCKED_RETRY_SECONDS
        for kind, namespace, name in todo.delete:
            if not managed(have[(kind, namespace, name)]):
                continue
            api, method = KINDS[kind]
            try:
                getattr(self.apis[api], f"delete_namespaced_{method}")(name, namespace)
                self.writes += 1
            except ApiException as e:
                if e.status != 404:
                    raise
        if todo.delete:
            logger.info("waypoint objects removed", objects=[f"{k}/{ns}/{n}" for k, ns, n in todo.delete])

    def _warn(self, key) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("a waypoint's object is taken by an object shoal does not manage; not touching it",
                           kind=key[0], namespace=key[1], name=key[2])

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.reconcile)
            except Exception as e:  # noqa: BLE001 - API errors: log, try again next round
                hint = ("; the control plane's service account needs create/patch/delete on serviceaccounts, "
                        "services, configmaps and deployments" if getattr(e, "status", None) == 403 else "")
                logger.warning("waypoint controller pass failed; retrying",
                               error=f"{type(e).__name__}: {getattr(e, 'reason', None) or e}{hint}")
            await asyncio.sleep(self.poll)


def published_bundle(api_client, namespace: str = "shoal-system") -> Callable[[], bytes | None]:
    """Reads the mesh root the CA publishes (ConfigMap shoal-system/shoal-ca-root-cert)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)

    def read() -> bytes | None:
        try:
            cm = core.read_namespaced_config_map(ROOT_CERT_CONFIGMAP, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        data = (cm.data or {}).get("root-cert.pem")
        return data.encode() if data else None
    return read
