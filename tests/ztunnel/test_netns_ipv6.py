"""IPv6 through two ztunnels in real network namespaces (root): ip6tables capture, HBONE over IPv6.

Three dual-stack pods on one bridge: `a` served by one ztunnel ("node1"), `b`
by another ("node2"), `c` outside the mesh. The rig plays the node agent
(ip6tables REDIRECT rules as the agent's iptables mode installs them for
IPv6, and the hand-off of each pod's netns) and the control plane (a
ProxyState filled directly, a test CA). The rest is the ztunnel as it runs:
dual-stack listeners in the pods, the original destination of an IPv6
connection, HBONE between the two ztunnels over IPv6, the client's IPv6
address kept for the app (ip6tables/ip -6 return path), STRICT, policy by
IPv6 source, access logs and metrics with IPv6 addresses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import handoff, netns
from shoal.certs import CertManager
from shoal.model import (
    Action, Authorization, Endpoint, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol, Rule, Service,
    ServicePort, Source, Workload,
)
from shoal.proxy_state import ProxyState
from ztunnel.config import Config
from ztunnel.proxy import Ztunnel

from support import metrics
from support.ca import TestCA
from support.capture import tcpdump
from support.polling import eventually
from support.rules import shoal_rules
from support.root import needs_root
import zt_netns
from zt_netns import sh

pytestmark = needs_root("creates network namespaces and ip6tables rules")

APPS = str(Path(__file__).with_name("zt_apps.py"))
PREFIX = f"shoal-z6{os.getpid() % 100000}-"
ROUTER = PREFIX + "router"
ROUTER_6 = "fd73:686f:616c:1::1"
PODS = {"a": ("198.19.1.2", "fd73:686f:616c:1::a"), "b": ("198.19.1.3", "fd73:686f:616c:1::b"),
        "c": ("198.19.1.4", "fd73:686f:616c:1::c")}
A6, B6, C6 = PODS["a"][1], PODS["b"][1], PODS["c"][1]
WEB_VIP_4, WEB_VIP_6 = "198.18.16.10", "fd73:686f:616c:ff::a"
WEB = "web.app.svc.cluster.local"


def pod_ns(name):
    return PREFIX + name


def in_pod(name, *argv, timeout=20):
    return subprocess.run(["ip", "netns", "exec", pod_ns(name), *argv], capture_output=True, text=True,
                          timeout=timeout)


def build_network():
    netns.create(ROUTER)
    sh("ip", "-n", ROUTER, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ROUTER, "addr", "add", f"{ROUTER_6}/64", "dev", "br0", "nodad")
    sh("ip", "-n", ROUTER, "link", "set", "br0", "up")
    # Forwarding off: what is for no pod (an unknown VIP) is dropped, never routed anywhere.
    sh("ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    for name, (ip4, ip6) in PODS.items():
        netns.create(pod_ns(name))
        sh("ip", "-n", ROUTER, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns",
           pod_ns(name))
        sh("ip", "-n", ROUTER, "link", "set", f"v{name}", "master", "br0", "up")
        sh("ip", "-n", pod_ns(name), "addr", "add", f"{ip4}/24", "dev", "eth0")
        sh("ip", "-n", pod_ns(name), "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", pod_ns(name), "link", "set", "eth0", "up")
        sh("ip", "-n", pod_ns(name), "-6", "route", "add", "default", "via", ROUTER_6)


def capture_rules(name):
    """The node agent's iptables mode for IPv6: outbound TCP to 15001, inbound (not 15008) to 15006."""
    zt_netns.capture_rules(pod_ns(name), "ip6tables-legacy")


def resources():
    a = Workload("uid-a", "a", "app", "a", "node1", PODS["a"], protocol=Protocol.HBONE)
    b = Workload("uid-b", "b", "app", "b", "node2", PODS["b"], protocol=Protocol.HBONE)
    c = Workload("uid-c", "c", "legacy", "default", "node1", PODS["c"], protocol=Protocol.TCP)
    web = Service("web", "app", WEB, (WEB_VIP_4, WEB_VIP_6), (ServicePort(80),), (Endpoint("uid-b", 80, 8080),))
    return a, b, c, web


