"""The local cluster's ingress gateway: the pod an Istio Gateway's `istio: ingressgateway` selects.

One pod on node 1, in shoal-system, run as service account
`shoal-ingressgateway` and labelled as Istio's ingress gateway pods are, so
Gateways written for Istio select it. It shares node 1's network (as a
LoadBalancer's node-local endpoint would be reached), so an outside client
on the underlay reaches it at node 1's address on port 80: `curl
--resolve example.com:80:198.18.0.1`. Its own metrics, readiness and admin
ports are apart from the node's ztunnel's (`waypoint.ingress_main`).
"""

from __future__ import annotations

from shoal.local.components import COMPONENTS, SYSTEM_NAMESPACE, Settings, shoal_argv, system_pod
from shoal.local.layout import Layout, node_ip

NAME = "shoal-ingressgateway"
SELECTOR = {"istio": "ingressgateway"}
HTTP_PORT = 80


def address() -> tuple[str, int]:
    """Where the underlay reaches the gateway."""
    return node_ip(1), HTTP_PORT


def ingress_gateway(layout: Layout, node: int, settings: Settings) -> dict | None:
    if node != 1:
        return None
    from waypoint.ingress_main import METRICS_PORT, READINESS_PORT

    pod = system_pod(layout, node, "ingress-gateway",
                     shoal_argv("ingress-gateway", "run", "--cluster", layout.cluster, "--namespace", SYSTEM_NAMESPACE,
                                "--service-account", NAME, "--http", str(HTTP_PORT)),
                     ready_port=READINESS_PORT, metrics_port=METRICS_PORT, pod_name=f"{NAME}-node{node}")
    pod["metadata"]["labels"].update(SELECTOR)
    pod["spec"]["serviceAccountName"] = NAME
    return pod


COMPONENTS.append(ingress_gateway)
