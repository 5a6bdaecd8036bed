"""`shoal check` against a Kubernetes cluster (the API double): CRDs in pre-flight, the mesh's pods per node in
health, and the same config analysis as on a local cluster."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from prometheus_client import CollectorRegistry

from control_plane.http import HttpServer
from shoal.contracts import CONTROL_PLANE_HTTP_PORT
from support import cli
from support.kube_api import KubeApiServer


def pod(name: str, app: str, node: str, ready: str = "True", ip: str | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shoal-system", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "shoal"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}],
                       **({"podIP": ip} if ip else {})}}


# The control plane pod's address: a loopback address of its own, where the control plane's port (15014) is free
# (a local cluster's control plane listens in its node's netns, not here).
POD_IP = "127.20.0.14"


class ControlPlaneHttp:
    """The control plane's own HTTP server (/debug/config) on POD_IP:15014, in a thread: the pod the API server's
    pod proxy reaches. `proxies` is what its config server would report."""

    def __init__(self) -> None:
        self.proxies = [{"scope": "node n1", "peer": "198.18.0.1", "in_sync": True, "nacks": 0}]
        self.certificates = [{"proxy": "ztunnel on n1", "identity": "spiffe://cluster.local/ns/shop/sa/reviews",
                              "expires_in_seconds": 80000}]
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(ready=lambda: None, registry=CollectorRegistry(),
                                 status=lambda: {"proxies": self.proxies, "certificates": self.certificates})
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.server.start(POD_IP, CONTROL_PLANE_HTTP_PORT), self.loop).result(10)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        while self.loop.is_running():
            threading.Event().wait(0.01)
        self.loop.close()


@pytest.fixture
def control_plane():
    server = ControlPlaneHttp()
    yield server
    server.close()


@pytest.fixture
def api(control_plane):
    with KubeApiServer() as server:
        for obj in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shoal-system"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
            pod("cp", "shoal-control-plane", "n1", ip=POD_IP), pod("zt", "shoal-ztunnel", "n1"),
            pod("agent", "shoal-node-agent", "n1"),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
             "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 80}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "reviews", "namespace": "shop"},
             "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}},
        ):
            server.add(obj)
        yield server


@pytest.fixture
def kubeconfig(api, tmp_path):
    return str(api.kubeconfig(tmp_path / "kubeconfig"))


def check(kubeconfig, *args):
    return cli.shoal("check", "--kubeconfig", kubeconfig, *args, check=False, timeout=60,
                     env={"SHOAL_CLUSTER": None})


def test_a_healthy_kubernetes_cluster_is_silent(kubeconfig):
    result = check(kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(check(kubeconfig, "-o", "json").stdout)
    assert {c["subject"] for c in doc["preflight"]} >= {"CRD gateways.gateway.networking.k8s.io",
                                                        "CRD virtualservices.networking.istio.io"}
    assert {c["subject"] for c in doc["health"]} == {"shoal-control-plane", "shoal-ztunnel on n1",
                                                     "shoal-node-agent on n1", "config sync", "config nacks",
                                                     "certificates of ztunnel on n1"}
    sync = next(c for c in doc["health"] if c["subject"] == "config sync")
    assert sync["ok"] and sync["message"] == "1 proxies at the latest config", sync


def test_config_sync_nacks_and_certificates_are_read_from_the_control_plane_through_the_pod_proxy(
        api, kubeconfig, control_plane):
    control_plane.proxies = [{"scope": "node n1", "in_sync": False, "nacks": 0},
                             {"scope": "waypoint shop/waypoint", "in_sync": True, "nacks": 2}]
    result = check(kubeconfig, "--only", "health")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL [SH0203] config sync: not at the latest config: node n1" in result.stdout
    assert "FAIL [SH0204] config nacks: refused config: waypoint shop/waypoint (2)" in result.stdout
    assert any(r.path == f"/api/v1/namespaces/shoal-system/pods/cp:{CONTROL_PLANE_HTTP_PORT}/proxy/debug/config"
               for r in api.requests)

    control_plane.proxies = [{"scope": "node n1", "in_sync": True, "nacks": 0}]
    control_plane.certificates = [
        {"proxy": "ztunnel on n1", "identity": "spiffe://cluster.local/ns/shop/sa/reviews", "expires_in_seconds": 900},
        {"proxy": "ztunnel on n1", "identity": "spiffe://cluster.local/ns/shop/sa/old", "expires_in_seconds": -5}]
    result = check(kubeconfig, "--only", "health")
    assert result.returncode == 1
    assert ("FAIL [SH0205] certificates of ztunnel on n1: spiffe://cluster.local/ns/shop/sa/old expired; "
            "spiffe://cluster.local/ns/shop/sa/reviews expires in 900 s") in result.stdout, result.stdout

    control_plane.close()                  # the control plane does not answer: said, not hidden
    result = check(kubeconfig, "--only", "health")
    assert result.returncode == 1
    assert "FAIL [SH0203] config sync: the control plane does not answer" in result.stdout


def test_a_missing_subset_and_a_missing_ztunnel_are_found(api, kubeconfig):
    vs = api.get("VirtualService", "shop", "reviews")
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v2"
    api.modify(vs)
    api.delete("Pod", "shoal-system", "zt")
    result = check(kubeconfig)
    assert result.returncode == 1
    assert "FAIL [SH0202] shoal-ztunnel on n1: no pod" in result.stdout
    assert "[SH0103] VirtualService shop/reviews spec.http[0].route[0].destination.subset" in result.stdout
    assert result.stdout.splitlines()[-1] == "2 problems found in cluster kubernetes"


def test_missing_gateway_api_crds_fail_pre_flight_and_missing_smi_is_only_said(api, kubeconfig):
    api.served["split.smi-spec.io"] = set()
    assert check(kubeconfig, "--only", "preflight").returncode == 0
    api.served["gateway.networking.k8s.io"] = set()
    result = check(kubeconfig, "--only", "preflight", "-v")
    assert result.returncode == 1
    assert "FAIL [SH0006] CRD httproutes.gateway.networking.k8s.io: not served" in result.stdout
    assert "n/a  [SH0006] CRD trafficsplits.split.smi-spec.io: not served: TrafficSplit objects are not read" \
        in result.stdout


def test_an_unreachable_api_server_is_an_error_saying_so(tmp_path):
    with KubeApiServer() as server:
        path = str(server.kubeconfig(tmp_path / "kubeconfig"))
    result = check(path, "--only", "config")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]   # after the client's own retry warnings
    assert last.startswith("shoal: error: ") and "check that it is reachable" in last


def test_a_cross_namespace_backend_is_found_without_a_reference_grant_and_not_with_one(api, kubeconfig):
    api.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "library"}})
    api.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "books", "namespace": "library"},
             "spec": {"selector": {"app": "books"}, "ports": [{"port": 80}]}})
    api.add({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "to-books", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "books", "namespace": "library", "port": 80}]}]}})
    refused = check(kubeconfig, "--only", "config")
    assert "RefNotPermitted" in refused.stdout and "HTTPRoute shop/to-books" in refused.stdout, refused.stdout
    api.add({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "from-shop", "namespace": "library"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                      "to": [{"group": "", "kind": "Service"}]}})
    granted = check(kubeconfig, "--only", "config")
    assert "RefNotPermitted" not in granted.stdout, granted.stdout
