"""DNS capture in a real pod netns, in both redirect modes (the `redirection` fixture is parametrized).

The test process plays the ztunnel's DNS proxy: a UDP and a TCP socket on
15053 in pod a's netns. The app is a real process in the pod's netns and
cgroup that queries a resolver address; with capture on, the query lands
on 15053, and a marked socket outside the pod's cgroup (the ztunnel's
forwarding) is not captured.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest

from shoal import netns
from shoal.contracts import MARK, dns_capture
from node_agent import dns_capture as capture, netfilter

from support.rules import shoal_rules
from support.root import needs_root
from na_topology import POD_IPS, Server, client_code, listen_in, original_dst

pytestmark = needs_root("network namespaces, iptables, eBPF")

UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"query", ("127.0.0.53", 53))
try:
    print(s.recvfrom(100)[0].decode())
except socket.timeout:
    print("no answer")
"""

TCP_CLIENT = """
import socket
s = socket.create_connection(("127.0.0.53", 53), timeout=3)
s.sendall(b"query")
print(s.recv(100).decode())
"""


@pytest.fixture
def dns_pod(redirection, topo):
    pod = dataclasses.replace(topo.pods["a"], dns_capture=True)
    redirection.install(pod)
    yield pod
    redirection.remove(pod)


def dns_listeners(ns: str):
    udp = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 15053))
    udp.settimeout(5)
    tcp = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 15053))
    tcp.listen(4)
    tcp.settimeout(5)
    return udp, tcp


def test_udp_and_tcp_53_land_on_the_dns_proxy(topo, redirection, dns_pod):
    assert redirection.installed(dns_pod)
    udp, tcp = dns_listeners(topo.pod_netns("a"))
    try:
        import threading
        seen = {}

        def serve_udp():
            data, address = udp.recvfrom(100)
            seen["udp"] = data
            udp.sendto(b"proxy-udp", address)

        def serve_tcp():
            conn, _ = tcp.accept()
            with conn:
                seen["tcp"] = conn.recv(100)
                conn.sendall(b"proxy-tcp")
        threads = [threading.Thread(target=serve_udp), threading.Thread(target=serve_tcp)]
        for t in threads:
            t.start()
        udp_out = topo.run_in_pod("a", UDP_CLIENT)
        tcp_out = topo.run_in_pod("a", TCP_CLIENT)
        for t in threads:
            t.join(10)
    finally:
        udp.close()
        tcp.close()
    assert udp_out.stdout.strip() == "proxy-udp", udp_out.stderr
    assert tcp_out.stdout.strip() == "proxy-tcp", tcp_out.stderr
    assert seen == {"udp": b"query", "tcp": b"query"}


def test_tcp_53_to_a_resolver_off_loopback_reaches_the_dns_proxy_naming_it_and_the_mesh_without_capture(
        topo, redirection, dns_pod):
    """In both modes (eBPF: connect4 would otherwise take it to 15001 and past the proxy): with capture the
    connect lands on 15053 and SO_ORIGINAL_DST names the resolver the app dialled (where the proxy forwards);
    without, the same connect is the mesh's, on 15001."""
    resolver = (POD_IPS["b"], 53)
    ns = topo.pod_netns("a")
    for pod, port in ((dns_pod, 15053), (dataclasses.replace(dns_pod, dns_capture=False), 15001)):
        redirection.install(pod)
        assert redirection.installed(pod)
        server = Server(listen_in(ns, port), reply=f"on {port}".encode())
        try:
            out = topo.run_in_pod("a", client_code(*resolver, payload=b"query"))
            server.join(10)
            assert out.stdout.split() == [f"{resolver[0]}:53", "on", str(port)], (port, out.stdout, out.stderr)
            assert server.data == b"query" and original_dst(server.conn) == resolver, port
        finally:
            server.listener.close()
            if server.conn is not None:
                server.conn.close()
    redirection.install(dns_pod)


def test_the_ztunnels_marked_socket_reaches_the_resolver_itself(topo, dns_pod):
    ns = topo.pod_netns("a")
    resolver = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.53", 53))
    resolver.settimeout(5)
    forwarder = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)   # the test runs outside the pod's cgroup
    forwarder.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    try:
        forwarder.sendto(b"forwarded", ("127.0.0.53", 53))
        assert resolver.recvfrom(100)[0] == b"forwarded"
    finally:
        resolver.close()
        forwarder.close()


def test_the_chain_is_first_and_goes_when_capture_is_turned_off_or_the_pod_leaves(topo, redirection, dns_pod):
    saved = netfilter.save(dns_pod.netns)
    output_jumps = [line for line in saved.splitlines() if line.startswith("-A OUTPUT")]
    assert output_jumps[0] == "-A OUTPUT -j SHOAL_DNS", saved
    assert "-A SHOAL_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053" in saved
    assert "-A SHOAL_DNS -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053" in saved
    redirection.install(dns_pod)                                  # again: still one jump, still first
    assert netfilter.save(dns_pod.netns).count("-j SHOAL_DNS") == 1
    off = dataclasses.replace(dns_pod, dns_capture=False)
    assert not redirection.installed(off)                         # the chain is there and should not be
    redirection.install(off)
    assert shoal_rules(dns_pod.netns, "SHOAL_DNS") == [] and redirection.installed(off)
    redirection.install(dns_pod)
    redirection.remove(dns_pod)
    assert shoal_rules(dns_pod.netns, "SHOAL_DNS") == []
    capture.remove(dns_pod, redirection.tables)                   # idempotent


@pytest.mark.parametrize("namespace_meta, pod_meta, mesh, expected", [
    ({}, {}, False, False),
    ({}, {}, True, True),
    ({"labels": {"shoal.io/dns-capture": "true"}}, {}, False, True),
    ({"annotations": {"shoal.io/dns-capture": "true"}}, {}, False, True),
    ({"labels": {"shoal.io/dns-capture": "false"}}, {}, True, False),
    ({"labels": {"shoal.io/dns-capture": "true"}}, {"annotations": {"ambient.istio.io/dns-capture": "false"}}, False,
     False),
    ({}, {"annotations": {"ambient.istio.io/dns-capture": "true"}}, False, True),
    ({"labels": {"shoal.io/dns-capture": "maybe"}}, {}, True, True),        # an unknown value does not decide
])
def test_who_asks_for_dns_capture(namespace_meta, pod_meta, mesh, expected):
    assert dns_capture({"metadata": namespace_meta}, {"metadata": pod_meta}, mesh) is expected
