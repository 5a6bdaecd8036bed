"""IPv6 through the pure decisions: outbound plans, the inbound target check, authorization, DNS AAAA,
and telemetry's addresses.

A dual-stack mesh: every workload has an IPv4 and an IPv6 address, every
service a VIP of each family. The decisions must treat IPv6 exactly as IPv4:
the dialled family is kept, authorities bracket IPv6, a v4-mapped address is
its IPv4 address, and only the pod's own addresses are reachable.
"""

from __future__ import annotations

import pytest

from shoal import dns_message
from shoal.hbone import parse_authority
from shoal.model import (
    Action, Authorization, Endpoint, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol, Rule, Service,
    ServicePort, Source, Waypoint, WaypointRef, Workload,
)
from shoal.model.addresses import join_address
from shoal.proxy_state import ProxyState
from structlog.testing import capture_logs
from ztunnel import dns
from ztunnel.inbound import AppReach, InboundConnection, InboundPlan, Refusal, decide_inbound
from ztunnel.outbound import Balancer, Kind, Plan, decide
from ztunnel.telemetry import ConnectionRecord, Metrics, client_address

TD = "cluster.local"
CLIENT_4, CLIENT_6 = "198.19.1.2", "fd73:686f:616c:1::2"
SERVER_4, SERVER_6 = "198.19.2.2", "fd73:686f:616c:2::2"
WP_4, WP_6 = "198.19.2.50", "fd73:686f:616c:2::50"
VIP_4, VIP_6 = "198.18.16.10", "fd73:686f:616c:ff::a"
RVIP_4, RVIP_6 = "198.18.16.13", "fd73:686f:616c:ff::d"


def wl(uid, *ips, sa="default", protocol=Protocol.HBONE, name=None):
    return Workload(uid=uid, name=name or uid, namespace="app", service_account=sa, node="node1", ips=ips,
                    protocol=protocol)


CLIENT = wl("client", CLIENT_4, CLIENT_6, sa="client")
SERVER = wl("server", SERVER_4, SERVER_6, sa="server")
SERVER_SIX_ONLY = wl("six", "fd73:686f:616c:2::6", sa="server")
PLAIN = wl("plain", "198.19.3.9", "fd73:686f:616c:3::9", protocol=Protocol.TCP)
WP_POD = wl("wp-pod", WP_4, WP_6, sa="waypoint", name="waypoint-abc")
WP = Waypoint(name="waypoint", namespace="app", service_account="waypoint")


def svc(name, vips, endpoints, port=80, waypoint=None):
    return Service(name=name, namespace="app", hostname=f"{name}.app.svc.cluster.local", vips=vips,
                   ports=(ServicePort(port),), endpoints=tuple(Endpoint(uid, port, target) for uid, target in endpoints),
                   waypoint=waypoint)


WEB = svc("web", (VIP_4, VIP_6), [("server", 8080)])
REVIEWS = svc("reviews", (RVIP_4, RVIP_6), [("server", 8080)], waypoint=WaypointRef("app", "waypoint"))
WP_SVC = svc("waypoint", ("198.18.16.50", "fd73:686f:616c:ff::32"), [("wp-pod", 15008)], port=15008)


def state(*extra):
    s = ProxyState(TD)
    for r in (CLIENT, SERVER, SERVER_SIX_ONLY, PLAIN, WP_POD, WP, WEB, REVIEWS, WP_SVC, *extra):
        s.upsert(r)
    return s


SERVER_ID = SERVER.identity(TD)
CLIENT_ID = CLIENT.identity(TD)
WP_ID = WP.identity(TD)


