"""Carries out install and uninstall plans against a cluster, through the kubernetes client.

The one place that talks to the API server for `shoal install`/`uninstall`
(and `shoal waypoint`/`shoal config` with a kubeconfig): raw REST paths
through `shoal.kube_client`, server-side apply with field manager `shoal`,
and its errors turned into `InstallError`s that say what to check.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO
from urllib.parse import quote

from shoal import kube_client
from shoal.install import InstallError
from shoal.install.plan import (
    FIELD_MANAGER, MANAGED_BY_LABEL, WAYPOINT_KINDS, WAYPOINT_MANAGED, InstallPlan, Target, UninstallPlan,
    daemonset_done, target_of,
)
from shoal.kube_client import KubeError, KubeForbidden, KubeNotFound, KubeUnauthorized

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
    """The API calls the CLI makes against a cluster, with the user's credentials.

    Requests go through `shoal.kube_client` (429/5xx with Retry-After are tried
    again); what fails becomes an `InstallError` here, 401/403 saying that the
    user's own rights are short (the service accounts' RBAC is not in play)."""

    def __init__(self, api, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api = api
        self.clock, self.sleep = clock, sleep

    def call(self, method: str, path: str, doing: str, *, query: list | None = None, body: dict | None = None,
             content_type: str = "application/json") -> dict:
        """The answer's body; KubeNotFound passes through (callers say what a 404 means), the rest is an
        InstallError."""
        try:
            return kube_client.call(lambda: kube_client.request(self.api, method, path, query=query, body=body,
                                                                content_type=content_type, doing=doing),
                                    doing, sleep=self.sleep)
        except KubeNotFound:
            raise
        except (KubeUnauthorized, KubeForbidden) as e:
            raise InstallError(f"{doing}: the API server refused it ({e.status}); your credentials need the "
                               "rights for it (shoal install and uninstall need cluster-admin: they write RBAC, "
                               "CRDs and an admission policy)") from e
        except KubeError as e:
            raise InstallError(str(e)) from e

    def get(self, target: Target) -> dict | None:
        try:
            return self.call("GET", target.path, f"reading {target}")
        except KubeNotFound:
            return None

    def apply(self, obj: dict) -> None:
        target = target_of(obj)
        try:
            self.call("PATCH", target.path, f"applying {target}", body=obj,
                      content_type="application/apply-patch+yaml",
                      query=[("fieldManager", FIELD_MANAGER), ("force", "true")])
        except KubeNotFound as e:
            raise InstallError(f"{e}; is the CRD of {target.kind} installed? (daemonset/crds/README.md)") from e

    def delete(self, target: Target) -> bool:
        """True if it was there."""
        try:
            self.call("DELETE", target.path, f"deleting {target}", query=[("propagationPolicy", "Background")])
        except KubeNotFound:
            return False
        return True

    def list(self, path: str, label_selector: str) -> list[dict]:
        """The items; none when the kind is not served."""
        try:
            return self.call("GET", path, f"listing {path}", query=[("labelSelector", label_selector)])["items"]
        except KubeNotFound:
            return []

    def served(self, api_version: str) -> bool:
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            self.call("GET", path, f"asking whether {api_version} is served")
        except KubeNotFound:
            return False
        return True

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
        if not cluster.served(api_version):
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
    if cluster.get(Target("v1", "Namespace", "namespaces", None, agent.namespace)) is None:
        # Uninstalled already (or never installed): no agent ran, so no node holds anything of its;
        # what is cluster-scoped may still be there.
        print(f"no namespace {agent.namespace}: no node to clean", file=out)
        _delete(cluster, plan, out, timeout)
        return
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
    _delete(cluster, plan, out, timeout)


def _delete(cluster: Cluster, plan: UninstallPlan, out: TextIO, timeout: float) -> None:
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
