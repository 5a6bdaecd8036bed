"""Namespaces, Pods and Services into Workloads and Services, and the incremental Delta."""

import pytest

from shoal.model import Endpoint, Protocol, ResourceType, WaypointRef
from translate_objects import added, deleted, from_yaml, namespace, pod, service, translate

W, S = ResourceType.WORKLOAD, ResourceType.SERVICE


def waypoint_gateway(name="waypoint", ns="default", traffic=None):
    labels = {"istio.io/waypoint-for": traffic} if traffic else {}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"gatewayClassName": "shoal-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


@pytest.mark.parametrize("ns_meta, pod_meta, protocol", [
    ({}, {}, Protocol.TCP),
    ({"labels": {"shoal.io/dataplane-mode": "ambient"}}, {}, Protocol.HBONE),
    ({"annotations": {"shoal.io/dataplane-mode": "ambient"}}, {}, Protocol.HBONE),
    ({"labels": {"istio.io/dataplane-mode": "ambient"}}, {}, Protocol.HBONE),
    ({"labels": {"shoal.io/dataplane-mode": "ambient"}}, {"labels": {"shoal.io/dataplane-mode": "none"}}, Protocol.TCP),
    ({"labels": {"istio.io/dataplane-mode": "ambient"}}, {"labels": {"istio.io/dataplane-mode": "none"}}, Protocol.TCP),
    ({"labels": {"shoal.io/dataplane-mode": "ambient"}}, {"annotations": {"shoal.io/dataplane-mode": "none"}}, Protocol.TCP),
    ({}, {"labels": {"istio.io/dataplane-mode": "ambient"}}, Protocol.HBONE),
    ({"labels": {"shoal.io/dataplane-mode": "none"}}, {}, Protocol.TCP),
    # a pod whose own proxy (a sidecar) accepts HBONE, in a namespace that is not enrolled
    ({}, {"labels": {"networking.istio.io/tunnel": "http"}}, Protocol.HBONE),
    ({}, {"labels": {"networking.istio.io/tunnel": "none"}}, Protocol.TCP),
])
def test_enrollment(ns_meta, pod_meta, protocol):
    p = pod("a", "shop", labels=pod_meta.get("labels"), annotations=pod_meta.get("annotations"))
    _, update = translate(namespace("shop", **ns_meta), p)
    (workload,) = update.delta.upserted[W].values()
    assert workload.protocol == protocol


def test_host_network_pods_are_never_enrolled_nor_endpoints_unless_asked():
    ns = namespace("shop", labels={"shoal.io/dataplane-mode": "ambient"})
    hp = pod("agent", "shop", labels={"app": "agent"}, host_network=True, ip="198.18.0.1")
    plain = service("agent", "shop", ports=((80, 80),))
    asked = service("agent-host", "shop", selector={"app": "agent"}, ports=((80, 80),),
                    annotations={"shoal.io/select-host-network": "true"}, vip="198.18.16.11")
    t, _ = translate(ns, hp, plain, asked)
    snap = t.snapshot()
    assert snap[W]["uid-agent-shop"].protocol == Protocol.TCP
    assert snap[S]["agent.shop.svc.cluster.local"].endpoints == ()
    assert snap[S]["agent-host.shop.svc.cluster.local"].endpoints == (Endpoint("uid-agent-shop", 80, 80),)


