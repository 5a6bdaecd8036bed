"""What `shoal install` and `shoal uninstall` do to a cluster, decided before anything is done.

Install: the CRDs shoal reads that the cluster lacks (never over one it has:
upstream CRDs validate more, and replacing them could drop versions other
tools store), then every rendered object, server-side applied in the order
kustomize prints them.

Uninstall, in an order that never leaves a pod's traffic captured with no
ztunnel to carry it (fail closed, but not broken):
1. the node agent's DaemonSet goes (a stopped agent leaves redirection in place);
2. a cleanup DaemonSet runs `shoal node-agent --cleanup` on every node, in an
   init container with the agent's own mounts and rights; its pod turns ready
   only once that cleanup has exited 0, and uninstall waits for every node's;
3. then the ztunnels and the control plane go, what the waypoint controller
   made (by its label, in every namespace), then the rest in the reverse of
   kustomize's order, the namespace last;
4. CRDs only when asked, and only those shoal made (its managed-by label),
   since deleting a CRD deletes every object of its kind.
"""

from __future__ import annotations

import copy
import dataclasses

from shoal.install import InstallError

FIELD_MANAGER = "shoal"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"   # on the CRDs shoal made
NAMESPACE = "shoal-system"
NODE_AGENT = "shoal-node-agent"
ZTUNNEL = "shoal-ztunnel"
CLEANUP = "shoal-node-cleanup"
# What the control plane's waypoint controller makes, with this label, in users' namespaces.
WAYPOINT_MANAGED = ("shoal.io/managed-by", "waypoint-controller")

