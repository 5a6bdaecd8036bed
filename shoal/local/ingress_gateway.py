"""The local cluster's ingress gateway: the pod an Istio Gateway's `istio: ingressgateway` selects.

One pod on node 1, in shoal-system, run as service account
`shoal-ingressgateway` and labelled as Istio's ingress gateway pods are, so
Gateways written for Istio select it (its component is in
`shoal.local.components`). It shares node 1's network (as a LoadBalancer's
node-local endpoint would be reached), so an outside client on the
underlay reaches it at node 1's address on port 80 (HTTP) and 443 (HTTPS):
`curl --resolve example.com:80:198.18.0.1`. Its own metrics, readiness and
admin ports are apart from the node's ztunnel's (`shoal.contracts.INGRESS_*`).
"""

from __future__ import annotations

from shoal.contracts import SELECT_HOST_NETWORK
from shoal.local.layout import Layout, node_ip

NAME = "shoal-ingressgateway"
SELECTOR = {"istio": "ingressgateway"}
NODE = 1
HTTP_PORT = 80
HTTPS_PORT = 443


def address() -> tuple[str, int]:
    """Where the underlay reaches the gateway's HTTP listener."""
    return node_ip(NODE), HTTP_PORT


def service(namespace: str) -> dict:
    """Its LoadBalancer Service: `shoal local get svc` shows the node address (EXTERNAL-IP) and ports the
    underlay reaches it at; it selects the gateway's hostNetwork pod (hence select-host-network)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": namespace, "labels": dict(SELECTOR),
                         "annotations": {SELECT_HOST_NETWORK: "true"}},
            "spec": {"type": "LoadBalancer", "selector": dict(SELECTOR), "externalIPs": [node_ip(NODE)],
                     "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT},
                               {"name": "https", "port": HTTPS_PORT, "targetPort": HTTPS_PORT}]}}


def argv(layout: Layout, namespace: str) -> list[str]:
    """The `shoal` arguments that run it."""
    return ["ingress-gateway", "run", "--cluster", layout.cluster, "--namespace", namespace,
            "--service-account", NAME, "--http", str(HTTP_PORT), "--https", str(HTTPS_PORT)]


def as_selected(pod: dict) -> dict:
    """A system pod made the gateway's: Istio's labels, and its own service account (its identity)."""
    pod["metadata"]["labels"].update(SELECTOR)
    pod["spec"]["serviceAccountName"] = NAME
    return pod
