"""ServiceEntry into Services and endpoint Workloads: resolutions, locations, addresses, refusals."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from shoal.api import convert
from shoal.model import Endpoint, Protocol, Resolution, ResourceType, WaypointRef
from control_plane.translate import service_entry, validate
from control_plane.translate.service_entry import AUTO_ALLOCATE_V4, AUTO_ALLOCATE_V6, allocate
from translate_objects import added, deleted, from_yaml, namespace, pod, service, translate

W, S = ResourceType.WORKLOAD, ResourceType.SERVICE


def entry(name="ext", ns="egress", **spec):
    spec.setdefault("hosts", ["api.outside.test"])
    spec.setdefault("ports", [{"number": 80, "name": "http", "protocol": "HTTP"}])
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_static_endpoints_become_plain_workloads_behind_the_listed_address():
    se = entry(addresses=["198.18.48.200"], resolution="STATIC",
               endpoints=[{"address": "198.18.48.10"}, {"address": "198.18.48.11", "ports": {"http": 8080}}])
    t, update = translate(namespace("egress"), se)
    svc = update.delta.upserted[S]["api.outside.test"]
    assert (svc.name, svc.namespace, svc.vips, svc.source_kind, svc.resolution) == (
        "ext", "egress", ("198.18.48.200",), "ServiceEntry", Resolution.STATIC)
    assert svc.endpoints == (Endpoint("ServiceEntry/egress/ext/0", 80, 80), Endpoint("ServiceEntry/egress/ext/1", 80, 8080))
    first = update.delta.upserted[W]["ServiceEntry/egress/ext/0"]
    assert (first.ips, first.hostname, first.protocol) == (("198.18.48.10",), "", Protocol.TCP)


def test_dns_without_endpoints_resolves_the_host_itself_and_gets_auto_allocated_addresses():
    _, update = translate(entry(resolution="DNS", hosts=["api.outside.test", "b.outside.test"]))
    a, b = update.delta.upserted[S]["api.outside.test"], update.delta.upserted[S]["b.outside.test"]
    for svc in (a, b):
        v4, v6 = svc.vips
        assert ipaddress.ip_address(v4) in AUTO_ALLOCATE_V4 and ipaddress.ip_address(v6) in AUTO_ALLOCATE_V6
    assert a.vips != b.vips
    hosts = {w.hostname for w in update.delta.upserted[W].values()}
    assert hosts == {"api.outside.test", "b.outside.test"}
    assert all(w.ips == () for w in update.delta.upserted[W].values())


def test_dns_endpoint_given_by_address_is_an_ip_workload():
    _, update = translate(entry(resolution="DNS", endpoints=[{"address": "198.18.48.10"}]))
    (workload,) = update.delta.upserted[W].values()
    assert workload.ips == ("198.18.48.10",) and workload.hostname == ""


def test_resolution_none_has_no_endpoints():
    _, update = translate(entry(resolution="NONE", addresses=["198.18.48.30"]))
    svc = update.delta.upserted[S]["api.outside.test"]
    assert svc.resolution is Resolution.NONE and svc.endpoints == () and svc.vips == ("198.18.48.30",)
    assert not update.delta.upserted[W]


def test_mesh_internal_workload_selector_takes_the_pods_of_its_namespace():
    ns = namespace("egress", labels={"shoal.io/dataplane-mode": "ambient"})
    chosen = pod("db-0", "egress", labels={"app": "db"}, ip="198.19.1.40")
    other = pod("web-0", "egress", labels={"app": "web"}, ip="198.19.1.41")
    se = entry(location="MESH_INTERNAL", resolution="STATIC", hosts=["db.internal.test"],
               ports=[{"number": 5432, "name": "tcp-db", "protocol": "TCP", "targetPort": 15432}],
               workloadSelector={"labels": {"app": "db"}})
    t, update = translate(ns, chosen, other, se)
    assert update.delta.upserted[S]["db.internal.test"].endpoints == (Endpoint("uid-db-0-egress", 5432, 15432),)
    # a pod that comes later, labelled to match, joins
    late = pod("db-1", "egress", labels={"app": "db"}, ip="198.19.1.42")
    t.apply_event(added(late))
    later = t.flush()
    assert Endpoint("uid-db-1-egress", 5432, 15432) in later.delta.upserted[S]["db.internal.test"].endpoints


def test_mesh_internal_static_endpoints_speak_hbone_with_their_account():
    se = entry(location="MESH_INTERNAL", resolution="STATIC", addresses=["198.18.48.40"],
               endpoints=[{"address": "198.18.48.41", "serviceAccount": "vm"}])
    _, update = translate(se)
    (workload,) = update.delta.upserted[W].values()
    assert (workload.protocol, workload.service_account) == (Protocol.HBONE, "vm")


def test_use_waypoint_label_on_the_entry_binds_its_waypoint():
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "egress-waypoint", "namespace": "egress"},
               "spec": {"gatewayClassName": "shoal-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    se = entry(resolution="DNS", endpoints=[{"address": "198.18.48.10"}])
    se["metadata"]["labels"] = {"istio.io/use-waypoint": "egress-waypoint"}
    t, _ = translate(namespace("egress"), gateway, se)
    assert t.snapshot()[S]["api.outside.test"].waypoint == WaypointRef("egress", "egress-waypoint")


def test_deleting_the_entry_removes_its_services_and_workloads():
    se = entry(resolution="STATIC", addresses=["198.18.48.200"], endpoints=[{"address": "198.18.48.10"}])
    t, _ = translate(se)
    t.apply_event(deleted(se))
    update = t.flush()
    assert update.delta.removed[S] == {"api.outside.test"}
    assert update.delta.removed[W] == {"ServiceEntry/egress/ext/0"}
    assert not t.snapshot()[S] and not t.snapshot()[W]


def test_a_host_a_kubernetes_service_holds_is_skipped_with_a_warning():
    svc = service("web", "shop", vip="198.18.16.20")
    se = entry(hosts=["web.shop.svc.cluster.local"], resolution="STATIC", endpoints=[{"address": "198.18.48.10"}])
    t, update = translate(namespace("shop"), svc, se)
    assert t.snapshot()[S]["web.shop.svc.cluster.local"].source_kind == "Service"
    (warning,) = t.findings_of(("ServiceEntry", "egress", "ext")).warnings
    assert "web.shop.svc.cluster.local is already another service's host" in warning


def test_everything_round_trips_through_the_wire_form():
    se = entry(resolution="DNS", hosts=["api.outside.test"])
    t, _ = translate(se, entry("st", resolution="NONE", addresses=["198.18.48.30"], hosts=["n.outside.test"]))
    for resource in t.snapshot().all():
        assert convert.from_proto(convert.to_proto(resource)) == resource


@pytest.mark.parametrize("spec, message", [
    ({"hosts": []}, "spec.hosts: is required"),
    ({"hosts": ["198.18.48.10"]}, "is not a host name"),
    ({"addresses": ["198.18.48.0/24"]}, "shoal does not match CIDR ranges"),
    ({"resolution": "DNS_ROUND_ROBIN"}, "DNS_ROUND_ROBIN is not supported"),
    ({"location": "OUTSIDE"}, "must be MESH_EXTERNAL or MESH_INTERNAL"),
    ({"resolution": "STATIC", "endpoints": [{"address": "api.example.com"}]}, "is not an IP address; resolution STATIC"),
    ({"resolution": "NONE", "endpoints": [{"address": "198.18.48.10"}]}, "resolution NONE uses no endpoints"),
    ({"resolution": "DNS", "hosts": ["*.outside.test"]}, "which a wildcard cannot be"),
    ({"resolution": "STATIC", "workloadSelector": {"labels": {"app": "db"}}}, "needs location: MESH_INTERNAL"),
    ({"ports": [{"number": 80}, {"number": 80}]}, "port 80 is listed twice"),
    ({"resolution": "DNS", "endpoints": [{"address": "198.18.48.10", "ports": {"grpc": 9}}]}, "names no port"),
    ({"frobnicate": True}, "spec.frobnicate: unknown field"),
])
def test_bad_entries_are_refused_saying_which_field(spec, message):
    errors = validate(entry(**spec))
    assert errors and any(message in e for e in errors), errors
    assert all(e.startswith("ServiceEntry egress/ext: ") for e in errors)


def test_a_refused_entry_harms_no_other_object():
    good = entry("good", resolution="STATIC", addresses=["198.18.48.200"], endpoints=[{"address": "198.18.48.10"}])
    bad = entry("bad", hosts=["198.18.48.9"])
    t, _ = translate(good, bad)
    assert set(t.snapshot()[S]) == {"api.outside.test"}
    assert t.findings_of(("ServiceEntry", "egress", "bad")).errors


def test_seed_style_yaml_parses():
    (obj,) = from_yaml("""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.org]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