# (group, kind) -> (plural, namespaced), for every kind the manifests hold.
KINDS = {
    ("", "Namespace"): ("namespaces", False),
    ("", "ServiceAccount"): ("serviceaccounts", True),
    ("", "Service"): ("services", True),
    ("", "ConfigMap"): ("configmaps", True),
    ("", "Secret"): ("secrets", True),
    ("apps", "DaemonSet"): ("daemonsets", True),
    ("apps", "Deployment"): ("deployments", True),
    ("rbac.authorization.k8s.io", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io", "RoleBinding"): ("rolebindings", True),
    ("rbac.authorization.k8s.io", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"): ("validatingadmissionpolicies", False),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"):
        ("validatingadmissionpolicybindings", False),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("gateway.networking.k8s.io", "GatewayClass"): ("gatewayclasses", False),
}
# The kinds the waypoint controller makes, as (apiVersion, plural).
WAYPOINT_KINDS = (("apps/v1", "deployments"), ("v1", "services"), ("v1", "serviceaccounts"), ("v1", "configmaps"))


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one object lives in the API."""
    api_version: str
    kind: str
    plural: str
    namespace: str | None
    name: str

    @property
    def collection(self) -> str:
        prefix = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{self.namespace}/{self.plural}" if self.namespace else f"{prefix}/{self.plural}"

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


def target_of(obj: dict) -> Target:
    group = obj["apiVersion"].rpartition("/")[0]
    try:
        plural, namespaced = KINDS[(group, obj["kind"])]
    except KeyError:
        raise InstallError(f"the manifests hold a {obj['kind']} ({obj['apiVersion']}), which shoal install does "
                           "not know how to apply; apply them with `kubectl apply -k`") from None
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace") if namespaced else None
    if namespaced and not namespace:
        raise InstallError(f"{obj['kind']} {metadata.get('name')} in the manifests names no namespace")
    return Target(obj["apiVersion"], obj["kind"], plural, namespace, metadata["name"])


def set_redirect(objects: list[dict], mode: str) -> None:
    """The node agent's `--redirect` becomes `mode`."""
    agent = node_agent_container(objects)
    command = agent["command"]
    command[command.index("--redirect") + 1] = mode


def _agent_daemonset(objects: list[dict]) -> dict:
    for obj in objects:
        if obj["kind"] == "DaemonSet" and obj["metadata"]["name"] == NODE_AGENT:
            return obj
    raise InstallError(f"the manifests hold no DaemonSet {NODE_AGENT}; are they shoal's daemonset/?")


def node_agent_container(objects: list[dict]) -> dict:
    pod = _agent_daemonset(objects)["spec"]["template"]["spec"]
    for container in pod["containers"]:
        if container["name"] == "node-agent":
            return container
    raise InstallError(f"DaemonSet {NODE_AGENT} has no container node-agent")


@dataclasses.dataclass(frozen=True)
class InstallPlan:
    crds: tuple[dict, ...]            # to create: CRDs shoal reads that the cluster lacks
    crds_kept: tuple[str, ...]        # CRDs the cluster has already, left as they are
    objects: tuple[dict, ...]         # to apply, in this order


def plan_install(objects: list[dict], crds: list[dict], present_crds: set[str], *, with_crds: bool) -> InstallPlan:
    for obj in objects:
        target_of(obj)  # every kind known before anything is applied
    missing = tuple(c for c in crds if c["metadata"]["name"] not in present_crds) if with_crds else ()
    kept = tuple(sorted(c["metadata"]["name"] for c in crds if c["metadata"]["name"] in present_crds))
    return InstallPlan(crds=missing, crds_kept=kept, objects=tuple(objects))


def cleanup_daemonset(objects: list[dict]) -> dict:
    """The DaemonSet that runs `shoal node-agent --cleanup` on every node the agent ran on.

    Its init container is the agent's container (image, mounts, rights, node name)
    with `--cleanup`; the main container only sleeps, so a pod is ready exactly when
    its node's cleanup succeeded. A cleanup that fails keeps its pod unready
    (the kubelet retries it), and uninstall stops there, the ztunnel still running."""
    agent_set = _agent_daemonset(objects)
    pod = copy.deepcopy(agent_set["spec"]["template"]["spec"])
    agent = next(c for c in pod["containers"] if c["name"] == "node-agent")
    command = agent["command"]
    at = command.index("node-agent")
    cleanup = {key: value for key, value in agent.items()
               if key not in ("readinessProbe", "livenessProbe", "startupProbe", "ports", "lifecycle")}
    cleanup["name"] = "cleanup"
    cleanup["command"] = command[:at + 1] + ["--source", "kube", "--cleanup"]
    done = {"name": "done", "image": agent["image"], "imagePullPolicy": agent.get("imagePullPolicy", "IfNotPresent"),
            "command": ["sleep", "infinity"],
            "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"cpu": "10m", "memory": "16Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    pod["initContainers"] = [cleanup]
    pod["containers"] = [done]
    pod["terminationGracePeriodSeconds"] = 1
    labels = {"app": CLEANUP, "shoal.io/dataplane-mode": "none"}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": CLEANUP, "namespace": agent_set["metadata"]["namespace"], "labels": {"app": CLEANUP}},
            "spec": {"selector": {"matchLabels": {"app": CLEANUP}},
                     "template": {"metadata": {"labels": labels}, "spec": pod}}}


@dataclasses.dataclass(frozen=True)
class UninstallPlan:
    node_agent: Target
    cleanup: dict                     # the cleanup DaemonSet, created then deleted
    delete: tuple[Target, ...]        # after the cleanup, in this order (the namespace last)
    crds: tuple[str, ...]             # CRD names to delete (only with --crds, only shoal's)


def plan_uninstall(objects: list[dict], shoal_crds: set[str], *, with_crds: bool) -> UninstallPlan:
    targets = [target_of(obj) for obj in objects]
    agent = next(t for t in targets if t.kind == "DaemonSet" and t.name == NODE_AGENT)
    # The workloads first (the control plane's writes stay held by its admission policy
    # and RBAC until it is gone), then the rest in the reverse of kustomize's order.
    # The ztunnels before the control plane: while they drain they may still renew certificates.
    workloads = sorted((t for t in targets if t.kind in ("DaemonSet", "Deployment") and t != agent),
                       key=lambda t: t.kind != "DaemonSet")
    rest = workloads + [t for t in reversed(targets) if t not in workloads and t != agent and t.kind != "Namespace"]
    rest += [t for t in targets if t.kind == "Namespace"]
    return UninstallPlan(node_agent=agent, cleanup=cleanup_daemonset(objects), delete=tuple(rest),
                         crds=tuple(sorted(shoal_crds)) if with_crds else ())


def daemonset_done(obj: dict) -> bool:
    """A DaemonSet's pods are all scheduled, of its latest spec, and ready (as `kubectl rollout status`)."""
    status = obj.get("status") or {}
    desired = status.get("desiredNumberScheduled")
    return (desired is not None
            and (status.get("observedGeneration") or 0) >= (obj["metadata"].get("generation") or 0)
            and status.get("updatedNumberScheduled", 0) == desired
            and status.get("numberReady", 0) == desired)
