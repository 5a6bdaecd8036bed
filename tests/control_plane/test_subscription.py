"""The sans-IO subscription: diffs, scope, ack/nack, coalescing, resume and journal compaction."""

from __future__ import annotations

import dataclasses

import pytest

from control_plane import state as state_module
from control_plane.state import ConfigState
from control_plane.subscription import AckOutcome, Scope, Subscription
from shoal.api import config_pb2
from shoal.model import (Action, Authorization, PolicyScope, ResourceType, Route, RouteTable, Destination,
                         freeze_labels)

from support.plane import workload

W, RT, AUTHZ = ResourceType.WORKLOAD, ResourceType.ROUTE_TABLE, ResourceType.AUTHORIZATION
NODE = Scope(node="node1")


def drain(sub: Subscription, ack: bool = True) -> list[config_pb2.WatchResponse]:
    """Every response the subscription has now, acked as they come (like a fast client)."""
    out = []
    while (o := sub.next_response()) is not None:
        msg = config_pb2.WatchResponse.FromString(o.payload)
        out.append(msg)
        if ack:
            assert sub.on_ack(config_pb2.Ack(type=msg.type, nonce=msg.nonce)) is AckOutcome.ACKED
    return out


def keys(msg) -> set[str]:
    return {r.key for r in msg.resources}


def test_initial_answers_every_type_then_only_changes():
    st = ConfigState()
    st.apply([workload(i) for i in range(3)])
    sub = Subscription.start(NODE, st)
    first = drain(sub)
    assert [m.type for m in first] == ["Service", "Workload", "Waypoint", "Authorization", "PeerAuthentication"]
    assert all(m.initial for m in first) and keys(first[1]) == {"uid-0", "uid-1", "uid-2"}
    assert drain(sub) == []
    st.apply([dataclasses.replace(workload(1), ips=("198.19.1.200",))], removals=[(W, "uid-2")])
    (change,) = drain(sub)
    assert change.type == "Workload" and keys(change) == {"uid-1"} and list(change.removed) == ["uid-2"]
    assert not change.initial and change.version == st.version(W)


def test_one_in_flight_per_type_and_changes_coalesce():
    st = ConfigState()
    sub = Subscription.start(NODE, st)
    drain(sub)
    st.apply([workload(1)])
    out = sub.next_response()
    assert out is not None and out.type is W
    for i in range(2, 6):  # the client has not acked yet: nothing more is built
        st.apply([workload(i)])
        assert sub.next_response() is None
    sub.on_ack(config_pb2.Ack(type="Workload", nonce=out.nonce))
    (coalesced,) = drain(sub)
    assert keys(coalesced) == {"uid-2", "uid-3", "uid-4", "uid-5"}


def test_nack_keeps_base_and_holds_until_the_next_change():
    st = ConfigState()
    st.apply([workload(1)])
    sub = Subscription.start(NODE, st)
    drain(sub)
    st.apply([dataclasses.replace(workload(1), labels=freeze_labels({"bad": "1"}))])
    bad = sub.next_response()
    assert sub.on_ack(config_pb2.Ack(type="Workload", nonce=bad.nonce, error="nope")) is AckOutcome.NACKED
    assert sub.next_response() is None  # held: not re-sent while nothing changed
    assert sub.on_ack(config_pb2.Ack(type="Workload", nonce=bad.nonce)) is AckOutcome.STALE
    st.apply([workload(2)])
    (again,) = drain(sub)
    # From the last good base: the refused uid-1 and the new uid-2.
    assert keys(again) == {"uid-1", "uid-2"}


def test_resume_with_held_versions_sends_only_the_difference():
    st = ConfigState()
    st.apply([workload(i) for i in range(10)])
    first = Subscription.start(NODE, st)
    msgs = {m.type: m for m in drain(first)}
    held = {t: config_pb2.Held(version=m.version, resources={r.key: r.version for r in m.resources})
            for t, m in msgs.items()}
    st.apply([dataclasses.replace(workload(4), ips=("198.19.1.77",))], removals=[(W, "uid-9")])
    # Same server run: resumed from the journal.
    resumed = {m.type: m for m in drain(Subscription.start(NODE, st, held))}
    assert keys(resumed["Workload"]) == {"uid-4"} and list(resumed["Workload"].removed) == ["uid-9"]
    assert all(not m.resources and not m.removed for t, m in resumed.items() if t != "Workload")
    # A restarted server (new epoch): resumed from the per-resource versions.
    fresh = ConfigState()
    fresh.apply(st.snapshot().all())
    again = {m.type: m for m in drain(Subscription.start(NODE, fresh, held))}
    assert keys(again["Workload"]) == {"uid-4"} and list(again["Workload"].removed) == ["uid-9"]


