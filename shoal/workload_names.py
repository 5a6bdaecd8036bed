"""How the mesh names a workload, in one place: the control plane, the ztunnel and the waypoint all ask here.

Istio's telemetry names each end of a request three ways, and dashboards
and Kiali group by them, so every part must give the same answer:
- the *workload*: the controller that owns the pod (a ReplicaSet's
  Deployment, `reviews-v1`), not the pod (`reviews-v1-7d9f8c6b5d-x2x4p`) and
  not the app (`reviews`);
- the *canonical service*: label `service.istio.io/canonical-name`, else
  `app.kubernetes.io/name`, else `app`, else the workload's name;
- the *canonical revision*: label `service.istio.io/canonical-revision`,
  else `app.kubernetes.io/version`, else `version`, else `latest`.
`<side>_app` and `<side>_version` are the canonical service and revision, as
Istio's ztunnel reports them. A peer the proxy does not know is "unknown"
everywhere.

The pod-side functions read a Kubernetes Pod (a dict); the telemetry-side
ones read a `shoal.model.Workload`, which carries what the control plane
derived here.
"""

from __future__ import annotations

import re
from typing import Mapping

from shoal.model import Workload

UNKNOWN = "unknown"
LATEST = "latest"
CLUSTER_ID = "Kubernetes"  # Istio's default cluster id, which dashboards expect

# A ReplicaSet made by a Deployment is named <deployment>-<pod-template-hash>.
_REPLICASET_HASH = re.compile(r"-[a-z0-9]{5,10}$")
# A Job made by a CronJob is named <cronjob>-<scheduled minute since the epoch>.
_CRONJOB_SUFFIX = re.compile(r"-[0-9]{8,}$")


def _meta(pod: Mapping) -> Mapping:
    return pod.get("metadata") or {}


def workload_name(pod: Mapping) -> str:
    """The name of the controller that owns the pod: a ReplicaSet's Deployment, a Job's CronJob, any other
    owner itself; a pod nobody owns is its own workload."""
    meta = _meta(pod)
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller", True) and owner.get("name"):
            name = str(owner["name"])
            if owner.get("kind") == "ReplicaSet":
                return _REPLICASET_HASH.sub("", name)
            if owner.get("kind") == "Job":
                return _CRONJOB_SUFFIX.sub("", name)
            return name
    return str(meta.get("name", ""))


def canonical_names(pod: Mapping) -> tuple[str, str]:
    """(canonical service, canonical revision) of a pod, from its labels as Istio reads them."""
    labels = _meta(pod).get("labels") or {}
    service = (labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name")
               or labels.get("app") or workload_name(pod))
    revision = (labels.get("service.istio.io/canonical-revision") or labels.get("app.kubernetes.io/version")
                or labels.get("version") or LATEST)
    return str(service), str(revision)


def workload_label(w: Workload) -> str:
    """What `<side>_workload` says of a known workload (the pod's own name when the control plane gave none,
    as for a pod without an owner)."""
    return w.workload_name or w.name


def telemetry_labels(side: str, w: Workload | None) -> dict[str, str]:
    """Istio's per-end labels for `side` ("source" or "destination"): workload, its namespace, app, version,
    canonical service and revision, cluster."""
    if w is None:
        return {f"{side}_{k}": UNKNOWN for k in ("workload", "workload_namespace", "app", "version",
                                                 "canonical_service", "canonical_revision", "cluster")}
    service = w.canonical_service or workload_label(w)
    revision = w.canonical_revision or LATEST
    return {
        f"{side}_workload": workload_label(w),
        f"{side}_workload_namespace": w.namespace,
        f"{side}_app": service,
        f"{side}_version": revision,
        f"{side}_canonical_service": service,
        f"{side}_canonical_revision": revision,
        f"{side}_cluster": CLUSTER_ID,
    }


def access_log_fields(side: str, w: Workload | None) -> dict[str, str | None]:
    """The same names for an access-log line (`side` is "src" or "dst"): the workload as the metrics name
    it, and the pod, so a line can be matched to a series and to `kubectl get pod`."""
    if w is None:
        return {f"{side}_workload": None, f"{side}_namespace": None, f"{side}_pod": None,
                f"{side}_canonical_service": None, f"{side}_canonical_revision": None}
    labels = telemetry_labels("x", w)
    return {f"{side}_workload": labels["x_workload"], f"{side}_namespace": w.namespace, f"{side}_pod": w.name,
            f"{side}_canonical_service": labels["x_canonical_service"],
            f"{side}_canonical_revision": labels["x_canonical_revision"]}


def service_labels(hostname: str, destination: Workload | None = None) -> tuple[str, str]:
    """(destination_service_name, destination_service_namespace), as Istio reports them: a Kubernetes
    Service's name and namespace from `name.namespace.svc...`; any other host (a ServiceEntry's) by its
    whole name, in the namespace of the endpoint it reached (the entry's), else unknown."""
    if not hostname:
        return UNKNOWN, UNKNOWN
    labels = hostname.split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[0], labels[1]
    return hostname, destination.namespace if destination is not None else UNKNOWN


def live_workloads(workloads) -> set[tuple[str, str]]:
    """(namespace, `<side>_workload` label) of the workloads a proxy knows: the series of any other are stale."""
    return {(w.namespace, workload_label(w)) for w in workloads}
