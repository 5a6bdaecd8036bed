"""What the Kubernetes API double serves: resource types, and how a request path names one.

A `ResourceType` is one (group, plural) with its kind, scope, versions and
whether it has a `status` subresource. `BUILTIN` holds the built-in kinds
the mesh and its installer touch; `MESH_CRDS` the custom resources shoal
reads (Gateway API, Istio, SMI), served only while "installed" (the double's
`served` table, or a CustomResourceDefinition created through the API).

`parse_path` turns a URL path into a `Route` (group, version, plural,
namespace, name, subresource), exactly as the API server lays its paths out:
    /api/v1/<plural>                          cluster-scoped or all namespaces
    /api/v1/namespaces/<ns>/<plural>[/<name>[/<subresource>]]
    /api/v1/<plural>/<name>[/<subresource>]   cluster-scoped (Namespace, Node)
    /apis/<group>/<version>/...               the same under a group
"""

from __future__ import annotations

from dataclasses import dataclass


class ApiStatus(Exception):
    """A failure the API server answers with a `kind: Status` body."""

    def __init__(self, code: int, reason: str, message: str, headers: dict | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message, self.headers = code, reason, message, headers or {}


@dataclass(frozen=True)
class ResourceType:
    group: str                   # "" for the core API
    versions: tuple[str, ...]    # every version served once installed, preferred first
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False         # has a status subresource: the main path ignores status, /status only it

    def api_version(self, version: str | None = None) -> str:
        version = version or self.versions[0]
        return f"{self.group}/{version}" if self.group else version

    def collection_path(self, namespace: str | None = None, version: str | None = None) -> str:
        prefix = f"/apis/{self.group}/{version or self.versions[0]}" if self.group else f"/api/{version or 'v1'}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def object_path(self, namespace: str | None, name: str, version: str | None = None) -> str:
        return f"{self.collection_path(namespace if self.namespaced else None, version)}/{name}"


def _t(group, versions, plural, kind, namespaced=True, status=False) -> ResourceType:
    return ResourceType(group, tuple(versions), plural, kind, namespaced, status)


BUILTIN: tuple[ResourceType, ...] = (
    _t("", ["v1"], "namespaces", "Namespace", namespaced=False, status=True),
    _t("", ["v1"], "nodes", "Node", namespaced=False, status=True),
    _t("", ["v1"], "pods", "Pod", status=True),
    _t("", ["v1"], "services", "Service", status=True),
    _t("", ["v1"], "serviceaccounts", "ServiceAccount"),
    _t("", ["v1"], "configmaps", "ConfigMap"),
    _t("", ["v1"], "secrets", "Secret"),
    _t("", ["v1"], "events", "Event"),
    _t("", ["v1"], "endpoints", "Endpoints"),
    _t("apps", ["v1"], "deployments", "Deployment", status=True),
    _t("apps", ["v1"], "daemonsets", "DaemonSet", status=True),
    _t("apps", ["v1"], "replicasets", "ReplicaSet", status=True),
    _t("apps", ["v1"], "statefulsets", "StatefulSet", status=True),
    _t("rbac.authorization.k8s.io", ["v1"], "roles", "Role"),
    _t("rbac.authorization.k8s.io", ["v1"], "rolebindings", "RoleBinding"),
    _t("rbac.authorization.k8s.io", ["v1"], "clusterroles", "ClusterRole", namespaced=False),
    _t("rbac.authorization.k8s.io", ["v1"], "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _t("apiextensions.k8s.io", ["v1"], "customresourcedefinitions", "CustomResourceDefinition",
       namespaced=False, status=True),
    _t("coordination.k8s.io", ["v1"], "leases", "Lease"),
    _t("discovery.k8s.io", ["v1"], "endpointslices", "EndpointSlice"),
    _t("networking.k8s.io", ["v1"], "networkpolicies", "NetworkPolicy"),
    _t("policy", ["v1"], "poddisruptionbudgets", "PodDisruptionBudget", status=True),
    _t("admissionregistration.k8s.io", ["v1"], "mutatingwebhookconfigurations",
       "MutatingWebhookConfiguration", namespaced=False),
    _t("admissionregistration.k8s.io", ["v1"], "validatingwebhookconfigurations",
       "ValidatingWebhookConfiguration", namespaced=False),
    # Create-only reviews: answered, never stored.
    _t("authentication.k8s.io", ["v1"], "tokenreviews", "TokenReview", namespaced=False),
    _t("authorization.k8s.io", ["v1"], "subjectaccessreviews", "SubjectAccessReview", namespaced=False),
)

MESH_CRDS: tuple[ResourceType, ...] = (
    _t("gateway.networking.k8s.io", ["v1", "v1beta1"], "gateways", "Gateway", status=True),
    _t("gateway.networking.k8s.io", ["v1", "v1beta1"], "gatewayclasses", "GatewayClass", namespaced=False,
       status=True),
    _t("gateway.networking.k8s.io", ["v1", "v1beta1"], "httproutes", "HTTPRoute", status=True),
    _t("gateway.networking.k8s.io", ["v1beta1"], "referencegrants", "ReferenceGrant"),   # no status subresource
    _t("networking.istio.io", ["v1", "v1beta1", "v1alpha3"], "virtualservices", "VirtualService", status=True),
    _t("networking.istio.io", ["v1", "v1beta1", "v1alpha3"], "destinationrules", "DestinationRule", status=True),
    # After Gateway API's Gateway: type_for("Gateway") with no apiVersion stays Gateway API's.
    _t("networking.istio.io", ["v1", "v1beta1", "v1alpha3"], "gateways", "Gateway", status=True),
    _t("networking.istio.io", ["v1", "v1beta1", "v1alpha3"], "serviceentries", "ServiceEntry", status=True),
    _t("security.istio.io", ["v1", "v1beta1"], "authorizationpolicies", "AuthorizationPolicy", status=True),
    _t("security.istio.io", ["v1", "v1beta1"], "peerauthentications", "PeerAuthentication", status=True),
    _t("split.smi-spec.io", ["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"], "trafficsplits", "TrafficSplit"),
)

REVIEWS = {"tokenreviews", "subjectaccessreviews"}


def from_crd(crd: dict) -> ResourceType:
    """The resource type a CustomResourceDefinition (apiextensions.k8s.io/v1) defines."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not spec.get("group") or not names.get("plural") or not names.get("kind") or not versions:
        raise ValueError("a CustomResourceDefinition needs spec.group, spec.names.plural, spec.names.kind "
                         "and at least one served version")
    storage = [v["name"] for v in versions if v.get("storage")]
    ordered = storage + [v["name"] for v in versions if v["name"] not in storage]
    status = any("status" in (v.get("subresources") or {}) for v in versions)
    return ResourceType(spec["group"], tuple(ordered), names["plural"], names["kind"],
                        spec.get("scope", "Namespaced") == "Namespaced", status)


@dataclass(frozen=True)
class Route:
    group: str
    version: str
    plural: str
    namespace: str | None        # from the path (None: all namespaces, or cluster-scoped)
    name: str | None
    subresource: str | None


def parse_path(path: str, namespaced: set[tuple[str, str]]) -> Route | None:
    """The route of a resource path, or None if it names no resource. `namespaced` holds the
    (group, plural) pairs that are namespaced, to tell /api/v1/namespaces/x/pods from
    /api/v1/namespaces/x/status."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, rest[2]) in namespaced:
        namespace, rest = rest[1], rest[2:]
    else:
        namespace = None
    if not rest or len(rest) > 3:
        return None
    return Route(group, version, rest[0], namespace, rest[1] if len(rest) > 1 else None,
                 rest[2] if len(rest) > 2 else None)
