"""IPv6 never goes around the mesh, in both redirect modes (the `redirection` fixture is parametrized).

Until dual stack is carried, an enrolled pod's IPv6 is refused in both
directions; an AF_INET6 socket connecting to a v4-mapped address sends IPv4
and is captured as IPv4; loopback stays open; un-enrolling gives IPv6 back and
leaves nothing behind. The pods get addresses from shoal's own range,
fd73:686f:616c::/48, which is never wired to the host.
"""

from __future__ import annotations

import os
import socket

import pytest

from shoal import netns

from na_topology import POD_IPS, POD_IPS6, Server, bpftool_cgroup, listen_in, original_dst
from node_agent import netfilter
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("network namespaces, ip6tables, eBPF")


def listen6_in(ns: str, port: int, kind: int = socket.SOCK_STREAM, address: str = "::") -> socket.socket:
    """An IPv6-only socket in the netns (V6ONLY, so IPv4 cannot reach it by the back door)."""
    sock = netns.socket_in(ns, socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    sock.settimeout(5)
    return sock


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


def udp6_code(ip: str, port: int) -> str:
    return f"""
import errno, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
try:
    for _ in range(3):
        s.sendto(b"datagram", ({ip!r}, {port}))
    print("sent")
except OSError as e:
    print("failed", errno.errorcode.get(e.errno, str(e)))
"""


def nothing_arrives(sock: socket.socket, wait: float = 0.5) -> bool:
    sock.settimeout(wait)
    try:
        if sock.type == socket.SOCK_STREAM:
            sock.accept()[0].close()
        else:
            sock.recvfrom(100)
    except socket.timeout:
        return True
    return False


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
    assert "SHOAL" not in ipv6_rules(topo)
    assert bpftool_cgroup(pod.cgroup) == []
    assert tcp6_works(topo, "a", "b") and tcp6_works(topo, "b", "a")
