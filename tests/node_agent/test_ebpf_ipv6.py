"""The eBPF mode carries IPv6 (issue 17): connect6, sk_lookup and SO_ORIGINAL_DST for both families.

Pod a is enrolled with both its addresses (198.19.250.2 and
fd73:686f:616c:fa::2). The test process plays the ztunnel: it sits in the
ztunnel's cgroup and holds listeners of both families inside pod a's netns
(15001 and 15006, an AF_INET one and a V6ONLY AF_INET6 one each, or a single
dual-stack one). Apps are real processes in the pods' netns and cgroups. The
capture is driven through the eBPF backend itself (`redirection.capture`),
so these tests stand apart from the iptables parts of the node agent.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess

import pytest

from shoal import netns, sockets
from shoal.contracts import PROBE_SOURCE6

from na_topology import (POD_IPS, POD_IPS6, Server, bpftool_cgroup, bpftool_links, listen6_in, listen_in, netns_inode,
                         nothing_arrives, sh, udp6_code)
from support.polling import eventually
from support.root import needs_root

pytestmark = [needs_root("network namespaces, cgroups, eBPF"),
              pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)]

SOL_IPV6 = socket.IPPROTO_IPV6
SO_ORIGINAL_DST = 80  # IP6T_SO_ORIGINAL_DST too, at SOL_IPV6
UNENROLLED6 = "fd73:686f:616c:fa::12"  # an address pod a has, but the mesh was not told of


def client_code(ip: str, port: int, family: str = "AF_INET6", timeout: float = 5) -> str:
    """A client of either family: prints `ok <peer host> <peer port> <reply>`, or `failed <errno name>`."""
    return f"""
import errno, socket
s = socket.socket(socket.{family})
s.settimeout({timeout})
try:
    s.connect(({ip!r}, {port}))
    s.sendall(b"hello")
    peer = s.getpeername()
    print("ok", peer[0], peer[1], s.recv(100).decode())
except OSError as e:
    print("failed", errno.errorcode.get(e.errno, str(e)))
"""


def original_dst4(sock: socket.socket) -> tuple[str, int]:
    port, packed = struct.unpack_from("!2xH4s", sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16))
    return socket.inet_ntoa(packed), port


def original_dst6(sock: socket.socket) -> tuple[str, int]:
    """getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST): a sockaddr_in6 (28 bytes)."""
    raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
    assert len(raw) == 28 and struct.unpack_from("=H", raw)[0] == socket.AF_INET6
    port, packed = struct.unpack_from("!H4x16s", raw, 2)
    return str(ipaddress.IPv6Address(packed)), port


def tcp6_works(topo, client: str, server: str) -> bool:
    with listen6_in(topo.pod_netns(server), 0) as listener:
        accepted = Server(listener, b"six")
        result = topo.run_in_pod(client, client_code(POD_IPS6[server], listener.getsockname()[1], timeout=1.5))
        return result.stdout.startswith("ok") and accepted.result().data == b"hello"


@pytest.fixture(scope="module")
def ipv6(topo):
    """The pods' IPv6 addresses, and pod a's address the mesh is not told of."""
    topo.ipv6(True)
    veth = topo.layout.pod_veth("demo", "pod-a")
    sh("ip", "-n", topo.pod_netns("a"), "-6", "addr", "add", f"{UNENROLLED6}/128", "dev", "eth0", "nodad")
    sh("ip", "-n", topo.node, "-6", "route", "add", f"{UNENROLLED6}/128", "dev", veth)
    try:
        eventually(lambda: tcp6_works(topo, "a", "b") and tcp6_works(topo, "b", "a"), 20,
                   "IPv6 between the pods before any capture", interval=0.2)
        yield
    finally:
        subprocess.run(["ip", "-n", topo.node, "-6", "route", "del", f"{UNENROLLED6}/128", "dev", veth])
        subprocess.run(["ip", "-n", topo.pod_netns("a"), "-6", "addr", "del", f"{UNENROLLED6}/128", "dev", "eth0"])
        topo.ipv6(False)


@pytest.fixture
def dual_pod(topo, redirection, ipv6):
    """Pod a, enrolled with both addresses."""
    pod = dataclasses.replace(topo.pods["a"], ips=(POD_IPS["a"], POD_IPS6["a"]))
    redirection.capture.install(pod)
    yield pod
    redirection.capture.remove(pod)


@pytest.fixture
def ztunnel(topo, redirection, dual_pod):
    """15001 and 15006 of both families in pod a, each family's 15006 handed over as the ztunnel does."""
    ns = topo.pod_netns("a")
    held = {"out4": listen_in(ns, 15001), "out6": listen6_in(ns, 15001),
            "in4": listen_in(ns, 15006), "in6": listen6_in(ns, 15006)}
    redirection.capture.set_inbound_listener(dual_pod, held["in4"].fileno())
    redirection.capture.set_inbound_listener(dual_pod, held["in6"].fileno())
    yield held
    for sock in held.values():
        sock.close()


