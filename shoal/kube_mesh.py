"""The mesh's objects on a Kubernetes cluster, as `shoal waypoint` and `shoal config` use them.

The same verbs as against a local cluster's store, through the API server:
waypoint Gateways (server-side applied, field manager `shoal`, so labels a
user added stay), the `use-waypoint` label on a namespace (a merge patch of
that one label), the waypoint pods' readiness, and the ztunnel pod of a node.

Which cluster: `target(args)` says whether a command acts on a local cluster
(`--cluster NAME`, or nothing else given) or on Kubernetes (`--kubeconfig`,
`--context`, `$KUBECONFIG`, or a pod's service account).
"""

from __future__ import annotations

import argparse
import os

from shoal.contracts import GATEWAY_NAME_LABEL, USE_WAYPOINT, WAYPOINT_CLASSES
from shoal.install import InstallError
from shoal.install.cluster import Cluster, api_client
from shoal.install.plan import Target
from shoal.kube_client import KubeNotFound

GATEWAYS = "/apis/gateway.networking.k8s.io/v1"
ZTUNNEL_NAMESPACE = "shoal-system"
ZTUNNEL_APP = "shoal-ztunnel"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """--kubeconfig and --context, beside the command's --cluster (which must default to None)."""
    parser.add_argument("--kubeconfig", help="act on this Kubernetes cluster's kubeconfig (default: $KUBECONFIG, "
                                             "or the pod's service account) instead of a local cluster")
    parser.add_argument("--context", help="kubeconfig context (implies a Kubernetes cluster)")


def on_kubernetes(args: argparse.Namespace, environ=os.environ) -> bool:
    """A Kubernetes cluster when one is named (--kubeconfig, --context), or when no local cluster is
    (--cluster) and the environment names one ($KUBECONFIG, or running in a pod)."""
    if args.kubeconfig or args.context:
        if args.cluster is not None:
            raise InstallError("--cluster names a local cluster and --kubeconfig/--context a Kubernetes one; "
                               "give one of them")
        return True
    if args.cluster is not None:
        return False
    return bool(environ.get("KUBECONFIG") or environ.get("KUBERNETES_SERVICE_HOST"))


def connect(args: argparse.Namespace) -> Cluster:
    return Cluster(api_client(args.kubeconfig, args.context))


NO_GATEWAY_API = ("the API server does not serve Gateways (gateway.networking.k8s.io/v1): install the Gateway API "
                  "CRDs (daemonset/crds/README.md)")


def is_waypoint(gateway: dict | None) -> bool:
    return gateway is not None and (gateway.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES


def gateway_path(namespace: str, name: str | None = None) -> str:
    path = f"{GATEWAYS}/namespaces/{namespace}/gateways"
    return f"{path}/{name}" if name else path


def get_gateway(cluster: Cluster, namespace: str, name: str) -> dict | None:
    try:
        return cluster.call("GET", gateway_path(namespace, name), f"reading Gateway {namespace}/{name}")
    except KubeNotFound:
        return None


def namespace_exists(cluster: Cluster, namespace: str) -> bool:
    return cluster.get(Target("v1", "Namespace", "namespaces", None, namespace)) is not None


def apply_gateway(cluster: Cluster, gateway: dict) -> None:
    meta = gateway["metadata"]
    try:
        cluster.call("PATCH", gateway_path(meta["namespace"], meta["name"]),
                     f"applying Gateway {meta['namespace']}/{meta['name']}", body=gateway,
                     content_type="application/apply-patch+yaml", query=[("fieldManager", "shoal"), ("force", "true")])
    except KubeNotFound as e:
        raise InstallError(NO_GATEWAY_API) from e


def label_namespace(cluster: Cluster, namespace: str, waypoint: str) -> None:
    cluster.call("PATCH", f"/api/v1/namespaces/{namespace}", f"labelling namespace {namespace}",
                 body={"metadata": {"labels": {USE_WAYPOINT: waypoint}}}, content_type="application/merge-patch+json")


def delete_gateway(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.delete(Target(GATEWAYS.removeprefix("/apis/"), "Gateway", "gateways", namespace, name))


def waypoints(cluster: Cluster, namespace: str | None) -> list[dict]:
    path = gateway_path(namespace) if namespace else f"{GATEWAYS}/gateways"
    try:
        return [g for g in cluster.call("GET", path, "listing Gateways")["items"] if is_waypoint(g)]
    except KubeNotFound as e:
        raise InstallError(NO_GATEWAY_API) from e


def pods(cluster: Cluster, namespace: str, label_selector: str, field_selector: str | None = None) -> list[dict]:
    query = [("labelSelector", label_selector)] + ([("fieldSelector", field_selector)] if field_selector else [])
    try:
        return cluster.call("GET", f"/api/v1/namespaces/{namespace}/pods", f"listing pods in {namespace}",
                            query=query)["items"]
    except KubeNotFound:
        return []


def waypoint_pods(cluster: Cluster, namespace: str, name: str) -> list[dict]:
    return pods(cluster, namespace, f"{GATEWAY_NAME_LABEL}={name}")


def ztunnel_pod(cluster: Cluster, node: str) -> dict:
    """The running ztunnel pod of `node`; an InstallError naming what to check when there is none."""
    found = [p for p in pods(cluster, ZTUNNEL_NAMESPACE, f"app={ZTUNNEL_APP}", f"spec.nodeName={node}")
             if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    if not found:
        raise InstallError(f"no running ztunnel on node {node!r}; check `kubectl get nodes` for the name and "
                           f"`kubectl -n {ZTUNNEL_NAMESPACE} get pods -l app={ZTUNNEL_APP} -o wide`")
    # During a surge upgrade two run on the node: the newer one holds the pods.
    return max(found, key=lambda p: p["metadata"].get("creationTimestamp") or "")


def ztunnel_dump(cluster: Cluster, node: str, port: int, timeout: float = 10.0) -> dict:
    """The config dump of `node`'s ztunnel: its admin port (127.0.0.1 in the node's netns, since the
    ztunnel runs with hostNetwork) reached through the API server's port-forward, as kubectl does."""
    import json

    from kubernetes import client
    from kubernetes.stream import portforward

    pod = ztunnel_pod(cluster, node)
    name = pod["metadata"]["name"]
    try:
        forward = portforward(client.CoreV1Api(cluster.api).connect_get_namespaced_pod_portforward,
                              name, ZTUNNEL_NAMESPACE, ports=str(port))
    except Exception as e:  # the client's websocket and API errors: the boundary
        raise InstallError(f"cannot port-forward to {ZTUNNEL_NAMESPACE}/{name}: {e}; the port-forward needs the "
                           "pods/portforward permission (create)") from e
    sock = forward.socket(port)
    raw, failure = b"", None
    try:
        sock.settimeout(timeout)
        sock.sendall(b"GET /config_dump HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while chunk := sock.recv(65536):
            raw += chunk
    except OSError as e:
        failure = str(e)
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if failure or head.split(b" ", 2)[1:2] != [b"200"]:
        # The API server's own words (on the port's error channel) say more than a broken pipe.
        error = forward.error(port) or failure or head.split(b"\r\n", 1)[0].decode("latin-1") or "no answer"
        raise InstallError(f"the ztunnel {ZTUNNEL_NAMESPACE}/{name} did not answer on {port}: {error}; check "
                           f"`kubectl -n {ZTUNNEL_NAMESPACE} logs {name}`")
    try:
        return json.loads(body)
    except ValueError as e:
        raise InstallError(f"the ztunnel {ZTUNNEL_NAMESPACE}/{name} answered on {port} with no JSON dump ({e}); "
                           "is that port its admin port?") from e
