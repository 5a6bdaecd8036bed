"""Dual stack in the local cluster, without a cluster: Service families as Kubernetes assigns them, the
addresses of nodes and pods, kube-proxy's rules and the hosts file in both families."""

from __future__ import annotations

import pytest

from shoal.local import layout, manifest, service_ips, services
from shoal.store import SERVICE_NETWORK, SERVICE_NETWORK_V6, ServiceRefused, Store

V4 = (SERVICE_NETWORK,)
DUAL = (SERVICE_NETWORK, SERVICE_NETWORK_V6)
V6 = (SERVICE_NETWORK_V6,)


def assigned(spec: dict, ranges, old=None, used=()) -> dict:
    spec = dict(spec)
    service_ips.assign(spec, old, ranges, set(used))
    return {k: spec[k] for k in ("ipFamilyPolicy", "ipFamilies", "clusterIPs", "clusterIP")}


@pytest.mark.parametrize("spec, ranges, expected", [
    ({}, V4, ("SingleStack", ["IPv4"], ["198.18.16.10"])),
    ({}, DUAL, ("SingleStack", ["IPv4"], ["198.18.16.10"])),
    ({}, V6, ("SingleStack", ["IPv6"], ["fd73:686f:616c:ff::a"])),
    ({"ipFamilyPolicy": "PreferDualStack"}, DUAL, ("PreferDualStack", ["IPv4", "IPv6"],
                                                   ["198.18.16.10", "fd73:686f:616c:ff::a"])),
    ({"ipFamilyPolicy": "PreferDualStack"}, V4, ("PreferDualStack", ["IPv4"], ["198.18.16.10"])),
    ({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}, DUAL,
     ("RequireDualStack", ["IPv6", "IPv4"], ["fd73:686f:616c:ff::a", "198.18.16.10"])),
    ({"ipFamilies": ["IPv6", "IPv4"]}, DUAL,   # two families and no policy: RequireDualStack, as Kubernetes infers
     ("RequireDualStack", ["IPv6", "IPv4"], ["fd73:686f:616c:ff::a", "198.18.16.10"])),
    ({"ipFamilies": ["IPv6"]}, DUAL, ("SingleStack", ["IPv6"], ["fd73:686f:616c:ff::a"])),
    ({"clusterIP": "fd73:686f:616c:ff::20"}, DUAL, ("SingleStack", ["IPv6"], ["fd73:686f:616c:ff::20"])),
    ({"clusterIPs": ["198.18.16.30", "fd73:686f:616c:ff::30"]}, DUAL,
     ("RequireDualStack", ["IPv4", "IPv6"], ["198.18.16.30", "fd73:686f:616c:ff::30"])),
    ({"clusterIP": "None", "ipFamilyPolicy": "PreferDualStack"}, DUAL, ("PreferDualStack", ["IPv4", "IPv6"], ["None"])),
])
def test_families_and_cluster_ips_as_kubernetes_assigns_them(spec, ranges, expected):
    got = assigned(spec, ranges)
    assert (got["ipFamilyPolicy"], got["ipFamilies"], got["clusterIPs"]) == expected
    assert got["clusterIP"] == got["clusterIPs"][0]


def test_allocation_skips_addresses_in_use_in_each_family():
    got = assigned({"ipFamilyPolicy": "PreferDualStack"}, DUAL, used={"198.18.16.10", "fd73:686f:616c:ff::a"})
    assert got["clusterIPs"] == ["198.18.16.11", "fd73:686f:616c:ff::b"]


def test_an_update_keeps_its_addresses_adds_a_family_when_asked_and_downgrades_to_its_primary():
    old = assigned({}, DUAL)
    upgraded = assigned({**old, "ipFamilyPolicy": "PreferDualStack"}, DUAL, old=old, used=set(old["clusterIPs"]))
    assert upgraded["clusterIPs"] == [old["clusterIP"], "fd73:686f:616c:ff::a"]
    downgraded = assigned({**upgraded, "ipFamilyPolicy": "SingleStack"}, DUAL, old=upgraded)
    assert downgraded["ipFamilies"] == ["IPv4"] and downgraded["clusterIPs"] == [old["clusterIP"]]
    with pytest.raises(service_ips.ServiceIPError, match=r"spec.ipFamilies\[0\]: a Service's primary family"):
        assigned({"ipFamilies": ["IPv6"]}, DUAL, old=old)


