"""Prometheus targets from pods, as Kubernetes service discovery and the prometheus.io annotations give them."""

import json

import pytest

from shoal.observe.targets import scrape_annotations, scrape_groups, target_of, write_if_changed


def pod(name, namespace="shop", *, annotations=None, labels=None, phase="Running", ip="198.19.1.5", node="node1",
        host_ip="198.18.0.1"):
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                         "annotations": annotations if annotations is not None else scrape_annotations(15020)},
            "spec": {"nodeName": node}, "status": {"phase": phase, "podIP": ip, "hostIP": host_ip}}


def test_each_mesh_part_is_a_job_with_its_pod_namespace_and_node():
    pods = [pod("ztunnel-node1", "shoal-system", labels={"shoal.io/component": "ztunnel"}, ip="198.18.0.1"),
            pod("waypoint-5d9-0", labels={"gateway.networking.k8s.io/gateway-name": "waypoint", "app": "waypoint"},
                ip="198.19.1.3"),
            pod("control-plane-node1", "shoal-system", labels={"shoal.io/component": "control-plane"},
                annotations=scrape_annotations(15014), ip="198.18.0.1"),
            pod("app-1", annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                      "prometheus.io/path": "/stats"}, ip="198.19.2.9", node="node2")]
    groups = scrape_groups(pods)
    by_pod = {g["labels"]["pod"]: g for g in groups}
    assert by_pod["ztunnel-node1"] == {"targets": ["198.18.0.1:15020"], "labels": {
        "job": "ztunnel", "namespace": "shoal-system", "pod": "ztunnel-node1", "node": "node1", "app": "",
        "__metrics_path__": "/metrics"}}
    assert by_pod["waypoint-5d9-0"]["labels"]["job"] == "waypoint"
    assert by_pod["control-plane-node1"]["targets"] == ["198.18.0.1:15014"]
    assert by_pod["app-1"]["labels"] == {"job": "pods", "namespace": "shop", "pod": "app-1", "node": "node2",
                                        "app": "", "__metrics_path__": "/stats"}
    assert scrape_groups(reversed(pods)) == groups            # stable order: an unchanged set writes the same


@pytest.mark.parametrize("what, changed", [
    ("no annotations", dict(annotations={})),
    ("scrape false", dict(annotations={"prometheus.io/scrape": "false", "prometheus.io/port": "15020"})),
    ("not running", dict(phase="Pending")),
    ("no address", dict(ip="", host_ip="")),
    ("a port that is no number", dict(annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "http"})),
    ("a port out of range", dict(annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "70000"})),
])
def test_pods_that_cannot_or_would_not_be_scraped_are_left_out(what, changed):
    assert target_of(pod("p", **changed)) is None, what


def test_an_ipv6_address_is_bracketed():
    assert target_of(pod("p", ip="fd73:686f:616c::5")).address == "[fd73:686f:616c::5]:15020"


def test_the_file_is_rewritten_only_when_the_targets_change(tmp_path):
    out = tmp_path / "targets.json"
    groups = scrape_groups([pod("a")])
    assert write_if_changed(out, groups) is True
    assert json.loads(out.read_text()) == groups
    assert write_if_changed(out, groups) is False
    assert write_if_changed(out, []) is True and json.loads(out.read_text()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]   # no partial file left beside it


def test_the_daemonset_manifests_ask_to_be_scraped_on_their_metrics_ports():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[3] / "daemonset"
    found = {}
    for path in root.glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            if not obj or obj.get("kind") not in ("DaemonSet", "Deployment"):
                continue
            template = obj["spec"]["template"]
            annotations = template["metadata"].get("annotations") or {}
            if annotations.get("prometheus.io/scrape") != "true":
                continue
            found[obj["metadata"]["name"]] = (int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"])
    # The ports the processes serve /metrics on (shoal.contracts: METRICS_PORT, NODE_AGENT_PORT, the HTTP port,
    # INGRESS_METRICS_PORT).
    assert found == {"shoal-ztunnel": (15020, "/metrics"), "shoal-node-agent": (15022, "/metrics"),
                     "shoal-control-plane": (15014, "/metrics"), "shoal-ingressgateway": (15090, "/metrics")}, found
