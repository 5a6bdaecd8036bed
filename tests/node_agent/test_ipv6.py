"""IPv6 never goes around the mesh.

In both redirect modes (the `redirection` fixture is parametrized), a pod
enrolled without an IPv6 address (its podIPs have none) has its IPv6 refused
in both directions, fail closed; an AF_INET6 socket connecting to a v4-mapped
address sends IPv4 and is captured as IPv4; loopback stays open; un-enrolling
gives IPv6 back and leaves nothing behind.

In the iptables mode, a pod enrolled with an IPv6 address has its IPv6 TCP
captured as IPv4's is: outbound to the ztunnel's [::1]:15001 and inbound to
its 15006 with IP6T_SO_ORIGINAL_DST, HBONE's 15008 and the kubelet's probe
(SNATed to PROBE_SOURCE6 on the node) let through, the same chains in
ip6tables. (The eBPF mode's IPv6 capture is tested in test_ebpf_ipv6.py.)

The pods get addresses from shoal's own range, fd73:686f:616c::/48, which is
never wired to the host.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct

import pytest

from shoal.contracts import HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROBE_SOURCE6

from na_topology import (POD_IPS, POD_IPS6, Server, bpftool_cgroup, listen6_in, listen_in, nothing_arrives,
                         original_dst, udp6_code)
from node_agent import netfilter, probes
from support.polling import eventually
from support.rules import shoal_rules
from support.root import needs_root

pytestmark = needs_root("network namespaces, ip6tables, eBPF")


def tcp6_code(ip: str, port: int, timeout: float = 1.5) -> str:
    """An AF_INET6 client: prints `ok <peer> <reply>`, or `failed <errno name>`."""
    return f"""
import errno, socket
s = socket.socket(socket.AF_INET6)
s.settimeout({timeout})
try:
    s.connect(({ip!r}, {port}))
    s.sendall(b"hello")
    peer = s.getpeername()
    print("ok", f"{{peer[0]}}:{{peer[1]}}", s.recv(100).decode())
except OSError as e:
    print("failed", errno.errorcode.get(e.errno, str(e)))
"""


def tcp6_works(topo, client: str, server: str) -> bool:
    with listen6_in(topo.pod_netns(server), 0) as listener:  # a fresh port each try
        accepted = Server(listener, b"six")
        result = topo.run_in_pod(client, tcp6_code(POD_IPS6[server], listener.getsockname()[1]))
        if not result.stdout.startswith("ok"):
            return False  # the server's accept times out on its own
        accepted.result()
        return result.stdout.strip().endswith("six") and accepted.data == b"hello"


@pytest.fixture(scope="module")
def ipv6(topo):
    topo.ipv6(True)
    try:
        # Neighbour discovery between each pod and the node settles first.
        eventually(lambda: tcp6_works(topo, "a", "b") and tcp6_works(topo, "b", "a"), 10,
                   "IPv6 between the pods before any capture", interval=0.2)
        yield
    finally:
        topo.ipv6(False)


@pytest.fixture
def enrolled(redirection, topo, ipv6):
    pod = topo.pods["a"]
    redirection.install(pod)
    yield pod
    redirection.remove(pod)


def test_outbound_ipv6_of_an_enrolled_pod_is_refused(topo, enrolled):
    with listen6_in(topo.pod_netns("b"), 8610) as target:
        result = topo.run_in_pod("a", tcp6_code(POD_IPS6["b"], 8610))
        assert result.stdout.startswith("failed"), result.stdout + result.stderr
        assert nothing_arrives(target)
    with listen6_in(topo.pod_netns("b"), 8611, socket.SOCK_DGRAM) as target:
        topo.run_in_pod("a", udp6_code(POD_IPS6["b"], 8611))
        assert nothing_arrives(target)


def test_inbound_ipv6_to_an_enrolled_pod_is_dropped(topo, enrolled):
    with listen6_in(topo.pod_netns("a"), 8620) as app:
        result = topo.run_in_pod("b", tcp6_code(POD_IPS6["a"], 8620))
        assert result.stdout.startswith("failed"), result.stdout + result.stderr
        assert nothing_arrives(app)
    with listen6_in(topo.pod_netns("a"), 8621, socket.SOCK_DGRAM) as app:
        topo.run_in_pod("b", udp6_code(POD_IPS6["a"], 8621))
        assert nothing_arrives(app)


def test_ipv6_loopback_inside_an_enrolled_pod_still_works(topo, enrolled):
    with listen6_in(topo.pod_netns("a"), 8630, address="::1") as local:
        server = Server(local, b"self")
        result = topo.run_in_pod("a", tcp6_code("::1", 8630))
        assert result.stdout.startswith("ok"), result.stdout + result.stderr
        assert server.result().data == b"hello"


def test_an_inet6_socket_to_a_v4_mapped_address_is_captured_as_ipv4(topo, redirection, enrolled):
    """::ffff:a.b.c.d is IPv4 on the wire: it lands on the ztunnel's 15001 with the original destination."""
    with listen_in(topo.pod_netns("a"), 15001) as outbound:
        server = Server(outbound, b"from-ztunnel")
        # Nothing listens on pod b's 8640: only capture can answer.
        result = topo.run_in_pod("a", tcp6_code(f"::ffff:{POD_IPS['b']}", 8640))
        server.result()
        assert server.data == b"hello", result.stdout + result.stderr
        assert original_dst(server.conn) == (POD_IPS["b"], 8640)
        # The app's own view is untouched: its peer is the address it dialled.
        assert result.stdout.split() == ["ok", f"::ffff:{POD_IPS['b']}:8640", "from-ztunnel"]
        server.conn.close()