def test_ipv6_tcp_lands_on_the_ipv6_15001_with_its_original_destination(topo, redirection, ztunnel):
    server = Server(ztunnel["out6"], b"from-ztunnel")
    # Nothing listens on pod b's 8650: only capture can answer.
    result = topo.run_in_pod("a", client_code(POD_IPS6["b"], 8650))
    server.result()
    assert server.data == b"hello", result.stdout + result.stderr
    assert server.peer[0] == "::1"
    assert original_dst6(server.conn) == (POD_IPS6["b"], 8650)
    with pytest.raises(OSError):  # an IPv6 destination has no IPv4 form
        original_dst4(server.conn)
    # The app's own view is untouched: its peer is the address it dialled.
    assert result.stdout.split() == ["ok", POD_IPS6["b"], "8650", "from-ztunnel"]
    server.conn.close()


def test_a_v4_mapped_connect_is_captured_as_ipv4(topo, redirection, ztunnel):
    server = Server(ztunnel["out4"], b"from-ztunnel")
    result = topo.run_in_pod("a", client_code(f"::ffff:{POD_IPS['b']}", 8651))
    server.result()
    assert server.data == b"hello", result.stdout + result.stderr
    assert original_dst4(server.conn) == (POD_IPS["b"], 8651)
    assert result.stdout.split() == ["ok", f"::ffff:{POD_IPS['b']}", "8651", "from-ztunnel"]
    server.conn.close()


def test_a_dual_stack_ztunnel_listener_reads_both_families_at_both_levels(topo, redirection, dual_pod):
    """One AF_INET6 listener without V6ONLY (the ztunnel's, in a pod with IPv6) takes IPv4 too: an IPv4
    capture reads as SOL_IP and, v4-mapped, as SOL_IPV6; the hand-over is keyed by the family on the wire,
    not the socket's."""
    with listen6_in(topo.pod_netns("a"), 15001, v6only=False) as outbound:
        for ip, family, port in ((POD_IPS["b"], "AF_INET", 8652), (POD_IPS6["b"], "AF_INET6", 8653)):
            server = Server(outbound, b"dual")
            result = topo.run_in_pod("a", client_code(ip, port, family))
            server.result()
            assert server.data == b"hello", result.stdout + result.stderr
            if family == "AF_INET":
                assert original_dst4(server.conn) == (ip, port)
                assert original_dst6(server.conn) == (str(ipaddress.IPv6Address(f"::ffff:{ip}")), port)
            else:
                assert original_dst6(server.conn) == (ip, port)
            assert sockets.original_destination(server.conn) == (ip, port)  # as the ztunnel reads it
            assert result.stdout.split() == ["ok", ip, str(port), "dual"]
            server.conn.close()


def test_tcp_to_port_53_of_an_ipv6_resolver_reaches_the_dns_proxy_naming_it(topo, redirection, dual_pod):
    dns_pod = dataclasses.replace(dual_pod, dns_capture=True)
    redirection.capture.install(dns_pod)
    try:
        with listen6_in(topo.pod_netns("a"), 15053) as proxy:
            server = Server(proxy, b"answer")
            result = topo.run_in_pod("a", client_code(POD_IPS6["b"], 53))
            server.result()
            assert server.data == b"hello", result.stdout + result.stderr
            assert original_dst6(server.conn) == (POD_IPS6["b"], 53)
            server.conn.close()
    finally:
        redirection.capture.install(dual_pod)


def test_inbound_of_each_family_lands_on_the_ztunnels_listener_of_that_family(topo, redirection, ztunnel):
    for ip, family, listener, port in ((POD_IPS6["a"], "AF_INET6", "in6", 8660),
                                       (POD_IPS["a"], "AF_INET", "in4", 8661)):
        server = Server(ztunnel[listener], b"inbound")
        result = topo.run_in_pod("b", client_code(ip, port, family))
        server.result()
        assert server.data == b"hello", result.stdout + result.stderr
        peer = POD_IPS6["b"] if family == "AF_INET6" else POD_IPS["b"]
        assert server.peer[0] == peer
        assert server.conn.getsockname()[:2] == (ip, port)  # sk_lookup keeps the destination: the ztunnel reads it
        server.conn.close()


