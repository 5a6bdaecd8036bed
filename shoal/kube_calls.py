"""Every Kubernetes API call shoal's in-cluster parts make: the ground truth for their RBAC.

One row per (component, API group, resource, verb, subresource). The RBAC in
`daemonset/` grants exactly these (its test reads `API_CALLS`), and
tests/shoal/test_kube_calls.py keeps this list in step with the code: it runs
every adapter against the API double and requires the calls it sees to be
exactly these rows, no more, no less.

Who calls what:
- control plane, config source (`control_plane.sources.kube`): list and
  watch every kind it translates; create Events (ShoalInvalidConfig); get,
  by name, the TLS Secrets ingress Gateways name (never list or watch
  Secrets: that would read them all);
- control plane, CA (`control_plane.ca_store`): its Secret and the root-cert
  ConfigMap in shoal-system;
- control plane, status writer (`control_plane.status_kube`): patch the
  status of the mesh objects it analyses;
- control plane, authentication (`control_plane.authn`): TokenReviews, and
  a Pod's node for an unbound node token;
- control plane, waypoint controller (`control_plane.waypoints_kube`): what
  it makes for a waypoint (ServiceAccounts, Deployments, Services, the
  namespace's root-cert ConfigMap), the Gateways' and the GatewayClass's
  status, and the mesh root it copies;
- node agent (`node_agent.sources`): its node's Pods and all Namespaces, and
  Events about the pods it should mesh and cannot.
The ztunnel and the waypoints make no API call.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTROL_PLANE = "control-plane"
NODE_AGENT = "node-agent"

GATEWAY_API = "gateway.networking.k8s.io"
ISTIO_NETWORKING = "networking.istio.io"
ISTIO_SECURITY = "security.istio.io"
SMI_SPLIT = "split.smi-spec.io"


@dataclass(frozen=True, order=True)
class ApiCall:
    component: str
    group: str            # "" for the core API
    resource: str         # the plural
    verb: str             # get, list, watch, create, update, patch, delete
    subresource: str = ""

    @property
    def rbac_resource(self) -> str:
        """As RBAC names it: `gateways/status`."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _calls(component: str, group: str, resource: str, *verbs: str, subresource: str = "") -> list[ApiCall]:
    return [ApiCall(component, group, resource, verb, subresource) for verb in verbs]


API_CALLS: tuple[ApiCall, ...] = tuple(sorted(
    # the config source: list and watch each kind
    _calls(CONTROL_PLANE, "", "namespaces", "list", "watch")
    + _calls(CONTROL_PLANE, "", "pods", "get", "list", "watch")                      # get: authn
    + _calls(CONTROL_PLANE, "", "services", "list", "watch", "create", "patch", "delete")
    + _calls(CONTROL_PLANE, "", "serviceaccounts", "list", "watch", "create", "patch", "delete")
    + _calls(CONTROL_PLANE, "", "events", "create")
    + _calls(CONTROL_PLANE, "", "secrets", "get", "create", "update")                # the CA; get: TLS Secrets
    + _calls(CONTROL_PLANE, "", "configmaps", "get", "list", "create", "update", "patch", "delete")
    + _calls(CONTROL_PLANE, "apps", "deployments", "list", "create", "patch", "delete")
    + _calls(CONTROL_PLANE, GATEWAY_API, "gateways", "list", "watch")
    + _calls(CONTROL_PLANE, GATEWAY_API, "gateways", "patch", subresource="status")
    + _calls(CONTROL_PLANE, GATEWAY_API, "gatewayclasses", "list")
    + _calls(CONTROL_PLANE, GATEWAY_API, "gatewayclasses", "patch", subresource="status")
    + _calls(CONTROL_PLANE, GATEWAY_API, "httproutes", "list", "watch")
    + _calls(CONTROL_PLANE, GATEWAY_API, "referencegrants", "list", "watch")      # cross-namespace refs
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "virtualservices", "list", "watch")
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "destinationrules", "list", "watch")
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "gateways", "list", "watch")           # ingress Gateways
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "serviceentries", "list", "watch")
    + _calls(CONTROL_PLANE, ISTIO_SECURITY, "authorizationpolicies", "list", "watch")
    + _calls(CONTROL_PLANE, ISTIO_SECURITY, "peerauthentications", "list", "watch")
    + _calls(CONTROL_PLANE, SMI_SPLIT, "trafficsplits", "list", "watch")
    + _calls(CONTROL_PLANE, "authentication.k8s.io", "tokenreviews", "create")
    # the mesh objects' status (control_plane.status_kube): the analysis's conditions
    + _calls(CONTROL_PLANE, GATEWAY_API, "httproutes", "patch", subresource="status")
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "virtualservices", "patch", subresource="status")
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "destinationrules", "patch", subresource="status")
    + _calls(CONTROL_PLANE, ISTIO_NETWORKING, "serviceentries", "patch", subresource="status")
    + _calls(CONTROL_PLANE, ISTIO_SECURITY, "authorizationpolicies", "patch", subresource="status")
    + _calls(CONTROL_PLANE, ISTIO_SECURITY, "peerauthentications", "patch", subresource="status")
    + _calls(NODE_AGENT, "", "pods", "list", "watch")
    + _calls(NODE_AGENT, "", "namespaces", "list", "watch")
    + _calls(NODE_AGENT, "", "events", "create")  # a pod it should mesh and cannot (sources.KubeSource.report)
))


def verbs(component: str) -> dict[tuple[str, str], set[str]]:
    """(group, RBAC resource) -> the verbs `component` uses on it."""
    out: dict[tuple[str, str], set[str]] = {}
    for call in API_CALLS:
        if call.component == component:
            out.setdefault((call.group, call.rbac_resource), set()).add(call.verb)
    return out