""")
    assert validate(obj) == []


@given(st.lists(st.from_regex(r"[a-z]{1,12}\.test", fullmatch=True), min_size=1, max_size=60, unique=True))
def test_allocation_is_unique_inside_the_ranges_and_keeps_a_host_whose_slot_was_free(hosts):
    first = allocate(hosts)
    assert len(set(first.values())) == len(hosts)
    for v4, v6 in first.values():
        assert ipaddress.ip_address(v4) in AUTO_ALLOCATE_V4 and ipaddress.ip_address(v6) in AUTO_ALLOCATE_V6
        assert v4 not in (str(AUTO_ALLOCATE_V4.network_address), str(AUTO_ALLOCATE_V4.broadcast_address))
    again = allocate(list(reversed(hosts)))
    assert again == first
    # one more host moves none of the others unless it hashed before them into their slot
    more = allocate(hosts + ["zzzz-added.test"])
    moved = [h for h in hosts if more[h] != first[h]]
    assert len(moved) <= 1


def test_the_ranges_stay_inside_the_cluster_own():
    assert AUTO_ALLOCATE_V4.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    assert AUTO_ALLOCATE_V6.subnet_of(ipaddress.ip_network("fd73:686f:616c::/48"))
    assert service_entry.KIND == "ServiceEntry"
