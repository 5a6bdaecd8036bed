"""Carries out install and uninstall plans against a cluster, through the kubernetes client.

The one place that talks to the API server for `shoal install`/`uninstall`
(and `shoal waypoint`/`shoal config` with a kubeconfig): raw REST paths
through `ApiClient.call_api`, server-side apply with field manager `shoal`,
and the client's exceptions turned into `InstallError`s that say what to check.
"""

from __future__ import annotations

import json
import time
from typing import Callable, TextIO
from urllib.parse import quote

from shoal.install import InstallError
from shoal.install.plan import (
    FIELD_MANAGER, MANAGED_BY_LABEL, WAYPOINT_KINDS, WAYPOINT_MANAGED, InstallPlan, Target, UninstallPlan,
    daemonset_done, target_of,
)

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient for --kubeconfig/--context, else $KUBECONFIG or ~/.kube/config, else in-cluster config."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig or context:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        else:
            try:
                config.load_kube_config(client_configuration=configuration)
            except (config.ConfigException, OSError):
                config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as e:
        raise InstallError(f"no cluster to talk to: {e}; pass --kubeconfig PATH (and --context NAME), set "
                           "KUBECONFIG, or run inside a pod with a service account") from e
    return client.ApiClient(configuration)


class Cluster:
    """The API calls install and uninstall make, and nothing else."""

    def __init__(self, api, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api = api
        self.clock, self.sleep = clock, sleep
        self.server = getattr(api.configuration, "host", "the API server")

    def request(self, method: str, path: str, *, query: list | None = None, body: dict | None = None,
                content_type: str = "application/json") -> tuple[int, dict | None]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            method, url, headers, payload, post = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers,
                body=body, auth_settings=["BearerToken"])
            response = self.api.call_api(method, url, header_params=headers, body=payload, post_params=post,
                                         _request_timeout=(10.0, 60.0))
            data = response.response.data
        except Exception as e:  # urllib3 and the client's own errors: the boundary
            raise InstallError(f"cannot reach the API server at {self.server}: {e}; check --kubeconfig and "
                               "--context") from e
        parsed = json.loads(data) if data else None
        if response.status in (401, 403):
            message = (parsed or {}).get("message", "") if isinstance(parsed, dict) else ""
            raise InstallError(f"the API server refused {method} {path} ({response.status}): {message}; "
                               "shoal install needs cluster-admin rights (it creates RBAC, CRDs and an admission "
                               "policy)")
        return response.status, parsed

    def _checked(self, status: int, body: dict | None, what: str) -> dict | None:
        if status >= 400:
            message = (body or {}).get("message", "") if isinstance(body, dict) else ""
            raise InstallError(f"{what} failed ({status}): {message}")
        return body

    def get(self, target: Target) -> dict | None:
        status, body = self.request("GET", target.path)
        return None if status == 404 else self._checked(status, body, f"reading {target}")

    def apply(self, obj: dict) -> None:
        target = target_of(obj)
        status, body = self.request("PATCH", target.path, body=obj, content_type="application/apply-patch+yaml",
                                    query=[("fieldManager", FIELD_MANAGER), ("force", "true")])
        self._checked(status, body, f"applying {target}")

    def delete(self, target: Target) -> bool:
        """True if it was there."""
        status, body = self.request("DELETE", target.path, query=[("propagationPolicy", "Background")])
        if status == 404:
            return False
        self._checked(status, body, f"deleting {target}")
        return True

    def list(self, path: str, label_selector: str) -> list[dict]:
        status, body = self.request("GET", path, query=[("labelSelector", label_selector)])
        if status == 404:
            return []
        return self._checked(status, body, f"listing {path}")["items"]

    def wait(self, what: str, done: Callable[[], bool], timeout: float, hint: str) -> None:
        deadline = self.clock() + timeout
        while not done():
            if self.clock() >= deadline:
                raise InstallError(f"timed out after {timeout:.0f} s waiting for {what}; {hint}")
            self.sleep(1.0)