def _table(host: str, namespace: str) -> RouteTable:
    return RouteTable(hostname=host, port=80, namespace=namespace,
                      routes=(Route(destinations=(Destination(host=host),)),))


def test_waypoint_scope_gets_its_namespace_route_tables_and_policies():
    st = ConfigState()
    st.apply([_table("a.shop.svc.cluster.local", "shop"), _table("b.bank.svc.cluster.local", "bank"),
              Authorization("p", "shop", PolicyScope.NAMESPACE, Action.ALLOW),
              Authorization("q", "bank", PolicyScope.NAMESPACE, Action.DENY),
              Authorization("m", "istio-system", PolicyScope.MESH, Action.DENY), workload(1)])
    sub = Subscription.start(Scope(waypoint_namespace="shop", waypoint_name="wp"), st)
    msgs = {m.type: m for m in drain(sub)}
    assert set(msgs) == {"Service", "Workload", "Waypoint", "Authorization", "RouteTable", "TlsCredential"}
    assert keys(msgs["RouteTable"]) == {"a.shop.svc.cluster.local:80"}
    assert keys(msgs["Authorization"]) == {"shop/p", "istio-system/m"}
    # Changes out of scope are not sent at all.
    st.apply([dataclasses.replace(_table("b.bank.svc.cluster.local", "bank"), origin="changed")],
             removals=[(AUTHZ, "bank/q")])
    assert drain(sub) == []
    st.apply(removals=[(RT, "a.shop.svc.cluster.local:80")])
    (gone,) = drain(sub)
    assert list(gone.removed) == ["a.shop.svc.cluster.local:80"]


def test_a_node_scope_never_gets_route_tables():
    st = ConfigState()
    st.apply([_table("a.shop.svc.cluster.local", "shop")])
    assert "RouteTable" not in {m.type for m in drain(Subscription.start(NODE, st))}


def test_compacted_journal_falls_back_to_a_full_replace(monkeypatch):
    monkeypatch.setattr(state_module, "TOMBSTONE_MAX", 10)
    st = ConfigState()
    st.apply([workload(i) for i in range(40)])
    sub = Subscription.start(NODE, st)
    drain(sub)
    stuck = sub.next_response()  # nothing pending
    assert stuck is None
    st.apply([workload(100)])
    in_flight = sub.next_response()  # never acked while many deletions compact the journal
    for i in range(30):
        st.apply(removals=[(W, f"uid-{i}")])
    assert st.journals[W].floor > 0
    sub.on_ack(config_pb2.Ack(type="Workload", nonce=in_flight.nonce, error="refused"))
    (full,) = drain(sub)
    assert full.replace and keys(full) == {f"uid-{i}" for i in range(30, 40)} | {"uid-100"}


def test_same_content_does_not_bump_the_version():
    st = ConfigState()
    st.apply([workload(1)])
    version = st.version(W)
    assert st.apply([workload(1)]) == set()
    assert st.version(W) == version


@pytest.mark.parametrize("replace_all", [False, True])
def test_node_index_follows_workloads(replace_all):
    st = ConfigState()
    st.apply([workload(1, node="node1", sa="a"), workload(2, node="node1", sa="a")])
    assert st.runs_on("node1", "shop", "a") and not st.runs_on("node2", "shop", "a")
    st.apply(removals=[(W, "uid-1")])
    assert st.runs_on("node1", "shop", "a")
    if replace_all:
        from shoal.model import Snapshot
        st.replace(Snapshot.of([workload(2, node="node2", sa="a")]))
    else:
        st.apply([workload(2, node="node2", sa="a")])
    assert not st.runs_on("node1", "shop", "a") and st.runs_on("node2", "shop", "a")