@pytest.mark.parametrize("dialled, port, plan", [
    # a pod's IPv6 address: HBONE to its IPv6 15008, authority bracketed
    (SERVER_6, 8080, Plan(Kind.HBONE, (SERVER_6, 15008), f"[{SERVER_6}]:8080", CLIENT_ID, SERVER_ID, "",
                          "server", (SERVER_6, 8080))),
    # its IPv4 address, as before
    (SERVER_4, 8080, Plan(Kind.HBONE, (SERVER_4, 15008), f"{SERVER_4}:8080", CLIENT_ID, SERVER_ID, "",
                          "server", (SERVER_4, 8080))),
    # another spelling of the IPv6 address, and a v4-mapped one: the same workload, canonical in the plan
    ("FD73:686F:616C:2:0:0:0:2", 8080, Plan(Kind.HBONE, (SERVER_6, 15008), f"[{SERVER_6}]:8080", CLIENT_ID,
                                            SERVER_ID, "", "server", (SERVER_6, 8080))),
    (f"::ffff:{SERVER_4}", 8080, Plan(Kind.HBONE, (SERVER_4, 15008), f"{SERVER_4}:8080", CLIENT_ID, SERVER_ID, "",
                                      "server", (SERVER_4, 8080))),
    # a Service's IPv6 VIP: the endpoint's IPv6 address (kube-proxy balances a family within itself)
    (VIP_6, 80, Plan(Kind.HBONE, (SERVER_6, 15008), f"[{SERVER_6}]:8080", CLIENT_ID, SERVER_ID,
                     "web.app.svc.cluster.local", "server", (SERVER_6, 8080))),
    (VIP_4, 80, Plan(Kind.HBONE, (SERVER_4, 15008), f"{SERVER_4}:8080", CLIENT_ID, SERVER_ID,
                     "web.app.svc.cluster.local", "server", (SERVER_4, 8080))),
    # through a waypoint: its address of the dialled family (it listens on both), the IPv6 VIP bracketed
    (RVIP_6, 80, Plan(Kind.WAYPOINT, (WP_6, 15008), f"[{RVIP_6}]:80", CLIENT_ID, WP_ID,
                      "reviews.app.svc.cluster.local", "", (WP_6, 15008))),
    (RVIP_4, 80, Plan(Kind.WAYPOINT, (WP_4, 15008), f"{RVIP_4}:80", CLIENT_ID, WP_ID,
                      "reviews.app.svc.cluster.local", "", (WP_4, 15008))),
    # an unmeshed pod over IPv6: plain TCP, where the client dialled
    ("fd73:686f:616c:3::9", 9000, Plan(Kind.PASSTHROUGH, ("fd73:686f:616c:3::9", 9000),
                                       destination_workload="plain")),
    # outside the mesh: untouched
    ("2001:db8::1", 443, Plan(Kind.PASSTHROUGH, ("2001:db8::1", 443))),
])
def test_outbound_plans_for_ipv6(dialled, port, plan):
    assert decide(state(), CLIENT, dialled, port, Balancer()) == plan


def test_a_service_whose_endpoint_has_no_address_of_the_dialled_family_uses_its_primary_one():
    six_only = svc("six", (VIP_4, ), [("six", 8080)])
    plan = decide(state(six_only), CLIENT, VIP_4, 80, Balancer())
    assert plan.connect == ("fd73:686f:616c:2::6", 15008) and plan.authority == "[fd73:686f:616c:2::6]:8080"


def test_the_authority_the_outbound_side_writes_is_what_the_inbound_side_reads():
    plan = decide(state(), CLIENT, VIP_6, 80, Balancer())
    assert parse_authority(plan.authority) == (SERVER_6, 8080)


# --- inbound -------------------------------------------------------------------------

REACH = AppReach(transparent=True, addresses=(SERVER_4, SERVER_6))


def hbone(target, source=CLIENT_6):
    return InboundConnection(source, target, mtls=True, peer=CLIENT_ID)


@pytest.mark.parametrize("connection, reach, expected", [
    # the pod's own IPv6 address: connect there from the client's IPv6 address
    (hbone((SERVER_6, 8080)), REACH, InboundPlan((SERVER_6, 8080), CLIENT_6)),
    (hbone(("FD73:686F:616C:2::2", 8080)), REACH, InboundPlan((SERVER_6, 8080), CLIENT_6)),
    # a v4-mapped target and source are IPv4
    (hbone((f"::ffff:{SERVER_4}", 8080), source=f"::ffff:{CLIENT_4}"), REACH, InboundPlan((SERVER_4, 8080), CLIENT_4)),
    # families differ (an IPv4 tunnel to the IPv6 address): the app sees the pod's own address, not a wrong one
    (hbone((SERVER_6, 8080), source=CLIENT_4), REACH, InboundPlan((SERVER_6, 8080), None)),
    # the return path does not cover IPv6 in this pod: no IPv6 source kept, IPv4 still is
    (hbone((SERVER_6, 8080)), AppReach(addresses=(SERVER_4, SERVER_6), transparent_ipv6=False),
     InboundPlan((SERVER_6, 8080), None)),
    (hbone((SERVER_4, 8080), source=CLIENT_4), AppReach(addresses=(SERVER_4, SERVER_6), transparent_ipv6=False),
     InboundPlan((SERVER_4, 8080), CLIENT_4)),
    # capture would catch our own connections: the IPv6 loopback for an IPv6 target
    (hbone((SERVER_6, 8080)), AppReach(transparent=False, via_loopback=True, addresses=(SERVER_4, SERVER_6)),
     InboundPlan(("::1", 8080), None, via_loopback=True)),
])
def test_inbound_to_the_pods_own_ipv6_address(connection, reach, expected):
    assert decide_inbound(state(), SERVER, connection, reach) == expected


@pytest.mark.parametrize("target", [("::1", 8080), ("fd73:686f:616c:2::99", 8080), (SERVER_6, 15001),
                                    ("::ffff:127.0.0.1", 8080), ("fe80::1", 8080)])
