"""`shoal waypoint apply|list|delete` against a Kubernetes cluster (the API double), as against a local one."""

from __future__ import annotations

import argparse

import pytest

from shoal.install import InstallError
from shoal.kube_mesh import on_kubernetes
from support import cli
from support.kube_api import KubeApiServer

GATEWAY = ("Gateway", "shop", "waypoint")


@pytest.fixture
def api():
    with KubeApiServer() as server:
        server.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}})
        yield server


@pytest.fixture
def kubeconfig(api, tmp_path):
    return str(api.kubeconfig(tmp_path / "kubeconfig"))


def waypoint(kubeconfig, *args, env=None):
    return cli.shoal("waypoint", *args, "--kubeconfig", kubeconfig, check=False, timeout=60, env=env)


def test_apply_list_delete_against_kubernetes(api, kubeconfig):
    r = waypoint(kubeconfig, "apply", "-n", "shop", "--enroll-namespace", "--for", "all")
    assert r.returncode == 0, r.stderr
    gateway = api.get(*GATEWAY)
    assert gateway["spec"]["gatewayClassName"] == "shoal-waypoint"
    assert gateway["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
    assert gateway["metadata"]["labels"]["istio.io/waypoint-for"] == "all"
    assert api.get("Namespace", None, "shop")["metadata"]["labels"] == {"team": "a", "shoal.io/use-waypoint": "waypoint"}

    gateway["metadata"]["labels"]["owner"] = "me"      # a label added by hand survives a re-apply
    api.modify(gateway)
    assert waypoint(kubeconfig, "apply", "-n", "shop").returncode == 0
    assert api.get(*GATEWAY)["metadata"]["labels"]["owner"] == "me"

    for ready in ("True", "False"):
        api.add({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"waypoint-{ready.lower()}", "namespace": "shop",
                              "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                 "spec": {"containers": [{"name": "w", "image": "shoal"}]},
                 "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}})
    r = waypoint(kubeconfig, "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[1].split() == ["shop", "waypoint", "service", "1/2"]

    r = waypoint(kubeconfig, "delete", "-n", "shop")
    assert r.returncode == 0 and api.get(*GATEWAY) is None
    r = waypoint(kubeconfig, "delete", "-n", "shop")
    assert r.returncode == 1 and "no waypoint shop/waypoint" in r.stderr
    assert "no waypoints in namespace shop" in waypoint(kubeconfig, "list", "-n", "shop").stdout


def test_clear_errors_against_kubernetes(api, kubeconfig):
    r = waypoint(kubeconfig, "apply", "-n", "nope")
    assert r.returncode == 1 and "namespace 'nope' does not exist" in r.stderr
    api.add({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "waypoint", "namespace": "shop"}, "spec": {"gatewayClassName": "nginx",
                                                                             "listeners": []}})
    r = waypoint(kubeconfig, "apply", "-n", "shop")
    assert r.returncode == 1 and "is not a waypoint" in r.stderr
    assert api.get(*GATEWAY)["spec"]["gatewayClassName"] == "nginx"
    r = waypoint(kubeconfig, "delete", "-n", "shop")
    assert r.returncode == 1 and api.get(*GATEWAY) is not None, "deleted a Gateway that is not a waypoint"
    assert "nginx" not in waypoint(kubeconfig, "list").stdout

    api.served["gateway.networking.k8s.io"] = set()
    r = waypoint(kubeconfig, "list")
    assert r.returncode == 1 and "Gateway API CRDs" in r.stderr and "Traceback" not in r.stderr


def test_kubeconfig_from_the_environment_and_a_clash_with_cluster(api, kubeconfig):
    r = cli.shoal("waypoint", "apply", "-n", "shop", check=False, timeout=60, env={"KUBECONFIG": kubeconfig})
    assert r.returncode == 0, r.stderr
    assert api.get(*GATEWAY) is not None
    r = waypoint(kubeconfig, "list", "--cluster", "t")
    assert r.returncode == 1 and "give one of them" in r.stderr


@pytest.mark.parametrize("given, environ, kube", [
    ({}, {}, False),
    ({"cluster": "t"}, {"KUBECONFIG": "/k"}, False),
    ({}, {"KUBECONFIG": "/k"}, True),
    ({}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, True),
    ({"kubeconfig": "/k"}, {}, True),
    ({"context": "prod"}, {}, True),
])
def test_which_cluster_a_command_acts_on(given, environ, kube):
    args = argparse.Namespace(**{"cluster": None, "kubeconfig": None, "context": None, **given})
    assert on_kubernetes(args, environ) is kube


def test_a_local_and_a_kubernetes_cluster_at_once_is_refused():
    with pytest.raises(InstallError, match="give one of them"):
        on_kubernetes(argparse.Namespace(cluster="t", kubeconfig="/k", context=None), {})