@pytest.mark.parametrize("spec, ranges, field, reason", [
    ({"ipFamilyPolicy": "RequireDualStack"}, V4, "spec.ipFamilyPolicy", "RequireDualStack needs a dual-stack cluster"),
    ({"ipFamilies": ["IPv6"]}, V4, "spec.ipFamilies[0]", "IPv6 is not served by this cluster (IPv4 only)"),
    ({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}, DUAL, "spec.ipFamilyPolicy",
     "SingleStack allows one family"),
    ({"ipFamilyPolicy": "Dual"}, DUAL, "spec.ipFamilyPolicy", "'Dual' is not one of SingleStack"),
    ({"ipFamilies": ["IPv5"]}, DUAL, "spec.ipFamilies", "is not one or two distinct families"),
    ({"clusterIP": "fd73:686f:616c:ff::20"}, V4, "spec.clusterIPs[0]", "is IPv6, which this cluster does not serve"),
    ({"clusterIP": "fd00::1"}, DUAL, "spec.clusterIP", "outside the Service range fd73:686f:616c:ff::/112"),
    ({"clusterIPs": ["198.18.16.30", "198.18.16.31"]}, DUAL, "spec.clusterIPs", "two addresses of one family"),
    ({"clusterIP": "198.18.16.30", "clusterIPs": ["198.18.16.31"]}, DUAL, "spec.clusterIPs[0]",
     "must equal spec.clusterIP"),
    ({"ipFamilies": ["IPv6"], "clusterIP": "198.18.16.30"}, DUAL, "spec.clusterIPs[0]",
     "is IPv4, but spec.ipFamilies[0] is IPv6"),
    ({"clusterIP": "nope"}, DUAL, "spec.clusterIP", "'nope' is not an IP address"),
])
def test_what_the_cluster_cannot_give_is_refused_with_the_field_and_why(spec, ranges, field, reason):
    found = service_ips.problems(spec, ranges)
    assert len(found) == 1 and found[0][0] == field and reason in found[0][1], found


def test_apply_refuses_the_whole_manifest_naming_the_service_field_and_reason():
    objects = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}}]
    assert manifest.validate(objects, existing_namespaces={"default"}, service_ranges=DUAL) == []
    errors = manifest.validate(objects, existing_namespaces={"default"})
    assert len(errors) == 1 and errors[0].startswith("Service default/web: spec.ipFamilyPolicy: RequireDualStack")


def test_the_store_assigns_families_and_refuses_a_batch_whole(tmp_path):
    store = Store("dual", root=tmp_path)
    store.init(DUAL)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "default"},
               "spec": {"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}}
    stored = store.apply(service)["spec"]
    assert stored["ipFamilies"] == ["IPv4", "IPv6"] and stored["clusterIPs"][1].startswith("fd73:686f:616c:ff::")
    assert store.apply(service)["spec"]["clusterIPs"] == stored["clusterIPs"]   # kept on re-apply
    v4_only = Store("v4", root=tmp_path)
    v4_only.init()
    rv = v4_only.resource_version()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    with pytest.raises(ServiceRefused, match="Service default/a: spec.ipFamilyPolicy"):
        v4_only.apply_many([namespace, {**service, "spec": {**service["spec"], "ipFamilyPolicy": "RequireDualStack"}}])
    assert v4_only.resource_version() == rv and v4_only.get("Namespace", None, "shop") is None


def test_node_and_pod_addresses_read_as_their_ipv4_ones():
    assert layout.pod_ips(12, 7, "dual") == ("198.19.12.7", "fd73:686f:616c:12::7")
    assert layout.pod_ips(12, 7, "ipv6") == ("fd73:686f:616c:12::7",)
    assert layout.node_ips(3, "dual") == ("198.18.0.3", "fd73:686f:616c::3")
    assert str(layout.pod_cidr_v6(200)) == "fd73:686f:616c:200::/64"
    assert all(not layout.pod_cidr_v6(n).overlaps(layout.SERVICE_NETWORK_V6) for n in range(1, layout.MAX_NODES + 1))
    assert all(layout.pod_cidr_v6(n).subnet_of(layout.ULA_NETWORK) for n in (1, layout.MAX_NODES))


def dual_pod(name: str, v4: str, v6: str) -> dict:
    return {"metadata": {"name": name, "namespace": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def test_kube_proxy_rules_and_endpoints_per_family():
    service = {"metadata": {"name": "web", "namespace": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}],
                        "ipFamilies": ["IPv6", "IPv4"], "clusterIPs": ["fd73:686f:616c:ff::a", "198.18.16.10"],
                        "clusterIP": "fd73:686f:616c:ff::a"}}
    pods = [dual_pod("a", "198.19.1.2", "fd73:686f:616c:1::2")]
    assert [e.ip for e in services.endpoints(service, pods)] == ["fd73:686f:616c:1::2"]   # its primary family
    v6 = services.proxy_rules([(service, services.endpoints(service, pods, "IPv6"))], "IPv6")
    assert "-d fd73:686f:616c:ff::a/128 -p tcp --dport 80" in v6
    assert "DNAT --to-destination [fd73:686f:616c:1::2]:8080" in v6 and "198.1" not in v6
    v4 = services.proxy_rules([(service, services.endpoints(service, pods, "IPv4"))], "IPv4")
    assert "-d 198.18.16.10/32" in v4 and "--to-destination 198.19.1.2:8080" in v4 and "fd73" not in v4
    hosts = services.hosts_file("web", [service]).splitlines()
    assert "fd73:686f:616c:ff::a\tweb.web.svc.cluster.local web.web.svc web.web web" in hosts
    assert "198.18.16.10\tweb.web.svc.cluster.local web.web.svc web.web web" in hosts
