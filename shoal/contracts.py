"""The names every part of shoal agrees on: ports, the mark, the probe source, label and annotation keys.

This is the one place that spells them (DESIGN.md, "Contracts"); every
part imports them from here, so the node agent's capture, the ztunnel, the
waypoint and the control plane cannot drift apart. It also holds the one
enrollment decision, `enrollment()`, which the control plane (to publish a
pod as HBONE) and the node agent (to capture it) both call: if the two
decided separately, a client could send HBONE to a pod whose traffic goes
around the mesh.

Ports are Istio's numbers on purpose, so operators' NetworkPolicies and
habits carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# --- ports -------------------------------------------------------------------------

OUTBOUND_PORT = 15001          # captured outbound TCP, inside each enrolled pod's netns
INBOUND_PLAINTEXT_PORT = 15006  # captured inbound plaintext TCP, inside each enrolled pod's netns
HBONE_PORT = 15008             # HBONE (mTLS + HTTP/2 CONNECT): each enrolled pod's netns, and waypoints
ADMIN_PORT = 15000             # the proxies' admin (JSON config dump), on 127.0.0.1
METRICS_PORT = 15020           # the proxies' Prometheus metrics
READINESS_PORT = 15021         # the proxies' /healthz/ready
NODE_AGENT_PORT = 15022        # the node agent's metrics and readiness
CONTROL_PLANE_GRPC_PORT = 15012  # Certificates.Sign and Config.Watch, over TLS
CONTROL_PLANE_HTTP_PORT = 15014  # the control plane's readiness, metrics and dashboard
DNS_PROXY_PORT = 15053         # the ztunnel's DNS proxy (UDP and TCP), inside each enrolled pod's netns
DNS_PORT = 53                  # what DNS capture takes to DNS_PROXY_PORT
# The ingress gateway's own ports, apart from the ztunnel's when both share a node's network.
INGRESS_METRICS_PORT = 15090
INGRESS_READINESS_PORT = 15121
INGRESS_ADMIN_PORT = 15100

# The ports the ztunnel itself listens on inside a pod: capture must never loop into them.
ZTUNNEL_POD_PORTS = (OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT)

# --- marks and addresses -------------------------------------------------------------

# SO_MARK on every socket the ztunnel and waypoints open inside a pod netns;
# capture lets marked traffic through, or the proxy would capture itself.
MARK = 0x539

# The node SNATs its own traffic to a pod (the kubelet's probes) to this
# link-local address; capture lets it through to the app, so probes work
# under STRICT mTLS.
PROBE_SOURCE = "169.254.7.127"
# Its IPv6 counterpart, in shoal's own unique local range (fd73:686f:616c::/48, "shoal" in hex),
# in a /64 that no node, pod or VIP of the range is ever given. Not a link-local fe80::
# address: a pod treats fe80::/64 as on-link and would look for the address by neighbour
# discovery on its own link instead of sending the reply back through the node, where the
# SNAT is undone. Like the IPv4 one it is never routed off the node.
PROBE_SOURCE6 = "fd73:686f:616c:ffff::7:127"

# --- label and annotation keys --------------------------------------------------------

DATAPLANE_MODE = "shoal.io/dataplane-mode"
ISTIO_DATAPLANE_MODE = "istio.io/dataplane-mode"
USE_WAYPOINT = "shoal.io/use-waypoint"
ISTIO_USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "shoal.io/use-waypoint-namespace"
ISTIO_USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "shoal.io/waypoint-for"       # on a waypoint Gateway: service, workload, all or none
ISTIO_WAYPOINT_FOR = "istio.io/waypoint-for"
# On a waypoint Gateway: "true" gives its waypoint an access log (off by default, as Istio's: a line per
# request is a tenth of the waypoint's CPU).
WAYPOINT_ACCESS_LOG = "shoal.io/access-log"
SELECT_HOST_NETWORK = "shoal.io/select-host-network"   # a Service that selects hostNetwork pods too
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
# On a Pod: its own proxy (a sidecar) accepts HBONE, so it is published as HBONE without being
# captured by the node agent (Istio's label and value, set by its sidecar injection).
TUNNEL_LABEL = "networking.istio.io/tunnel"
TUNNEL_HBONE = "http"
# On a Namespace or Pod: "true" captures its DNS to the ztunnel's DNS proxy, "false" does not
# (Istio's pod annotation ambient.istio.io/dns-capture is read too).
DNS_CAPTURE = "shoal.io/dns-capture"
ISTIO_DNS_CAPTURE = "ambient.istio.io/dns-capture"
DNS_CAPTURE_KEYS = (DNS_CAPTURE, ISTIO_DNS_CAPTURE)

DATAPLANE_MODE_KEYS = (DATAPLANE_MODE, ISTIO_DATAPLANE_MODE)
USE_WAYPOINT_KEYS = (USE_WAYPOINT, ISTIO_USE_WAYPOINT)
USE_WAYPOINT_NAMESPACE_KEYS = (USE_WAYPOINT_NAMESPACE, ISTIO_USE_WAYPOINT_NAMESPACE)
WAYPOINT_FOR_KEYS = (WAYPOINT_FOR, ISTIO_WAYPOINT_FOR)

# The gatewayClassName of a Gateway that declares a waypoint (Istio's is accepted too).
WAYPOINT_CLASS = "shoal-waypoint"
ISTIO_WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_CLASSES = (WAYPOINT_CLASS, ISTIO_WAYPOINT_CLASS)
# A Gateway API Gateway of this class is an ingress Gateway, served by the mesh's ingress gateway pods
# (those labelled INGRESS_GATEWAY_SELECTOR, as Istio's own ingress gateway is).
INGRESS_CLASS = "shoal"
INGRESS_GATEWAY_SELECTOR = {"istio": "ingressgateway"}

AMBIENT = "ambient"   # the dataplane-mode value that enrolls
NONE = "none"         # the dataplane-mode value that opts out (and turns a waypoint off)


def setting(meta: Mapping | None, keys: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of `keys` that an object's metadata sets: (where it was found, the value).

    For each key in order, its label is read before its annotation. So
    shoal's key beats Istio's whatever the place, and on one key a label
    beats an annotation. An empty value counts as not set.
    """
    meta = meta or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    for key in keys:
        for place, source in (("label", labels), ("annotation", annotations)):
            value = source.get(key)
            if value is not None and str(value).strip():
                return f"{place} {key}", str(value).strip()
    return None


