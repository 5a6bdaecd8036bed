"""The proxies' one state store: indexes stay exact, and each proxy's questions get the right answers."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from shoal.model import (
    Action, Authorization, Endpoint, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol, ResourceType,
    RouteTable, Rule, Service, ServicePort, Snapshot, TargetRef, Workload, freeze_labels,
)
from shoal.proxy_state import ProxyState


def wl(uid, *ips, ns="app", labels=None):
    return Workload(uid=uid, name=uid, namespace=ns, service_account="default", node="node1", ips=tuple(ips),
                    labels=freeze_labels(labels or {}), protocol=Protocol.HBONE)


def svc(name, *vips, ns="app", endpoints=()):
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local", vips=tuple(vips),
                   ports=(ServicePort(80),), endpoints=tuple(Endpoint(uid, 80, 8080) for uid in endpoints))


def policy(name, ns="app", scope=PolicyScope.NAMESPACE, selector=None, targets=()):
    return Authorization(name=name, namespace=ns, scope=scope, action=Action.DENY, rules=(Rule(),),
                         selector=freeze_labels(selector or {}), targets=tuple(targets))


def test_insert_removes_the_old_version_first():
    state = ProxyState()
    state.upsert(wl("a", "198.19.1.2"))
    state.upsert(wl("a", "198.19.1.9"))          # the pod moved
    state.upsert(svc("web", "198.18.16.10"))
    state.upsert(svc("web", "198.18.16.77"))
    state.check()
    assert state.workload_by_ip("198.19.1.2") is None and state.workload_by_ip("198.19.1.9").uid == "a"
    assert state.service_by_vip("198.18.16.10") is None and state.service_by_vip("198.18.16.77").name == "web"
    state.upsert(policy("p"))
    state.remove(ResourceType.AUTHORIZATION, "app/p")
    state.check()
    assert state.policies_by_namespace == {}


def test_an_address_taken_over_by_another_workload_is_not_removed_with_the_first():
    state = ProxyState()
    state.upsert(wl("old", "198.19.1.2"))
    state.upsert(wl("new", "198.19.1.2"))        # the IP was reused before "old" was deleted
    state.remove(ResourceType.WORKLOAD, "old")
    assert state.workload_by_ip("198.19.1.2").uid == "new"
    state.check()


def test_replace_drops_what_is_missing_and_counts_versions():
    state = ProxyState()
    for resource in (wl("a", "198.19.1.2"), wl("b", "198.19.1.3"), svc("web", "198.18.16.10"), policy("p")):
        state.upsert(resource)
    before = state.version
    state.replace(Snapshot.of([wl("a", "198.19.1.2"), svc("web", "198.18.16.10")]))
    state.check()
    assert set(state.workloads) == {"a"} and set(state.services) == {"web.app.svc.cluster.local"}
    assert state.authorizations == {} and state.version > before
    dump = state.dump()
    assert dump["workloads"][0]["uid"] == "a" and dump["workloads"][0]["protocol"] == "HBONE"


def test_cached_memos_are_emptied_by_any_change():
    state = ProxyState()
    state.cached("endpoints")["x"] = 1
    assert state.cached("endpoints") == {"x": 1}
    state.upsert(wl("a", "198.19.1.2"))
    assert state.cached("endpoints") == {}


def test_ztunnel_policies_by_scope():
    state = ProxyState()
    target = wl("t", "198.19.2.2", labels={"app": "db"})
    for p in (policy("mesh", ns="istio-system", scope=PolicyScope.MESH), policy("ns"), policy("other", ns="elsewhere"),
              policy("sel", scope=PolicyScope.WORKLOAD, selector={"app": "db"}),
              policy("unsel", scope=PolicyScope.WORKLOAD, selector={"app": "web"}),
              policy("wp", scope=PolicyScope.TARGETS, targets=[TargetRef("Service", "db", "app")])):
        state.upsert(p)
    assert {p.name for p in state.policies_for(target)} == {"mesh", "ns", "sel"}
    assert state.authorizations_select_by_label("app") and not state.authorizations_select_by_label("elsewhere")


def test_waypoint_policies_by_target():
    state = ProxyState(waypoint=("app", "waypoint"))
    db = svc("db", "198.18.16.20")
    for p in (policy("on-gateway", scope=PolicyScope.TARGETS, targets=[TargetRef("Gateway", "waypoint", "app")]),
              policy("on-db", scope=PolicyScope.TARGETS, targets=[TargetRef("Service", "db", "app")]),
              policy("on-web", scope=PolicyScope.TARGETS, targets=[TargetRef("Service", "web", "app")]),
              policy("other-gateway", scope=PolicyScope.TARGETS, targets=[TargetRef("Gateway", "other", "app")]),
              policy("namespace-wide")):
        state.upsert(p)
    assert {p.name for p in state.waypoint_policies_for(db)} == {"on-gateway", "on-db"}
    assert {p.name for p in state.waypoint_policies_for(None)} == {"on-gateway"}


def test_peer_authentication_most_specific_wins():
    state = ProxyState()
    target = wl("t", "198.19.2.2", labels={"app": "db"})
    assert state.peer_auth_mode(target, 80) is PeerAuthMode.PERMISSIVE
    state.upsert(PeerAuthentication("mesh", "istio-system", PolicyScope.MESH, PeerAuthMode.STRICT))
    assert state.peer_auth_mode(target, 80) is PeerAuthMode.STRICT
    state.upsert(PeerAuthentication("ns", "app", PolicyScope.NAMESPACE, PeerAuthMode.PERMISSIVE))
    assert state.peer_auth_mode(target, 80) is PeerAuthMode.PERMISSIVE
    state.upsert(PeerAuthentication("db", "app", PolicyScope.WORKLOAD, PeerAuthMode.UNSET,
                                    selector=freeze_labels({"app": "db"}),
                                    port_modes=((5432, PeerAuthMode.STRICT),)))
    assert state.peer_auth_mode(target, 5432) is PeerAuthMode.STRICT
    assert state.peer_auth_mode(target, 80) is PeerAuthMode.PERMISSIVE  # UNSET inherits
    assert state.peer_authentications_select_by_label("app")


def test_route_table_for_a_port_or_any_port():
    state = ProxyState()
    any_port = RouteTable(hostname="web.app.svc.cluster.local", port=0, namespace="app")
    state.upsert(any_port)
    assert state.route_table("web.app.svc.cluster.local", 8080) == any_port
    exact = RouteTable(hostname="web.app.svc.cluster.local", port=8080, namespace="app")
    state.upsert(exact)
    assert state.route_table("web.app.svc.cluster.local", 8080) == exact
    state.check()


OPS = st.lists(st.tuples(st.sampled_from(["upsert-workload", "upsert-service", "remove-workload", "remove-service"]),
                         st.integers(0, 4), st.integers(0, 3)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_indexes_never_drift_under_any_sequence_of_writes(ops):
    state = ProxyState()
    for op, name, address in ops:
        if op == "upsert-workload":
            # dual stack: an IPv6 address beside each IPv4 one, reused across workloads as the IPv4 ones are
            state.upsert(wl(f"w{name}", f"198.19.1.{address}", f"198.19.2.{random.Random(name).randint(0, 3)}",
                            f"fd73:686f:616c:1::{address}"))
        elif op == "upsert-service":
            state.upsert(svc(f"s{name}", f"198.18.16.{address}", f"fd73:686f:616c:ff::{address}"))
        elif op == "remove-workload":
            state.remove(ResourceType.WORKLOAD, f"w{name}")
        else:
            state.remove(ResourceType.SERVICE, f"s{name}.app.svc.cluster.local")
        state.check()


def test_nothing_is_applied_until_every_expected_type_arrived_then_all_at_once():
    from types import MappingProxyType

    from shoal.config_client import Update

    def update(rtype, *resources, replace=True):
        return Update(rtype, "v1", MappingProxyType({r.key: r for r in resources}), frozenset(), replace)

    state = ProxyState(expects=(ResourceType.WORKLOAD, ResourceType.SERVICE, ResourceType.AUTHORIZATION))
    assert not state.synced
    state.apply_update(update(ResourceType.WORKLOAD, wl("a", "198.19.1.2")))
    state.apply_update(update(ResourceType.SERVICE, svc("web", "198.18.16.10")))
    assert not state.synced and state.workloads == {} and state.services == {}   # no type applied alone
    state.apply_update(update(ResourceType.WORKLOAD, wl("a", "198.19.1.2"), wl("b", "198.19.1.3")))
    assert state.workloads == {}
    state.apply_update(update(ResourceType.AUTHORIZATION, policy("deny-all")))
    assert state.synced
    assert set(state.workloads) == {"a", "b"} and set(state.services) == {"web.app.svc.cluster.local"}
    assert set(state.authorizations) == {"app/deny-all"}
    state.check()
    state.apply_update(update(ResourceType.WORKLOAD, wl("c", "198.19.1.4")))       # after the first: at once
    assert set(state.workloads) == {"c"}


def test_every_address_of_both_families_is_indexed_and_found_by_any_spelling():
    state = ProxyState()
    state.upsert(wl("a", "198.19.1.5", "fd73:686f:616c:1::5"))
    state.upsert(svc("web", "198.18.16.10", "fd73:686f:616c:ff::a", endpoints=("a",)))
    state.check()
    for spelling in ("198.19.1.5", "::ffff:198.19.1.5", "fd73:686f:616c:1::5", "FD73:686F:616C:0001:0:0:0:5"):
        assert state.workload_by_ip(spelling).uid == "a", spelling
    for spelling in ("198.18.16.10", "::ffff:c612:100a", "fd73:686f:616c:ff::a", "fd73:686f:616c:ff:0::A"):
        assert state.service_by_vip(spelling).name == "web", spelling
    assert state.workload_by_ip("fd73:686f:616c:1::6") is None
    assert state.workload_by_ip("not-an-ip") is None
    state.remove(ResourceType.WORKLOAD, "a")
    assert state.workload_by_ip("fd73:686f:616c:1::5") is None and state.workloads_by_ip == {}
    state.check()
