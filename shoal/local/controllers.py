"""The local cluster's controllers: Deployments, the scheduler, Endpoints.

Each is a pure function from the store's objects to the writes it wants, so
the daemon can apply them and tests can check them without a cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json

from shoal.local import services
from shoal.local.layout import node_name

HOSTNAME_LABEL = "kubernetes.io/hostname"


def template_hash(deployment: dict) -> str:
    template = deployment.get("spec", {}).get("template", {})
    return hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:8]


def deployment_pods(deployment: dict) -> list[dict]:
    """The Pods a Deployment wants: `replicas` copies of its template, named deterministically."""
    meta, spec = deployment["metadata"], deployment.get("spec", {})
    template = spec.get("template", {})
    digest = template_hash(deployment)
    pods = []
    for i in range(int(spec.get("replicas", 1))):
        tmeta = copy.deepcopy(template.get("metadata") or {})
        labels = {**(tmeta.get("labels") or {}), "pod-template-hash": digest}
        pods.append({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{digest}-{i}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": tmeta.get("annotations") or {},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": meta["name"], "uid": meta.get("uid", "")}],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
        })
    return pods


def reconcile_deployments(deployments: list[dict], pods: list[dict]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Pods to create and pods to delete so that every Deployment has exactly its replicas."""
    existing = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    create, delete = [], []
    wanted_keys = set()
    for deployment in deployments:
        for pod in deployment_pods(deployment):
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            wanted_keys.add(key)
            if key not in existing:
                create.append(pod)
    deployment_keys = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in deployments}
    for key, pod in existing.items():
        for owner in pod["metadata"].get("ownerReferences", []) or []:
            if owner.get("kind") != "Deployment":
                continue
            if (key[0], owner["name"]) not in deployment_keys or key not in wanted_keys:
                delete.append(("Pod", key[0], key[1]))
    return create, delete


def schedule(pods: list[dict], nodes: int) -> dict[tuple[str, str], str]:
    """Binds unscheduled pods: a `kubernetes.io/hostname` nodeSelector, else the least loaded node."""
    load = {node_name(i): 0 for i in range(1, nodes + 1)}
    for pod in pods:
        bound = pod.get("spec", {}).get("nodeName")
        if bound in load and not pod.get("spec", {}).get("hostNetwork"):
            load[bound] += 1
    bindings = {}
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        spec = pod.get("spec", {})
        if spec.get("nodeName"):
            continue
        wanted = (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL)
        if wanted:
            if wanted not in load:
                continue  # stays Pending, as an unschedulable pod does
            chosen = wanted
        else:
            chosen = min(load, key=lambda n: (load[n], int(n[4:])))
        load[chosen] += 1
        bindings[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = chosen
    return bindings


def unschedulable(pod: dict, nodes: int) -> str | None:
    wanted = (pod.get("spec", {}).get("nodeSelector") or {}).get(HOSTNAME_LABEL)
    if wanted and wanted not in {node_name(i) for i in range(1, nodes + 1)}:
        return f"nodeSelector {HOSTNAME_LABEL}={wanted} matches no node"
    node = pod.get("spec", {}).get("nodeName")
    if node and node not in {node_name(i) for i in range(1, nodes + 1)}:
        return f"spec.nodeName {node} is not a node of this cluster"
    return None


def endpoints_objects(service_list: list[dict], pods: list[dict]) -> list[dict]:
    return [services.endpoints_object(s, services.endpoints(s, pods)) for s in service_list]