@dataclass(frozen=True)
class Enrollment:
    """Whether a pod's traffic belongs in the mesh, and which setting decided it (for logs)."""

    enrolled: bool
    reason: str

    def __bool__(self) -> bool:
        return self.enrolled


def enrollment(namespace: Mapping | None, pod: Mapping) -> Enrollment:
    """Decides whether `pod` (a Kubernetes-shaped Pod) is in the mesh, given its `namespace` object.

    One precedence order, first match wins:

    1. A hostNetwork pod is never enrolled (it shares the node's address).
    2. The pod's own dataplane-mode: `none` opts it out, `ambient` opts it in.
    3. Its Namespace's dataplane-mode: `ambient` enrolls the pod.
    4. Otherwise the pod is not enrolled.

    On each object the keys are read in this order: `shoal.io/dataplane-mode`
    label, its annotation, `istio.io/dataplane-mode` label, its annotation
    (see `setting`). Shoal's and Istio's keys count alike in both places.
    Any other value (`sidecar`, a typo) is logged as unknown and does not
    decide at that level: on the pod the namespace then decides; on the
    namespace the pod stays out.
    """
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return Enrollment(False, "hostNetwork pods are never enrolled")
    own = setting(pod.get("metadata"), DATAPLANE_MODE_KEYS)
    if own is not None and own[1] == NONE:
        return Enrollment(False, f"the pod's {own[0]} is {NONE}")
    if own is not None and own[1] == AMBIENT:
        return Enrollment(True, f"the pod's {own[0]} is {AMBIENT}")
    inherited = setting((namespace or {}).get("metadata"), DATAPLANE_MODE_KEYS)
    if inherited is not None and inherited[1] == AMBIENT:
        return Enrollment(True, f"the namespace's {inherited[0]} is {AMBIENT}")
    unknown = [f"{where} is {value!r}, not {AMBIENT} or {NONE}"
               for where, value in (found for found in (own, inherited) if found is not None)
               if value not in (AMBIENT, NONE)]
    if unknown:
        return Enrollment(False, "not enrolled; unknown dataplane-mode: " + "; ".join(unknown))
    return Enrollment(False, "neither the pod nor its namespace sets dataplane-mode ambient")


def dns_capture(namespace: Mapping | None, pod: Mapping, mesh_default: bool = False) -> bool:
    """Is an enrolled pod's DNS captured to the ztunnel's DNS proxy? The pod's own setting, then its
    Namespace's (`shoal.io/dns-capture` or Istio's key, label before annotation), then the mesh's
    option (the node agent's --dns-capture). Values other than "true" and "false" do not decide."""
    for meta in ((pod or {}).get("metadata"), (namespace or {}).get("metadata")):
        found = setting(meta, DNS_CAPTURE_KEYS)
        if found is not None and str(found[1]).lower() in ("true", "false"):
            return str(found[1]).lower() == "true"
    return mesh_default


def namespace_ambient(namespace: Mapping | None) -> bool:
    """Does a Namespace enroll its pods (those that do not opt out)?"""
    found = setting((namespace or {}).get("metadata"), DATAPLANE_MODE_KEYS)
    return found is not None and found[1] == AMBIENT