def test_workload_fields_and_canonical_names():
    p = pod("reviews-v2-5d8f-abcde", "bookinfo", labels={"app": "reviews", "version": "v2"}, sa="bookinfo-reviews",
            node="node2", ip="198.19.2.7")
    p["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "reviews-v2-5d8f9c7b6", "controller": True}]
    _, update = translate(namespace("bookinfo"), p)
    w = update.delta.upserted[W]["uid-reviews-v2-5d8f-abcde-bookinfo"]
    assert (w.name, w.namespace, w.service_account, w.node, w.ips) == (
        "reviews-v2-5d8f-abcde", "bookinfo", "bookinfo-reviews", "node2", ("198.19.2.7",))
    assert (w.canonical_service, w.canonical_revision) == ("reviews", "v2")
    assert dict(w.labels) == {"app": "reviews", "version": "v2"}
    assert str(w.identity("cluster.local")) == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"


@pytest.mark.parametrize("labels, owner, expected", [
    ({"service.istio.io/canonical-name": "c", "app.kubernetes.io/name": "k", "app": "a"}, None, ("c", "latest")),
    ({"app.kubernetes.io/name": "k", "app": "a", "app.kubernetes.io/version": "1.2"}, None, ("k", "1.2")),
    ({"app": "a", "version": "v9"}, None, ("a", "v9")),
    ({}, {"kind": "ReplicaSet", "name": "ratings-v1-7d9f8c6b5d"}, ("ratings-v1", "latest")),
    ({}, None, ("lonely", "latest")),
])
def test_canonical_name_order(labels, owner, expected):
    p = pod("lonely", labels=labels)
    if owner:
        p["metadata"]["ownerReferences"] = [owner]
    _, update = translate(p)
    (w,) = update.delta.upserted[W].values()
    assert (w.canonical_service, w.canonical_revision) == expected


def test_pods_without_address_or_finished_are_not_workloads():
    _, update = translate(pod("pending", ip=False, phase="Pending"), pod("done", phase="Succeeded"), pod("up"))
    assert [w.name for w in update.delta.upserted[W].values()] == ["up"]


def test_service_endpoints_resolve_named_and_numeric_target_ports_and_skip_not_running():
    svc = service("web", ports=((80, "http"), (9090, 9091)), port_names=("http", "grpc-metrics"))
    ready = pod("web-1", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}])
    other_port = pod("web-2", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8081}])
    no_named = pod("web-3", labels={"app": "web"})
    pending = pod("web-4", labels={"app": "web"}, phase="Pending")
    stranger = pod("db", labels={"app": "db"})
    _, update = translate(svc, ready, other_port, no_named, pending, stranger)
    s = update.delta.upserted[S]["web.default.svc.cluster.local"]
    assert s.vips == ("198.18.16.10",)
    assert [(p.port, p.name, p.app_protocol) for p in s.ports] == [(80, "http", "http"), (9090, "grpc-metrics", "grpc")]
    assert set(s.endpoints) == {
        Endpoint("uid-web-1-default", 80, 8080), Endpoint("uid-web-2-default", 80, 8081),
        Endpoint("uid-web-1-default", 9090, 9091), Endpoint("uid-web-2-default", 9090, 9091),
        Endpoint("uid-web-3-default", 9090, 9091)}