def ipv6_rules(topo) -> str:
    return netfilter.save(topo.pod_netns("a"), ipv6=True)


def test_install_is_idempotent_a_restart_adds_nothing_and_unenrolling_gives_ipv6_back(topo, redirection, ipv6,
                                                                                     test_bpffs):
    from node_agent.redirect import Redirection, choose
    pod = topo.pods["a"]
    for _ in range(3):
        redirection.install(pod)
    again = Redirection(choose(redirection.mode, f"test-{os.getpid()}", bpffs=test_bpffs),
                        redirection.ledger.dir.parent, node_netns=topo.node, kubelet_cgroup=str(topo.kubelet_cgroup))
    try:
        assert again.installed(pod)
        again.install(pod)  # a restarted agent reconciling
    finally:
        again.close()
    if redirection.mode == "iptables":
        saved = ipv6_rules(topo)
        assert saved.count("-A OUTPUT -j SHOAL_OUTPUT") == 1 and saved.count("-A INPUT -j SHOAL_INPUT") == 1
        assert saved.count("-A SHOAL_INPUT -j DROP") == 1
    else:
        names = sorted(line.split()[-1] for line in bpftool_cgroup(pod.cgroup))
        assert names.count("shoal_connect6") == 1 and names.count("shoal_sendmsg6") == 1, names
    assert not tcp6_works(topo, "a", "b")

    redirection.remove(pod)
    assert shoal_rules(topo.pod_netns("a")) == []
    assert bpftool_cgroup(pod.cgroup) == []
    assert tcp6_works(topo, "a", "b") and tcp6_works(topo, "b", "a")


# -- a pod enrolled with its IPv6 address: captured (iptables mode) ----------------------------

IP6T_SO_ORIGINAL_DST = 80


def original_dst6(sock: socket.socket) -> tuple[str, int]:
    """What the ztunnel reads for a REDIRECTed IPv6 connection: a sockaddr_in6 from conntrack."""
    raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
    port, packed = struct.unpack("!2xH4x16s4x", raw)
    return socket.inet_ntop(socket.AF_INET6, packed), port


def dual(topo, pod: str):
    return dataclasses.replace(topo.pods[pod], ips=(POD_IPS[pod], POD_IPS6[pod]))


@pytest.fixture
def enrolled6(redirection, topo, ipv6):
    """Pod a enrolled with both its addresses; the test holds the ztunnel's IPv6 listeners in it."""
    if redirection.mode != "iptables":
        pytest.skip("the eBPF mode's IPv6 capture is tested in test_ebpf_ipv6.py")
    pod = dual(topo, "a")
    redirection.install(pod)
    ns = topo.pod_netns("a")
    outbound, inbound = listen6_in(ns, OUTBOUND_PORT), listen6_in(ns, INBOUND_PLAINTEXT_PORT)
    yield pod, outbound, inbound
    outbound.close()
    inbound.close()
    redirection.remove(pod)


def test_outbound_ipv6_of_a_pod_with_an_ipv6_address_lands_on_15001_with_its_original_destination(topo,
                                                                                                  enrolled6):
    _, outbound, _ = enrolled6
    server = Server(outbound, b"from-ztunnel")
    # Nothing listens on pod b's 8650: only capture can answer.
    result = topo.run_in_pod("a", tcp6_code(POD_IPS6["b"], 8650))
    server.result()
    assert server.data == b"hello", result.stdout + result.stderr
    assert original_dst6(server.conn) == (POD_IPS6["b"], 8650)
    assert server.peer[0] == POD_IPS6["a"]  # the app's own source; REDIRECT changed only the destination
    assert result.stdout.split() == ["ok", f"{POD_IPS6['b']}:8650", "from-ztunnel"]
    server.conn.close()


