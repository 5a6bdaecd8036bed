"""`shoal check`: silent and exit 0 on a healthy config, exit 1 with the finding's code, object and field
when one problem is planted; `-o json` for scripts; health and pre-flight on a real cluster (root)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from shoal.local.cluster import daemon_pid

from support.cli import shoal
from support.polling import eventually
from support.root import needs_root
from tests.shoal.cli.conftest import CLUSTER, RUNNING_NODES, local

SHOP = list(yaml.safe_load_all("""
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {shoal.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {containers: [{name: app, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec: {selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [{from: [{source: {namespaces: [shop]}}]}]}
"""))


def check(*args: str):
    return shoal("check", "--cluster", CLUSTER, "--only", "config", *args, check=False, timeout=60)


def test_a_healthy_config_is_silent_and_exits_zero(store):
    store.apply_many(SHOP)
    result = check()
    assert (result.returncode, result.stdout) == (0, f"No problems found in cluster {CLUSTER} (0 checks, "
                                                     "config analysed)\n"), result.stderr


def vs_subset(store):
    vs = store.get("VirtualService", "shop", "reviews")
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v2"
    store.apply(vs)


def vs_host(store):
    vs = store.get("VirtualService", "shop", "reviews")
    vs["spec"]["http"][0]["route"][0]["destination"] = {"host": "ratings"}
    store.apply(vs)


def shadowing_vs(store):
    store.apply({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                 "metadata": {"name": "reviews-late", "namespace": "shop"},
                 "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}})


def strict(store):
    store.apply({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                 "metadata": {"name": "strict", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}})
    store.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "curl", "namespace": "default"},
                 "spec": {"containers": [{"name": "c", "command": ["sleep", "infinity"]}]}})


def missing_waypoint(store):
    store.patch_metadata("Namespace", None, "shop", labels={"shoal.io/use-waypoint": "east"})


def selects_nothing(store):
    policy = store.get("AuthorizationPolicy", "shop", "readers")
    policy["spec"]["selector"]["matchLabels"] = {"app": "review"}
    store.apply(policy)


def unknown_value(store):
    # `label` refuses it today; an older shoal, or kubectl on a real cluster, let it in
    store.patch_metadata("Namespace", None, "shop", labels={"shoal.io/dataplane-mode": "ambiant"})


@pytest.mark.parametrize("plant, code, where", [
    (vs_subset, "SH0103", "VirtualService shop/reviews spec.http[0].route[0].destination.subset"),
    (vs_host, "SH0104", "VirtualService shop/reviews spec.http[0].route[0].destination.host"),
    (shadowing_vs, "SH0105", "VirtualService shop/reviews-late spec.hosts[0]"),
    (strict, "SH0106", "PeerAuthentication shop/strict spec.mtls.mode"),
    (missing_waypoint, "SH0107", "Namespace shop metadata.labels[shoal.io/use-waypoint]"),
    (selects_nothing, "SH0108", "AuthorizationPolicy shop/readers spec.selector.matchLabels"),
    (unknown_value, "SH0109", "Namespace shop metadata.labels[shoal.io/dataplane-mode]"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("SH") else None)
def test_one_planted_problem_is_found_and_the_exit_status_says_so(store, plant, code, where):
    store.apply_many(SHOP)
    plant(store)
    result = check()
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Config analysis" and lines[-1] == f"1 problem found in cluster {CLUSTER}"
    (finding,) = lines[1:-1]
    assert f"[{code}] {where}: " in finding
    doc = json.loads(check("-o", "json").stdout)
    assert doc["problems"] == 1 and [f["code"] for f in doc["config"]] == [code]
    assert {"object", "field", "message", "action", "severity"} <= doc["config"][0].keys()


def test_a_cluster_that_is_not_up_is_an_error_that_says_what_to_do(store):
    result = shoal("check", "--cluster", "nosuch", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("shoal: error: cluster 'nosuch' is not up; run `shoal local up --cluster nosuch`")


def test_an_unknown_part_is_refused():
    result = shoal("check", "--only", "health,colour", check=False)
    assert result.returncode == 2 and "choose from preflight,health,config" in result.stderr


@needs_root()
def test_the_shared_cluster_is_healthy_and_a_stopped_daemon_is_found(running):
    """On the package's shared cluster, in whichever order the modules run: the others take their namespaces
    out again, and what they leave settling (pods stopping, proxies' config) is waited out. The daemon it
    stops, `up` starts again for the modules after it."""
    cluster = running

    def healthy():
        result = shoal("check", "--cluster", cluster.name, check=False)
        return result if result.returncode == 0 else None
    result = eventually(healthy, 60, lambda: "no problems: " + shoal("check", "--cluster", cluster.name,
                                                                        check=False).stdout[-2000:], interval=0.5)
    assert result.stdout.startswith(f"No problems found in cluster {cluster.name}")
    doc = json.loads(shoal("check", "--cluster", cluster.name, "-o", "json", "-v").stdout)
    subjects = {c["subject"] for c in doc["health"] if c["ok"]}
    assert {"cluster daemon", "pod shoal-system/ztunnel-node2", "config sync", "config nacks",
            "certificates of ztunnel-node1"} <= subjects
    assert all(c["ok"] for c in doc["preflight"] if c["counts"])

    pid = daemon_pid(cluster.layout)
    os.kill(pid, signal.SIGTERM)
    try:
        eventually(lambda: daemon_pid(cluster.layout) is None, 30, "the cluster daemon to stop")
        stopped = shoal("check", "--cluster", cluster.name, "--only", "health", check=False)
        assert stopped.returncode == 1
        assert "FAIL [SH0201] cluster daemon: not running" in stopped.stdout
    finally:
        eventually(lambda: daemon_pid(cluster.layout) is None, 30, "the cluster daemon to stop")
        cluster.up(RUNNING_NODES)