def test_one_dual_stack_inbound_listener_takes_both_families(topo, redirection, dual_pod):
    with listen6_in(topo.pod_netns("a"), 15006, v6only=False) as inbound:
        redirection.capture.set_inbound_listener(dual_pod, inbound.fileno())
        for ip, family, port, local in ((POD_IPS6["a"], "AF_INET6", 8662, POD_IPS6["a"]),
                                        (POD_IPS["a"], "AF_INET", 8663, f"::ffff:{POD_IPS['a']}")):
            server = Server(inbound, b"inbound")
            result = topo.run_in_pod("b", client_code(ip, port, family))
            server.result()
            assert server.data == b"hello", result.stdout + result.stderr
            assert server.conn.getsockname()[:2] == (local, port)
            server.conn.close()


def test_an_ipv4_listener_is_never_handed_ipv6(topo, redirection, dual_pod):
    """sk_lookup cannot give IPv6 to an AF_INET socket: the pod's IPv6 address keeps no listener, and its
    inbound IPv6 is dropped, not passed to the app."""
    with listen_in(topo.pod_netns("a"), 15006) as inbound4, listen6_in(topo.pod_netns("a"), 8664) as app:
        redirection.capture.set_inbound_listener(dual_pod, inbound4.fileno())
        result = topo.run_in_pod("b", client_code(POD_IPS6["a"], 8664, timeout=1.5))
        assert result.stdout.startswith("failed"), result.stdout + result.stderr
        assert nothing_arrives(app) and nothing_arrives(inbound4)


def test_ipv6_to_an_address_the_pod_was_not_enrolled_with_is_dropped(topo, redirection, ztunnel):
    """Fail closed: TCP and UDP to an IPv6 address the mesh was not told of reach neither the app nor the
    ztunnel; UDP to the enrolled address reaches the app, as IPv4 UDP does."""
    ns = topo.pod_netns("a")
    with listen6_in(ns, 8670) as app:
        result = topo.run_in_pod("b", client_code(UNENROLLED6, 8670, timeout=1.5))
        assert result.stdout.startswith("failed"), result.stdout + result.stderr
        assert nothing_arrives(app) and nothing_arrives(ztunnel["in6"], 0.1)
    with listen6_in(ns, 8671, kind=socket.SOCK_DGRAM) as app:
        topo.run_in_pod("b", udp6_code(UNENROLLED6, 8671))
        assert nothing_arrives(app)
        topo.run_in_pod("b", udp6_code(POD_IPS6["a"], 8671))
        assert app.recvfrom(100)[0] == b"datagram"


def test_ipv6_udp_of_a_pod_with_an_ipv6_address_goes_out_as_ipv4_udp_does(topo, redirection, ztunnel):
    with listen6_in(topo.pod_netns("b"), 8680, kind=socket.SOCK_DGRAM) as target:
        result = topo.run_in_pod("a", udp6_code(POD_IPS6["b"], 8680))
        assert result.stdout.strip() == "sent", result.stderr
        assert target.recvfrom(100)[0] == b"datagram"


def test_hbone_and_the_ipv6_probe_source_pass_to_their_listeners(topo, redirection, ztunnel):
    ns = topo.pod_netns("a")
    with listen6_in(ns, 15008) as hbone:
        server = Server(hbone, b"hbone")
        result = topo.run_in_pod("b", client_code(POD_IPS6["a"], 15008))
        assert server.result().data == b"hello", result.stdout + result.stderr
    # The kubelet's probes arrive SNATed to the IPv6 probe source (probes.py): played here by a node
    # process bound to that address.
    sh("ip", "-n", topo.node, "-6", "addr", "add", f"{PROBE_SOURCE6}/128", "dev", "lo", "nodad")
    try:
        with listen6_in(ns, 8690) as app:
            server = Server(app, b"healthy")
            code = client_code(POD_IPS6["a"], 8690).replace(
                "s.settimeout", f"s.bind(({PROBE_SOURCE6!r}, 0))\ns.settimeout")
            result = topo.run_on_node(code, topo.host_cgroup)
            assert server.result().data == b"hello", result.stdout + result.stderr
            assert server.peer[0] == PROBE_SOURCE6
            assert nothing_arrives(ztunnel["in6"], 0.1)
    finally:
        subprocess.run(["ip", "-n", topo.node, "-6", "addr", "del", f"{PROBE_SOURCE6}/128", "dev", "lo"])