class Rig(zt_netns.RigBase):
    """Two ztunnels on one event loop, each serving one pod."""

    def __init__(self):
        super().__init__()
        self.ca = TestCA()

    def start(self):
        build_network()
        for name in ("a", "b"):
            capture_rules(name)
        proc = netns.popen(pod_ns("b"), [sys.executable, APPS, "http", "8080", "::"], stdout=subprocess.PIPE,
                           text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        self.start_loop()

        async def boot():
            self.state = ProxyState()
            for r in resources():
                self.state.upsert(r)
            self.node1 = Ztunnel(Config(connect_timeout=3, node="node1"), self.state, CertManager(self.ca.sign))
            self.node2 = Ztunnel(Config(connect_timeout=3, node="node2"), self.state, CertManager(self.ca.sign))
            await self.node1.add_workload(handoff.Workload("uid-a", "a", "app", "a"), netns.open_fd(pod_ns("a")))
            await self.node2.add_workload(handoff.Workload("uid-b", "b", "app", "b"), netns.open_fd(pod_ns("b")))
        self.call(boot())

    def stop(self):
        try:
            self.stop_loop(*(getattr(self, node) for node in ("node1", "node2") if hasattr(self, node)))
        finally:
            for name in [ROUTER] + [pod_ns(p) for p in PODS]:
                netns.remove(name)


@pytest.fixture(scope="module")
def rig():
    r = Rig()
    try:
        r.start()
        yield r
    finally:
        r.stop()


def curl(pod, url, timeout=8):
    return in_pod(pod, "curl", "-sS", "-g", "--max-time", str(timeout), url)


def test_a_service_ipv6_vip_through_two_ztunnels_keeps_the_clients_ipv6_address(rig):
    def opened(ztunnel, reporter):
        return metrics.value(ztunnel.metrics.render().decode(), "istio_tcp_connections_opened_total",
                             reporter=reporter, destination_service=WEB, connection_security_policy="mutual_tls") or 0
    before = opened(rig.node1, "source"), opened(rig.node2, "destination")
    mark = rig.mark()
    result = curl("a", f"http://[{WEB_VIP_6}]/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"peer={A6}\n"            # the server saw the client's IPv6 address
    outbound, inbound = rig.line_after(mark, "outbound", timeout=20), rig.line_after(mark, "inbound", timeout=20)
    assert outbound["plan"] == "hbone" and outbound["mtls"] and outbound["upstream"] == f"[{B6}]:15008"
    assert outbound["dst_addr"] == f"[{WEB_VIP_6}]:80" and outbound["src_addr"].startswith(f"[{A6}]:")
    assert outbound["dst_service"] == WEB and outbound["src_workload"] == "a"
    assert inbound["mtls"] and inbound["src_identity"] == "spiffe://cluster.local/ns/app/sa/a"
    assert inbound["src_addr"].startswith(f"[{A6}]:") and inbound["dst_addr"] == f"[{B6}]:8080"
    assert inbound["upstream"] == f"[{B6}]:8080" and inbound["bytes_sent"] > 0
    eventually(lambda: (opened(rig.node1, "source") - before[0], opened(rig.node2, "destination") - before[1])
               == (1, 1), 20, "one connection counted by each ztunnel")


def test_a_pods_ipv6_address_crosses_in_hbone_only(rig, tmp_path):
    with tcpdump(ROUTER, "br0", "ip6 and tcp", tmp_path / "cap.txt") as capture:
        result = curl("a", f"http://[{B6}]:8080/")
        assert result.returncode == 0 and result.stdout == f"peer={A6}\n", result.stderr
    assert capture.headers, "tcpdump saw nothing"
    assert all(".15008 " in l or ".15008:" in l for l in capture.headers), capture.headers[:5]
    assert "peer=" not in capture.text and "GET / HTTP" not in capture.text


def test_plaintext_over_ipv6_permissive_then_strict(rig):
    result = curl("c", f"http://[{B6}]:8080/")
    assert result.returncode == 0 and result.stdout == f"peer={C6}\n", result.stderr
    with rig.applied(PeerAuthentication("strict", "app", PolicyScope.NAMESPACE, PeerAuthMode.STRICT)):
        mark = rig.mark()
        assert curl("c", f"http://[{B6}]:8080/").returncode != 0
        line = rig.line_after(mark, "inbound_plaintext", timeout=20)
        assert "STRICT" in line["error"] and line["src_addr"].startswith(f"[{C6}]:")
        assert curl("a", f"http://[{B6}]:8080/").stdout == f"peer={A6}\n"     # meshed A still gets through


def test_a_deny_policy_on_the_clients_ipv6_block(rig):
    deny = Authorization("deny-a6", "app", PolicyScope.NAMESPACE, Action.DENY,
                         (Rule(sources=(Source(ip_blocks=(f"{A6}/128",)),)),))
    with rig.applied(deny):
        mark = rig.mark()
        assert curl("a", f"http://[{WEB_VIP_6}]/").returncode != 0
        denied = rig.line_after(mark, "inbound", timeout=20)
        assert "deny-a6" in denied["error"] and denied["response_flags"] == "UAEX"
        # the same client over IPv4 is outside the IPv6 block (no IPv4 capture here: it goes direct, and the
        # dual-stack app reports it v4-mapped)
        assert curl("a", f"http://{PODS['b'][0]}:8080/").stdout == f"peer=::ffff:{PODS['a'][0]}\n"
    assert curl("a", f"http://[{WEB_VIP_6}]/").stdout == f"peer={A6}\n"


def test_removing_the_pod_takes_its_ipv6_return_path_and_listeners_away(rig):
    """Last in this module: it takes b out of the mesh. No leftovers in either family."""
    assert "SHOAL_ZTUNNEL" in in_pod("b", "ip6tables-legacy-save", "-t", "mangle").stdout
    assert "lookup 133" in in_pod("b", "ip", "-6", "rule").stdout
    assert "*:15008 " in in_pod("b", "ss", "-ltnH").stdout          # one dual-stack socket per port (ss: "*")
    rig.call(rig.node2.del_workload("uid-b"))
    eventually(lambda: ":15008" not in in_pod("b", "ss", "-ltnH").stdout, 10, "b's listeners to close")
    assert shoal_rules(pod_ns("b"), "SHOAL_ZTUNNEL") == []
    for family in ("-4", "-6"):
        assert "lookup 133" not in in_pod("b", "ip", family, "rule").stdout
        assert in_pod("b", "ip", family, "route", "show", "table", "133").stdout.strip() == ""