def test_inbound_ipv6_to_a_pod_with_an_ipv6_address_lands_on_15006_and_hbone_passes(topo, enrolled6):
    _, _, inbound = enrolled6
    with listen6_in(topo.pod_netns("a"), 8660) as app:
        captured = Server(inbound, b"ztunnel")
        result = topo.run_in_pod("b", tcp6_code(POD_IPS6["a"], 8660))
        captured.result()
        assert captured.data == b"hello", result.stdout + result.stderr
        assert captured.peer[0] == POD_IPS6["b"]
        assert original_dst6(captured.conn) == (POD_IPS6["a"], 8660)
        captured.conn.close()
        assert nothing_arrives(app, 0.2)
    with listen6_in(topo.pod_netns("a"), HBONE_PORT) as hbone:
        server = Server(hbone, b"tunnel")
        result = topo.run_in_pod("b", tcp6_code(POD_IPS6["a"], HBONE_PORT))
        assert server.result().data == b"hello", result.stdout + result.stderr
        assert server.peer[0] == POD_IPS6["b"]


def test_ipv6_udp_of_a_pod_with_an_ipv6_address_passes_both_ways_as_ipv4_udp_does(topo, enrolled6):
    """The mesh carries TCP; a captured family's other protocols pass, in IPv6 as in IPv4 (no refusal)."""
    for sender, receiver, port in (("a", "b", 8680), ("b", "a", 8681)):
        with listen6_in(topo.pod_netns(receiver), port, socket.SOCK_DGRAM) as target:
            result = topo.run_in_pod(sender, udp6_code(POD_IPS6[receiver], port))
            assert result.stdout.strip() == "sent", result.stdout + result.stderr
            assert not nothing_arrives(target, 5), f"UDP from {sender} to {receiver} over IPv6"


def test_the_kubelets_ipv6_probe_reaches_the_app_from_the_ipv6_probe_source(topo, redirection, enrolled6):
    pod, _, _ = enrolled6
    assert POD_IPS6["a"] in probes.covered(topo.node, None, tables=redirection.tables)
    with listen6_in(topo.pod_netns("a"), 8670) as app:
        server = Server(app, b"healthy")
        result = topo.run_on_node(tcp6_code(POD_IPS6["a"], 8670, timeout=5), topo.kubelet_cgroup)
        assert result.stdout.startswith("ok"), result.stdout + result.stderr
        assert server.result().peer[0] == PROBE_SOURCE6


def test_gaining_an_ipv6_address_swaps_the_refusal_for_capture_and_removal_leaves_nothing(topo, redirection,
                                                                                          ipv6):
    if redirection.mode != "iptables":
        pytest.skip("the eBPF mode's IPv6 capture is tested in test_ebpf_ipv6.py")
    v4_only, both = topo.pods["a"], dual(topo, "a")
    redirection.install(v4_only)
    assert "-A SHOAL_INPUT -j DROP" in ipv6_rules(topo)
    assert not redirection.installed(both)  # the IPv6 capture is missing, the refusal is in the way
    for _ in range(2):
        redirection.install(both)
    assert redirection.installed(both)
    saved = ipv6_rules(topo)
    assert "SHOAL_INPUT" not in saved and "-A SHOAL_OUTPUT -j REJECT" not in saved  # the refusal is gone
    assert saved.count("-A OUTPUT -j SHOAL_OUTPUT") == 1 and saved.count("-A PREROUTING -j SHOAL_PREROUTING") == 1
    assert "-A SHOAL_OUTPUT -p tcp -j REDIRECT --to-ports 15001" in saved
    assert f"-A SHOAL_PREROUTING -s {PROBE_SOURCE6}/128 -j RETURN" in saved
    assert "-A SHOAL_PREROUTING -p tcp -j REDIRECT --to-ports 15006" in saved
    assert "-m mark --mark 0x539 -m cgroup ! --path" in saved  # the ztunnel's own sockets, as in IPv4
    node6 = netfilter.save(topo.node, ipv6=True)
    assert f"-d {POD_IPS6['a']}/128 -p tcp -m cgroup --path" in node6 and f"--to-source {PROBE_SOURCE6}" in node6

    redirection.remove(both)
    assert shoal_rules(topo.pod_netns("a")) == []
    assert shoal_rules(topo.node) == []
    assert tcp6_works(topo, "a", "b") and tcp6_works(topo, "b", "a")


def test_a_restarted_agent_finds_every_address_in_its_ledger_and_cleans_up_both_families(topo, redirection, ipv6,
                                                                                         test_bpffs):
    if redirection.mode != "iptables":
        pytest.skip("the eBPF mode's IPv6 capture is tested in test_ebpf_ipv6.py")
    from node_agent.redirect import Redirection, choose
    pod = dual(topo, "a")
    redirection.install(pod)
    again = Redirection(choose("iptables", f"test-{os.getpid()}", bpffs=test_bpffs), redirection.ledger.dir.parent,
                        node_netns=topo.node, kubelet_cgroup=str(topo.kubelet_cgroup))
    try:
        assert again.recorded()[pod.uid] == pod  # both addresses, from the ledger on disk
        assert again.installed(pod)
        assert again.cleanup() == [pod.key]  # `shoal node-agent --cleanup`, or a restart that lost the pod
    finally:
        again.close()
        redirection.remove(pod)  # this process's own record of it; nothing is left to remove
    assert shoal_rules(topo.pod_netns("a")) == []
    assert shoal_rules(topo.node) == []