def test_app_protocol_field_wins_over_port_name():
    svc = service("api", ports=((80, 80),), port_names=("tcp-api",))
    svc["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/h2c"
    _, update = translate(svc)
    assert update.delta.upserted[S]["api.default.svc.cluster.local"].ports[0].app_protocol == "h2c"


@pytest.mark.parametrize("ns_meta, svc_meta, traffic, expected", [
    ({"labels": {"istio.io/use-waypoint": "waypoint"}}, {}, None, WaypointRef("default", "waypoint")),
    ({}, {"labels": {"shoal.io/use-waypoint": "waypoint"}}, None, WaypointRef("default", "waypoint")),
    ({}, {"annotations": {"shoal.io/use-waypoint": "waypoint"}}, None, WaypointRef("default", "waypoint")),
    ({"labels": {"istio.io/use-waypoint": "waypoint"}}, {"labels": {"istio.io/use-waypoint": "none"}}, None, None),
    ({"labels": {"istio.io/use-waypoint": "other"}}, {"labels": {"istio.io/use-waypoint": "waypoint"}}, None,
     WaypointRef("default", "waypoint")),
    ({"labels": {"istio.io/use-waypoint": "missing"}}, {}, None, WaypointRef("default", "missing")),  # refused
    ({"labels": {"istio.io/use-waypoint": "waypoint"}}, {}, "workload", None),
    ({"labels": {"istio.io/use-waypoint": "waypoint"}}, {}, "all", WaypointRef("default", "waypoint")),
])
def test_service_waypoint(ns_meta, svc_meta, traffic, expected):
    svc = service("web", labels=svc_meta.get("labels"), annotations=svc_meta.get("annotations"))
    _, update = translate(namespace("default", **ns_meta), waypoint_gateway(traffic=traffic), svc)
    assert update.delta.upserted[S]["web.default.svc.cluster.local"].waypoint == expected


def test_a_missing_waypoint_is_kept_so_traffic_is_refused_and_the_object_warns():
    """Issue 9, item 10: use-waypoint naming no waypoint must not send traffic straight to the endpoints."""
    t, update = translate(namespace("default", labels={"istio.io/use-waypoint": "gone"}), service("web"))
    assert update.delta.upserted[S]["web.default.svc.cluster.local"].waypoint == WaypointRef("default", "gone")
    warnings = t.findings_of(("Service", "default", "web")).warnings
    assert any("waypoint default/gone, which does not exist" in w for w in warnings), warnings
    t.apply_event(added(waypoint_gateway(name="gone")))
    t.flush()
    assert not t.findings_of(("Service", "default", "web")).warnings


def test_workload_waypoint_needs_a_waypoint_for_workloads():
    ns = namespace("default", labels={"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"})
    t, _ = translate(ns, waypoint_gateway(traffic="service"), pod("a"))
    assert t.snapshot()[W]["uid-a-default"].waypoint is None
    t, _ = translate(ns, waypoint_gateway(traffic="workload"), pod("a"))
    assert t.snapshot()[W]["uid-a-default"].waypoint == WaypointRef("default", "waypoint")
    assert str(t.snapshot()[ResourceType.WAYPOINT]["default/waypoint"].identity("cluster.local")) == \
        "spiffe://cluster.local/ns/default/sa/waypoint"


def test_one_pod_change_yields_only_that_workload_and_its_services():
    objs = [namespace("default", labels={"shoal.io/dataplane-mode": "ambient"})]
    objs += [pod(f"web-{i}", labels={"app": "web"}) for i in range(5)]
    objs += [pod(f"db-{i}", labels={"app": "db"}) for i in range(5)]
    objs += [service("web"), service("db", vip="198.18.16.11")]
    t, first = translate(*objs)
    assert len(first.delta.upserted[W]) == 10 and len(first.delta.upserted[S]) == 2
    changed = pod("web-3", labels={"app": "web", "extra": "yes"})
    t.apply_event(added(changed))
    update = t.flush()
    assert set(update.delta.upserted[W]) == {"uid-web-3-default"}
    assert set(update.delta.upserted[S]) == set()  # same endpoints: nothing to push for the Service
    assert not any(update.delta.removed.values())
    t.apply_event(deleted(changed))
    update = t.flush()
    assert update.delta.removed[W] == {"uid-web-3-default"}
    assert set(update.delta.upserted[S]) == {"web.default.svc.cluster.local"}
    assert len(t.snapshot()[S]["web.default.svc.cluster.local"].endpoints) == 4
    assert not t.flush()  # nothing left to do


def test_enrolling_a_namespace_changes_its_workloads_only():
    t, _ = translate(namespace("a"), namespace("b"), pod("x", "a"), pod("y", "b"))
    t.apply_event(added(namespace("a", labels={"shoal.io/dataplane-mode": "ambient"})))
    update = t.flush()
    assert set(update.delta.upserted[W]) == {"uid-x-a"}
    assert update.delta.upserted[W]["uid-x-a"].protocol == Protocol.HBONE


def test_recreated_pod_with_a_new_uid_removes_the_old_workload():
    t, _ = translate(pod("x"))
    t.apply_event(added(pod("x", uid="second")))
    update = t.flush()
    assert update.delta.removed[W] == {"uid-x-default"} and set(update.delta.upserted[W]) == {"second"}


def test_bad_dataplane_mode_is_reported_on_the_namespace():
    t, update = translate(namespace("shop", labels={"shoal.io/dataplane-mode": "ambiant"}))
    (findings,) = update.findings.values()
    assert findings.errors == ("Namespace shop: metadata.labels.shoal.io/dataplane-mode: must be 'ambient' or "
                               "'none', not 'ambiant'",)


def test_snapshot_of_yaml_cluster():
    objs = from_yaml("""
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {shoal.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, clusterIP: 198.18.16.20, ports: [{name: http, port: 80, targetPort: 8080}]}
""")
    t, _ = translate(*objs, pod("cart-1", "shop", labels={"app": "cart"}))
    snap = t.snapshot()
    assert set(snap[S]) == {"cart.shop.svc.cluster.local"} and len(snap) == 2


def test_relabelled_pod_moves_between_services_with_multi_label_selectors():
    a = service("a", selector={"app": "web", "track": "stable"})
    b = service("b", selector={"app": "web", "track": "canary"}, vip="198.18.16.11")
    t, _ = translate(a, b, pod("p", labels={"app": "web", "track": "stable"}), pod("q", labels={"app": "web"}))
    snap = t.snapshot()[S]
    assert [e.workload_uid for e in snap["a.default.svc.cluster.local"].endpoints] == ["uid-p-default"]
    assert snap["b.default.svc.cluster.local"].endpoints == ()
    t.apply_event(added(pod("p", labels={"app": "web", "track": "canary"})))
    update = t.flush()
    assert set(update.delta.upserted[S]) == {"a.default.svc.cluster.local", "b.default.svc.cluster.local"}
    assert update.delta.upserted[S]["a.default.svc.cluster.local"].endpoints == ()
    assert [e.workload_uid for e in update.delta.upserted[S]["b.default.svc.cluster.local"].endpoints] == ["uid-p-default"]
    t.apply_event(added(service("b", selector={"app": "web"}, vip="198.18.16.11")))
    update = t.flush()
    assert {e.workload_uid for e in update.delta.upserted[S]["b.default.svc.cluster.local"].endpoints} == {
        "uid-p-default", "uid-q-default"}


def test_a_pod_is_a_waypoint_by_its_identity_not_by_a_label_or_a_name():
    """Issue 9, item 4: a pod that carries the waypoint's labels and name but not its service account is
    neither a waypoint (it uses the namespace's waypoint like any pod) nor an endpoint of the waypoint Service."""
    ns = namespace("default", labels={"istio.io/use-waypoint": "waypoint", "shoal.io/dataplane-mode": "ambient"})
    part = {"gateway.networking.k8s.io/gateway-name": "waypoint", "app": "waypoint"}
    real = pod("waypoint-abc", labels=part, sa="waypoint")
    impostor = pod("waypoint-xyz", labels=part, sa="default")
    waypoint_svc = service("waypoint", selector=part, ports=((15008, 15008),), labels=part, vip="198.18.16.12")
    t, _ = translate(ns, waypoint_gateway(traffic="all"), real, impostor, waypoint_svc)
    snap = t.snapshot()
    assert [e.workload_uid for e in snap[S]["waypoint.default.svc.cluster.local"].endpoints] == [
        "uid-waypoint-abc-default"]
    assert snap[W]["uid-waypoint-abc-default"].waypoint is None
    assert snap[W]["uid-waypoint-xyz-default"].waypoint == WaypointRef("default", "waypoint")


def test_a_waypoint_never_routes_through_itself():
    ns = namespace("default", labels={"istio.io/use-waypoint": "waypoint"})
    part = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    waypoint_pod = pod("waypoint-abc", labels=part, sa="waypoint")
    waypoint_svc = service("waypoint", selector=part, ports=((15008, 15008),), labels=part, vip="198.18.16.12")
    t, _ = translate(ns, waypoint_gateway(traffic="all"), waypoint_pod, waypoint_svc, service("web"))
    snap = t.snapshot()
    assert snap[S]["waypoint.default.svc.cluster.local"].waypoint is None
    assert snap[S]["web.default.svc.cluster.local"].waypoint == WaypointRef("default", "waypoint")
    w = snap[W]["uid-waypoint-abc-default"]
    assert (w.protocol, w.waypoint) == (Protocol.HBONE, None)   # speaks HBONE though the namespace is not enrolled


def test_every_pod_ip_and_cluster_ip_in_canonical_text_primary_first():
    """Dual stack: status.podIPs and spec.clusterIPs, both families, in Kubernetes' order, one
    canonical text each (a v4-mapped address is its IPv4 address; IPv6 compressed, lower case)."""
    ns = namespace("shop", labels={"shoal.io/dataplane-mode": "ambient"})
    p = pod("web-1", "shop", labels={"app": "web"}, ip="198.19.1.7")
    p["status"]["podIPs"] = [{"ip": "198.19.1.7"}, {"ip": "FD73:686F:616C:0001::0007"}, {"ip": "::ffff:198.19.1.7"}]
    six_first = pod("web-2", "shop", labels={"app": "web"}, ip="fd73:686f:616c:2::8")
    six_first["status"]["podIPs"] = [{"ip": "fd73:686f:616c:2::8"}, {"ip": "198.19.2.8"}]
    svc = service("web", "shop", ports=((80, 8080),), vip="198.18.16.20")
    svc["spec"]["clusterIPs"] = ["198.18.16.20", "FD73:686F:616C:FF::14"]
    svc["spec"]["ipFamilies"] = ["IPv4", "IPv6"]
    t, _ = translate(ns, p, six_first, svc)
    snap = t.snapshot()
    assert snap[W]["uid-web-1-shop"].ips == ("198.19.1.7", "fd73:686f:616c:1::7")
    assert snap[W]["uid-web-2-shop"].ips == ("fd73:686f:616c:2::8", "198.19.2.8")
    web = snap[S]["web.shop.svc.cluster.local"]
    assert web.vips == ("198.18.16.20", "fd73:686f:616c:ff::14")
    assert {e.workload_uid for e in web.endpoints} == {"uid-web-1-shop", "uid-web-2-shop"}


def test_an_ipv6_only_pod_and_service():
    ns = namespace("shop", labels={"shoal.io/dataplane-mode": "ambient"})
    p = pod("web-1", "shop", labels={"app": "web"}, ip="fd73:686f:616c:1::9")
    svc = service("web", "shop", vip="fd73:686f:616c:ff::15")
    svc["spec"]["clusterIPs"] = ["fd73:686f:616c:ff::15"]
    t, _ = translate(ns, p, svc)
    snap = t.snapshot()
    assert snap[W]["uid-web-1-shop"].ips == ("fd73:686f:616c:1::9",)
    assert snap[S]["web.shop.svc.cluster.local"].vips == ("fd73:686f:616c:ff::15",)
