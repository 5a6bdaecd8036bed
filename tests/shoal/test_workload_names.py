"""One naming of workloads for every part (issue 14, item 5): what the control plane derives from a pod,
and what the ztunnel's and the waypoint's telemetry say of it, agree."""

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.api.convert import workload_from, workload_to
from shoal.model import Protocol, Workload
from shoal.workload_names import access_log_fields, canonical_names, live_workloads, telemetry_labels, workload_name
from waypoint.telemetry import LABELS as WAYPOINT_LABELS, RequestRecord, tcp_labels
from ztunnel.telemetry import ConnectionRecord, client_address

from control_plane.translate.core import workload_of


def pod(name, labels=None, owner=None):
    meta = {"name": name, "namespace": "shop", "uid": f"uid-{name}", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"controller": True, **owner}]
    return {"metadata": meta, "spec": {"serviceAccountName": "reviews", "nodeName": "node1"},
            "status": {"phase": "Running", "podIP": "198.19.1.7"}}


@pytest.mark.parametrize("owner, expected", [
    ({"kind": "ReplicaSet", "name": "reviews-v1-7d9f8c6b5d"}, "reviews-v1"),
    ({"kind": "Job", "name": "nightly-29012345"}, "nightly"),
    ({"kind": "StatefulSet", "name": "redis"}, "redis"),
    ({"kind": "Deployment", "name": "client"}, "client"),   # shoal local's pods name their Deployment
    (None, "reviews-v1-7d9f8c6b5d-x2x4p"),                   # nobody owns it: the pod is its own workload
])
def test_the_workload_is_the_owning_controller(owner, expected):
    assert workload_name(pod("reviews-v1-7d9f8c6b5d-x2x4p", owner=owner)) == expected


@pytest.mark.parametrize("labels, expected", [
    ({"service.istio.io/canonical-name": "c", "service.istio.io/canonical-revision": "r", "app": "a",
      "version": "v"}, ("c", "r")),
    ({"app.kubernetes.io/name": "k", "app": "a", "app.kubernetes.io/version": "1.2", "version": "v"}, ("k", "1.2")),
    ({"app": "a", "version": "v9"}, ("a", "v9")),
    ({}, ("reviews-v1", "latest")),
])
def test_canonical_service_and_revision_follow_istios_label_order(labels, expected):
    assert canonical_names(pod("p", labels, {"kind": "ReplicaSet", "name": "reviews-v1-5d8f9c7b6"})) == expected


def test_the_control_plane_carries_the_workload_name_over_the_wire():
    w = workload_of(pod("reviews-v1-7d9f8c6b5d-x2x4p", {"app": "reviews"},
                        {"kind": "ReplicaSet", "name": "reviews-v1-7d9f8c6b5d"}), None, {})
    assert (w.name, w.workload_name, w.canonical_service, w.canonical_revision) == (
        "reviews-v1-7d9f8c6b5d-x2x4p", "reviews-v1", "reviews", "latest")
    assert workload_from(workload_to(w)) == w


REVIEWS = Workload("uid-r", "reviews-v1-7d9f8c6b5d-x2x4p", "shop", "reviews", "node2", ("198.19.2.7",),
                   canonical_service="reviews", canonical_revision="latest", workload_name="reviews-v1",
                   protocol=Protocol.HBONE)
CLIENT = Workload("uid-c", "client-5c6d7-abcde", "shop", "client", "node1", ("198.19.1.4",),
                  canonical_service="client", canonical_revision="v3", workload_name="client", protocol=Protocol.HBONE)


