"""`shoal check` against a Kubernetes cluster (the API double): CRDs in pre-flight, the mesh's pods per node in
health, and the same config analysis as on a local cluster."""

from __future__ import annotations

import json

import pytest

from support import cli
from support.kube_api import KubeApiServer


def pod(name: str, app: str, node: str, ready: str = "True") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shoal-system", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "shoal"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}}


@pytest.fixture
def api():
    with KubeApiServer() as server:
        for obj in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shoal-system"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
            pod("cp", "shoal-control-plane", "n1"), pod("zt", "shoal-ztunnel", "n1"),
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
                                                     "shoal-node-agent on n1"}


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