def uncaptured_flows(redirection) -> list[tuple[str, str, int, int]]:
    """(source, destination, source port, destination port) of each entry of the uncaptured map."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(redirection.capture.prog_dir / "uncaptured")],
                         capture_output=True, text=True, check=True).stdout
    flows = []
    for entry in json.loads(out or "[]"):
        key = bytes(int(b, 16) for b in entry["key"])
        src, dst = ipaddress.IPv6Address(key[:16]), ipaddress.IPv6Address(key[16:32])
        flows.append((str(src.ipv4_mapped or src), str(dst.ipv4_mapped or dst), *struct.unpack("=II", key[32:40])))
    return flows


def test_the_ztunnels_own_ipv6_connection_to_the_app_is_recorded_and_let_through(topo, redirection, ztunnel):
    """The ztunnel delivers inbound traffic to the app over the pod's own address: sk_lookup must pass it,
    which it knows from the uncaptured record the ztunnel's cgroup makes, IPv6 as IPv4."""
    with listen6_in(topo.pod_netns("a"), 8691) as app:
        server = Server(app, b"app")
        delivery = netns.socket_in(topo.pod_netns("a"), socket.AF_INET6)
        delivery.settimeout(5)
        delivery.connect((POD_IPS6["a"], 8691))
        local_port = delivery.getsockname()[1]
        assert (POD_IPS6["a"], POD_IPS6["a"], local_port, 8691) in uncaptured_flows(redirection)
        delivery.sendall(b"hello")
        assert delivery.recv(10) == b"app"
        delivery.close()
        assert server.result().data == b"hello"
        server.conn.close()
    eventually(lambda: all(flow[3] != 8691 for flow in uncaptured_flows(redirection)), 10,
               "the record gone once the connection closed")


def program_names(pod) -> list[str]:
    return sorted(line.split()[-1] for line in bpftool_cgroup(pod.cgroup))


def test_the_programs_follow_the_pods_families_and_removal_leaves_nothing(topo, redirection, test_bpffs, ipv6):
    """IPv4 only: IPv6 refused (connect6, sendmsg6). With an IPv6 address: carried (connect6_carry), sendmsg6
    detached. A restarted agent finds it installed and adds nothing; removal leaves no program or link."""
    from node_agent.ebpf import EbpfRedirector
    capture = redirection.capture
    ipv4_only = topo.pods["a"]
    dual = dataclasses.replace(ipv4_only, ips=(POD_IPS["a"], POD_IPS6["a"]))
    try:
        capture.install(ipv4_only)
        refusing = program_names(ipv4_only)
        assert "shoal_sendmsg6" in refusing and len(refusing) == 6, refusing
        assert not capture.installed(dual)  # a pod that gained an address is installed again
        capture.install(dual)
        carrying = program_names(dual)
        assert "shoal_sendmsg6" not in carrying and len(carrying) == 5, carrying
        assert capture.installed(dual) and not capture.installed(ipv4_only)
        restarted = EbpfRedirector(f"test-{os.getpid()}", test_bpffs)
        try:
            assert restarted.installed(dual)
            restarted.install(dual)
            assert restarted.prog_ids == capture.prog_ids  # the very same programs
        finally:
            restarted.close()
        assert program_names(dual) == carrying
        assert len(re.findall(rf"netns_ino {netns_inode(dual.netns)}\b", bpftool_links())) == 1
    finally:
        capture.remove(dual)
    assert bpftool_cgroup(dual.cgroup) == []
    assert not re.findall(rf"netns_ino {netns_inode(dual.netns)}\b", bpftool_links())
    assert not (capture.links_dir / dual.uid).exists()
    # And IPv6 flows as if the mesh had never been there.
    assert tcp6_works(topo, "a", "b") and tcp6_works(topo, "b", "a")


def test_a_listener_that_is_no_ip_socket_is_refused_with_a_reason(topo, redirection, dual_pod):
    from node_agent.errors import RedirectError
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        with pytest.raises(RedirectError, match="not an IP socket"):
            redirection.capture.set_inbound_listener(dual_pod, unix.fileno())
        assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM  # borrowed, still open