def test_ztunnel_and_waypoint_label_both_ends_alike():
    service = "reviews.shop.svc.cluster.local"
    ztunnel = ConnectionRecord("outbound", ("198.19.1.4", 4000), ("198.18.16.10", 9080), source_workload=CLIENT,
                               destination_workload=REVIEWS, service=service, mtls=True).labels()
    waypoint = RequestRecord(("198.19.1.4", 4000), "GET", "/", "reviews", source_workload=CLIENT,
                             destination_workload=REVIEWS, service=service, status=200).labels()
    waypoint_tcp = tcp_labels(CLIENT, "", REVIEWS, "", service, "-")
    ends = [name for name in WAYPOINT_LABELS if name.startswith(("source_", "destination_"))
            and not name.endswith("_principal")]
    assert len(ends) == 17   # seven per end, and the destination service three ways
    for name in ends:
        assert ztunnel[name] == waypoint[name] == waypoint_tcp[name], name
    assert (waypoint["source_workload"], waypoint["source_version"], waypoint["destination_workload"],
            waypoint["destination_version"], waypoint["destination_app"]) == (
        "client", "v3", "reviews-v1", "latest", "reviews")


def test_an_unknown_peer_is_unknown_everywhere_and_never_live():
    labels = telemetry_labels("source", None)
    assert set(labels.values()) == {"unknown"} and len(labels) == 7
    assert access_log_fields("src", None)["src_workload"] is None
    assert live_workloads([REVIEWS, CLIENT]) == {("shop", "reviews-v1"), ("shop", "client")}


def test_the_access_log_names_the_workload_as_the_metrics_do_and_the_pod_beside_it():
    fields = access_log_fields("dst", REVIEWS)
    assert fields == {"dst_workload": "reviews-v1", "dst_namespace": "shop", "dst_pod": "reviews-v1-7d9f8c6b5d-x2x4p",
                      "dst_canonical_service": "reviews", "dst_canonical_revision": "latest"}


@pytest.mark.parametrize("address, workload, expected", [
    (("127.0.0.1", 41000), CLIENT, ("198.19.1.4", 41000)),        # eBPF mode: the rewritten connect()
    (("::ffff:127.0.0.1", 41000), CLIENT, ("198.19.1.4", 41000)),
    (("198.19.1.4", 41000), CLIENT, ("198.19.1.4", 41000)),        # iptables mode: already the pod's
    (("127.0.0.1", 41000), None, ("127.0.0.1", 41000)),            # nothing better is known
])
def test_the_outbound_source_address_is_the_pods(address, workload, expected):
    assert client_address(address, workload) == expected


def test_metrics_carry_no_created_series():
    from ztunnel.telemetry import Metrics
    metrics = Metrics()
    ConnectionRecord("outbound", ("198.19.1.4", 4000), ("198.18.16.10", 9080), source_workload=CLIENT).close(metrics)
    text = metrics.render().decode()
    assert "istio_tcp_connections_closed_total{" in text and "_created" not in text


CONTROL_PLANE_SCRAPE = """
from control_plane.http import HttpServer
from control_plane.metrics import Metrics
cp = Metrics()
cp.csr_signed.inc()
status, _, body = HttpServer(ready=lambda: None, registry=cp.registry, status=dict).route("GET", "/metrics")
print(status, body.decode())
"""


def test_the_control_planes_metrics_carry_no_created_series():
    # In a process of its own: turning _created off is process-wide, and this one has imported the proxies.
    out = subprocess.run([sys.executable, "-c", CONTROL_PLANE_SCRAPE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout
    assert out.startswith("200 ") and "shoal_csr_signed_total 1.0" in out and "_created" not in out, out


def test_service_labels_name_kubernetes_services_and_service_entry_hosts():
    from shoal.model import Workload
    from shoal.workload_names import service_labels
    entry_endpoint = Workload("ServiceEntry/egress/api/0", "api", "egress", "default", "", ("198.18.48.10",))
    assert service_labels("reviews.shop.svc.cluster.local") == ("reviews", "shop")
    assert service_labels("api.outside.test", entry_endpoint) == ("api.outside.test", "egress")
    assert service_labels("api.outside.test") == ("api.outside.test", "unknown")
    assert service_labels("") == ("unknown", "unknown")
