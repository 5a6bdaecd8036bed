"""End to end through a local cluster: manifests -> store -> LocalSource -> Translator -> control plane -> ztunnel.

Root only (it builds network namespaces). One 1-node cluster for the module, removed at the end.
"""

import json
from pathlib import Path

import pytest

from support.cluster import LocalCluster, running_cluster
from support.polling import eventually
from support.root import needs_root

pytestmark = [needs_root("the local cluster builds network namespaces"), pytest.mark.timeout(180)]

SEEDS = Path(__file__).parent / "seeds"
APP = """
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo, labels: {shoal.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: bookinfo, labels: {app: reviews, version: v1}}
spec: {containers: [{name: app, ports: [{name: http, containerPort: 9080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: bookinfo, labels: {app: reviews, version: v2}}
spec: {containers: [{name: app, ports: [{name: http, containerPort: 9080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: bookinfo, labels: {app: outsider, shoal.io/dataplane-mode: none}}
spec: {containers: [{name: app}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080, targetPort: http}]}
"""


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("cpa", nodes=1) as c:
        yield c


def ztunnel_view(cluster: LocalCluster, view: str, predicate, timeout: float = 30.0) -> list[dict]:
    """`shoal config VIEW` of node 1's ztunnel, once `predicate` holds for it."""
    last = {}

    def matching():
        result = cluster.run("config", view, "--node", "1", "-o", "json", check=False)
        items = json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else None
        last.update(items=items, stderr=result.stderr[-500:])
        return items if items is not None and predicate(items) else None
    return eventually(matching, timeout, lambda: f"ztunnel {view} to match; last: {last}", interval=0.3)


def test_enrolled_pods_and_service_reach_the_ztunnel_and_changes_follow(cluster):
    cluster.apply(APP)
    cluster("apply", "-f", str(SEEDS / "003_virtualservice_mirror.yaml"))

    def ours(items):
        return {w["name"]: w for w in items if w["namespace"] == "bookinfo"}
    workloads = ours(ztunnel_view(cluster, "workloads", lambda ws: len(ours(ws)) == 3))
    assert {n: w["protocol"] for n, w in workloads.items()} == {
        "reviews-v1": "HBONE", "reviews-v2": "HBONE", "outsider": "TCP"}
    services = ztunnel_view(cluster, "services", lambda ss: any(
        s["hostname"] == "reviews.bookinfo.svc.cluster.local" and len(s["endpoints"]) == 2 for s in ss))
    (reviews,) = [s for s in services if s["hostname"] == "reviews.bookinfo.svc.cluster.local"]
    assert {e["target_port"] for e in reviews["endpoints"]} == {9080}   # the named targetPort, resolved
    assert {e["workload_uid"] for e in reviews["endpoints"]} == {workloads["reviews-v1"]["uid"],
                                                                  workloads["reviews-v2"]["uid"]}
    cluster.delete("apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v2, namespace: bookinfo}\n")
    ztunnel_view(cluster, "services", lambda ss: any(
        s["hostname"] == "reviews.bookinfo.svc.cluster.local" and
        [e["workload_uid"] for e in s["endpoints"]] == [workloads["reviews-v1"]["uid"]] for s in ss))


def test_apply_refuses_bad_mesh_config_naming_object_field_and_reason(cluster):
    bad = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews}, weight: -5}
"""
    result = cluster.apply(bad, check=False)
    assert result.returncode != 0
    assert "VirtualService bookinfo/bad: spec.http[0].route[0].weight: must be at least 0, not -5" in result.stderr
    listed = cluster.items("VirtualService", "bookinfo")
    assert [vs["metadata"]["name"] for vs in listed] == ["reviews"]   # the seed's, not "bad"


def test_every_seed_applies_as_written_and_its_service_reaches_the_ztunnel(cluster):
    # Article 003 first runs `kubectl create namespace bookinfo`.
    cluster.apply("apiVersion: v1\nkind: Namespace\n"
                  "metadata: {name: bookinfo, labels: {shoal.io/dataplane-mode: ambient}}\n")
    for seed in sorted(SEEDS.glob("0*.yaml")):
        result = cluster("apply", "-f", str(seed), check=False)
        if "as_printed" in seed.name:
            assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr
        else:
            assert result.returncode == 0, (seed.name, result.stderr)
    services = ztunnel_view(cluster, "services", lambda ss: any(
        s["hostname"] == "product-service.default.svc.cluster.local" and len(s["endpoints"]) == 3 for s in ss))
    (product,) = [s for s in services if s["hostname"] == "product-service.default.svc.cluster.local"]
    assert {(e["service_port"], e["target_port"]) for e in product["endpoints"]} == {(80, 8080)}