def install(cluster: Cluster, plan: InstallPlan, out: TextIO, *, timeout: float) -> None:
    for crd in plan.crds:
        cluster.apply(crd)
        print(f"created CustomResourceDefinition {crd['metadata']['name']}", file=out)
    for name in plan.crds_kept:
        print(f"kept CustomResourceDefinition {name} (the cluster has it)", file=out)
    for crd in plan.crds:
        target = target_of(crd)
        cluster.wait(f"CRD {target.name} to be established", lambda t=target: _established(cluster.get(t)),
                     timeout, "check `kubectl get crd " + target.name + " -o yaml` (status.conditions)")
    _check_served(cluster, plan)
    for obj in plan.objects:
        cluster.apply(obj)
        print(f"applied {target_of(obj)}", file=out)


def _check_served(cluster: Cluster, plan: InstallPlan) -> None:
    """Every API the objects need is served, before any is applied (no half-install for a missing CRD)."""
    for api_version in sorted({obj["apiVersion"] for obj in plan.objects}):
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        status, _ = cluster.request("GET", path)
        if status == 404:
            raise InstallError(f"the API server does not serve {api_version}, which the manifests use; install its "
                               "CRDs first (daemonset/crds/README.md), or run shoal install without --no-crds")


def _established(crd: dict | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def shoal_crds(cluster: Cluster) -> set[str]:
    """The CRDs shoal made (its managed-by label); those it found in place it never deletes."""
    return {c["metadata"]["name"] for c in cluster.list(CRD_PATH, f"{MANAGED_BY_LABEL}={FIELD_MANAGER}")}


def present_crds(cluster: Cluster, names: list[str]) -> set[str]:
    return {name for name in names if cluster.get(Target("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                                          "customresourcedefinitions", None, name)) is not None}


def uninstall(cluster: Cluster, plan: UninstallPlan, out: TextIO, *, timeout: float) -> None:
    agent = plan.node_agent
    if cluster.delete(agent):
        print(f"deleted {agent}", file=out)
    cluster.wait(f"the node agents to stop ({agent})", lambda: not _pods(cluster, agent.namespace, "shoal-node-agent"),
                 timeout, f"check `kubectl -n {agent.namespace} get pods -l app=shoal-node-agent`")
    cleanup = target_of(plan.cleanup)
    cluster.apply(plan.cleanup)
    print(f"cleaning every node: {cleanup} runs `shoal node-agent --cleanup`", file=out)
    cluster.wait("every node's cleanup", lambda: daemonset_done(cluster.get(cleanup) or {"metadata": {}}), timeout,
                 f"the ztunnels are left running so that no pod loses its traffic; see `kubectl -n "
                 f"{cleanup.namespace} logs ds/{cleanup.name} -c cleanup`, fix it, and run `shoal uninstall` again")
    cluster.delete(cleanup)
    print(f"every node cleaned; deleted {cleanup}", file=out)
    for target in plan.delete:
        if cluster.delete(target):
            print(f"deleted {target}", file=out)
        if target.kind == "Deployment" and target.name == "shoal-control-plane":
            # Its last reconcile pass may still make waypoint objects: they go once no pod of it is left.
            cluster.wait("the control plane to stop", lambda: not _pods(cluster, target.namespace, target.name),
                         timeout, f"check `kubectl -n {target.namespace} get pods -l app={target.name}`")
            _delete_waypoint_objects(cluster, out)
    for name in plan.crds:
        if cluster.delete(Target("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                 "customresourcedefinitions", None, name)):
            print(f"deleted CustomResourceDefinition {name}", file=out)


def _pods(cluster: Cluster, namespace: str, app: str) -> list[dict]:
    return cluster.list(f"/api/v1/namespaces/{namespace}/pods", f"app={quote(app)}")


def _delete_waypoint_objects(cluster: Cluster, out: TextIO) -> None:
    key, value = WAYPOINT_MANAGED
    for api_version, plural in WAYPOINT_KINDS:
        prefix = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        for obj in cluster.list(f"{prefix}/{plural}", f"{key}={value}"):
            metadata = obj["metadata"]
            target = Target(api_version, obj.get("kind") or plural, plural, metadata["namespace"], metadata["name"])
            if cluster.delete(target):
                print(f"deleted {plural} {metadata['namespace']}/{metadata['name']} (made by the waypoint "
                      "controller)", file=out)