def test_inbound_refuses_what_is_not_the_pod_over_ipv6(target):
    decision = decide_inbound(state(), SERVER, hbone(target), REACH)
    assert isinstance(decision, Refusal) and decision.status == 400


def test_a_pod_known_only_by_its_ipv4_address_refuses_an_ipv6_target():
    """Fail closed: until the pod has an IPv6 address (netns or config), nothing reaches it over IPv6."""
    four_only = wl("server", SERVER_4, sa="server")
    decision = decide_inbound(state(four_only), four_only, hbone((SERVER_6, 8080)), AppReach(addresses=(SERVER_4,)))
    assert isinstance(decision, Refusal) and SERVER_6 in decision.reason


def test_strict_refuses_plaintext_and_policy_judges_the_ipv6_source():
    strict = PeerAuthentication("strict", "app", PolicyScope.NAMESPACE, PeerAuthMode.STRICT)
    refused = decide_inbound(state(strict), SERVER, InboundConnection("fd73:686f:616c:3::9", (SERVER_6, 8080)), REACH)
    assert isinstance(refused, Refusal) and "STRICT" in refused.reason

    deny = Authorization("deny-six", "app", PolicyScope.NAMESPACE, Action.DENY,
                         (Rule(sources=(Source(ip_blocks=("fd73:686f:616c:1::/64",)),)),))
    assert isinstance(decide_inbound(state(deny), SERVER, hbone((SERVER_6, 8080)), REACH), Refusal)
    # the same client over IPv4 is not in that block; over a v4-mapped source neither
    assert decide_inbound(state(deny), SERVER, hbone((SERVER_4, 8080), source=CLIENT_4), REACH)
    assert decide_inbound(state(deny), SERVER, hbone((SERVER_4, 8080), source=f"::ffff:{CLIENT_4}"), REACH)

    allow_four = Authorization("allow-four", "app", PolicyScope.NAMESPACE, Action.ALLOW,
                               (Rule(sources=(Source(ip_blocks=("198.19.0.0/16",)),)),))
    assert isinstance(decide_inbound(state(allow_four), SERVER, hbone((SERVER_6, 8080)), REACH), Refusal)
    assert decide_inbound(state(allow_four), SERVER, hbone((SERVER_4, 8080), source=f"::ffff:{CLIENT_4}"), REACH)


# --- DNS ---------------------------------------------------------------------------------

def question(name, qtype):
    return dns_message.parse_query(dns_message.build_query(name, qtype)).question


@pytest.mark.parametrize("name, qtype, addresses", [
    ("web", dns_message.TYPE_AAAA, (VIP_6,)),
    ("web.app.svc.cluster.local", dns_message.TYPE_AAAA, (VIP_6,)),
    ("web.app", dns_message.TYPE_A, (VIP_4,)),
])
def test_dns_answers_each_family_with_the_vips_of_that_family(name, qtype, addresses):
    decision = dns.decide(state(), "app", question(name, qtype))
    assert decision == dns.Answer("web.app.svc.cluster.local", addresses)
    query = dns_message.parse_query(dns_message.build_query(name, qtype, 7))
    reply = dns_message.build_response(query, dns_message.NOERROR, decision.addresses)
    assert dns_message.answer_addresses(reply) == list(addresses)


def test_dns_aaaa_for_an_ipv4_only_service_is_nodata():
    four = svc("four", ("198.18.16.40",), [])
    decision = dns.decide(state(four), "app", question("four", dns_message.TYPE_AAAA))
    assert decision == dns.Answer("four.app.svc.cluster.local", ())


# --- telemetry ------------------------------------------------------------------------------

@pytest.mark.parametrize("address, expected", [
    (("::1", 41000), (CLIENT_6, 41000)),              # eBPF connect6 to [::1]:15001: the pod's IPv6 address
    (("127.0.0.1", 41000), (CLIENT_4, 41000)),        # connect4: its IPv4 one
    ((CLIENT_6, 41000), (CLIENT_6, 41000)),           # iptables mode: already the pod's
])
def test_the_outbound_source_is_the_pods_address_of_the_family_used(address, expected):
    assert client_address(address, CLIENT) == expected


def test_an_access_log_line_brackets_ipv6_addresses():
    record = ConnectionRecord("outbound", (CLIENT_6, 41000), (VIP_6, 80), source_workload=CLIENT,
                              upstream=join_address((SERVER_6, 15008)), service="web.app.svc.cluster.local", mtls=True)
    with capture_logs() as lines:
        record.close(Metrics())
    (line,) = [l for l in lines if l.get("event") == "connection complete"]
    assert (line["src_addr"], line["dst_addr"], line["upstream"]) == (
        f"[{CLIENT_6}]:41000", f"[{VIP_6}]:80", f"[{SERVER_6}]:15008")
