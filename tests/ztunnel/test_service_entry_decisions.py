"""The outbound decision for ServiceEntry services, and which policies a waypoint applies to them."""

from __future__ import annotations

import pytest

from shoal.model import (
    Action, Authorization, Endpoint, PolicyScope, Protocol, Resolution, Rule, Service, ServicePort, TargetRef,
    Waypoint, WaypointRef, Workload,
)
from shoal.proxy_state import ProxyState
from ztunnel.outbound import Balancer, Kind, NoEndpoints, Plan, decide

CLIENT = Workload("client", "client", "app", "client", "node1", ("198.19.1.2",), protocol=Protocol.HBONE)
BY_NAME = Workload("ServiceEntry/egress/ext/0", "ext", "egress", "default", "", (), hostname="api.outside.test")
BY_IP = Workload("ServiceEntry/egress/ip/0", "ip", "egress", "default", "", ("198.18.48.10",))
INTERNAL = Workload("ServiceEntry/egress/vm/0", "vm", "egress", "vm", "", ("198.18.48.41",), protocol=Protocol.HBONE)
WP = Waypoint("egress-waypoint", "egress", "egress-waypoint")
WP_POD = Workload("wp", "egress-waypoint-1", "egress", "egress-waypoint", "node1", ("198.19.1.50",),
                  protocol=Protocol.HBONE)
WP_SVC = Service("egress-waypoint", "egress", "egress-waypoint.egress.svc.cluster.local", ("198.18.16.50",),
                 (ServicePort(15008),), (Endpoint("wp", 15008, 15008),))


def entry(host, vip, endpoints=(), resolution=Resolution.DNS, waypoint=None, name="ext"):
    return Service(name, "egress", host, (vip,), (ServicePort(80),),
                   tuple(Endpoint(uid, 80, target) for uid, target in endpoints), waypoint=waypoint,
                   source_kind="ServiceEntry", resolution=resolution)


DNS_ENTRY = entry("api.outside.test", "198.18.64.7", [("ServiceEntry/egress/ext/0", 8080)])
IP_ENTRY = entry("ip.outside.test", "198.18.64.8", [("ServiceEntry/egress/ip/0", 80)], name="ip")
NONE_ENTRY = entry("none.outside.test", "198.18.48.30", resolution=Resolution.NONE, name="none")
VM_ENTRY = entry("vm.internal.test", "198.18.48.40", [("ServiceEntry/egress/vm/0", 80)], Resolution.STATIC, name="vm")
EGRESS_ENTRY = entry("gw.outside.test", "198.18.64.9", [("ServiceEntry/egress/ip/0", 80)],
                     waypoint=WaypointRef("egress", "egress-waypoint"), name="gw")
EMPTY_STATIC = entry("empty.outside.test", "198.18.64.10", resolution=Resolution.STATIC, name="empty")


def make_state() -> ProxyState:
    state = ProxyState()
    for r in (CLIENT, BY_NAME, BY_IP, INTERNAL, WP, WP_POD, WP_SVC, DNS_ENTRY, IP_ENTRY, NONE_ENTRY, VM_ENTRY,
              EGRESS_ENTRY, EMPTY_STATIC):
        state.upsert(r)
    state.check()
    return state


ID = CLIENT.identity("cluster.local")


@pytest.mark.parametrize("name, ip, expected", [
    ("a DNS entry's endpoint known by name is dialled by name",
     "198.18.64.7", Plan(Kind.DIRECT, ("api.outside.test", 8080), service="api.outside.test",
                         destination_workload="ServiceEntry/egress/ext/0", endpoint=("api.outside.test", 8080))),
    ("an endpoint given by address is dialled at it",
     "198.18.64.8", Plan(Kind.DIRECT, ("198.18.48.10", 80), service="ip.outside.test",
                         destination_workload="ServiceEntry/egress/ip/0", endpoint=("198.18.48.10", 80))),
    ("resolution NONE goes where the client sent it",
     "198.18.48.30", Plan(Kind.PASSTHROUGH, ("198.18.48.30", 80), service="none.outside.test")),
    ("a MESH_INTERNAL endpoint speaks HBONE with its own identity",
     "198.18.48.40", Plan(Kind.HBONE, ("198.18.48.41", 15008), "198.18.48.41:80", ID,
                          INTERNAL.identity("cluster.local"), "vm.internal.test", INTERNAL.uid, ("198.18.48.41", 80))),
    ("an entry bound to a waypoint goes through it",
     "198.18.64.9", Plan(Kind.WAYPOINT, ("198.19.1.50", 15008), "198.18.64.9:80", ID,
                         WP.identity("cluster.local"), "gw.outside.test", "", ("198.19.1.50", 15008))),
])
def test_outbound_to_service_entries(name, ip, expected):
    assert decide(make_state(), CLIENT, ip, 80, Balancer()) == expected


def test_a_static_entry_without_endpoints_is_refused_not_passed_through():
    with pytest.raises(NoEndpoints, match="empty.outside.test"):
        decide(make_state(), CLIENT, "198.18.64.10", 80, Balancer())


def test_the_waypoint_applies_policies_that_target_the_service_entry_not_a_same_named_service():
    state = make_state()
    on_entry = Authorization("deny-gw", "egress", PolicyScope.TARGETS, Action.DENY, (Rule(),),
                             targets=(TargetRef("ServiceEntry", "gw", "egress"),))
    on_service = Authorization("deny-svc", "egress", PolicyScope.TARGETS, Action.DENY, (Rule(),),
                               targets=(TargetRef("Service", "gw", "egress"),))
    state.upsert(on_entry)
    state.upsert(on_service)
    assert state.waypoint_policies_for(EGRESS_ENTRY) == [on_entry]
    kube_service = Service("gw", "egress", "gw.egress.svc.cluster.local", ("198.18.16.60",), (ServicePort(80),))
    assert state.waypoint_policies_for(kube_service) == [on_service]


def test_a_waypoint_sends_a_resolution_none_entry_where_the_client_dialled():
    """At the egress waypoint, an entry without endpoints (NONE) goes to the address the client connected to."""
    import random
    from waypoint.routing import Peer, Plan as WaypointPlan, RequestHead, decide as waypoint_decide
    state = make_state()
    state.waypoint = ("egress", "egress-waypoint")
    bound = Service("none", "egress", "none.outside.test", ("198.18.48.30",), (ServicePort(80),),
                    waypoint=WaypointRef("egress", "egress-waypoint"), source_kind="ServiceEntry",
                    resolution=Resolution.NONE)
    state.upsert(bound)
    plan = waypoint_decide(state, Peer("198.19.1.2", CLIENT.identity("cluster.local"), ("198.18.48.30", 80)),
                           RequestHead("GET", "/", "none.outside.test"), random.random)
    assert isinstance(plan, WaypointPlan)
    (upstream,) = plan.upstreams
    assert (upstream.address, upstream.hbone, upstream.identity) == (("198.18.48.30", 80), False, None)
    # a STATIC entry with no endpoints is still refused, never sent around
    empty = waypoint_decide(state, Peer("198.19.1.2", None, ("198.18.64.10", 80)),
                            RequestHead("GET", "/", "empty.outside.test"), random.random)
    assert not isinstance(empty, WaypointPlan)
