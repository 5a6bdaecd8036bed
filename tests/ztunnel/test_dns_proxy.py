"""The DNS proxy's I/O in a real netns (root): captured UDP and TCP port 53, answers, forwarding, truncation.

A netns of the test's own holds a "pod": nat rules as the node agent's
(marked sockets skip capture; UDP and TCP 53 go to 15053), the ztunnel's DNS
proxy listening there, and the pod's own resolver, a small DNS server on
127.0.0.53:53 that knows `other.test`, and answers `big.test` over UDP only
truncated. Clients are plain sockets in the netns.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import threading

import pytest

from shoal import dns_message as dm, handoff, netns
from shoal.identity import format_spiffe_id
from shoal.model import Resolution, Service, ServicePort
from shoal.proxy_state import ProxyState
from ztunnel.dns_io import DnsProxy, PodResolvers, nameserver
from ztunnel.pods import Pod

from support.polling import eventually
from support.root import needs_root

NS = f"shoaltest-dns-{os.getpid()}"
RESOLVER = ("127.0.0.53", 53)
BIG = tuple(f"198.18.48.{i}" for i in range(1, 61))       # 60 A records: ~1 KB, more than 512 bytes

WEB = Service("web", "shop", "web.shop.svc.cluster.local", ("198.18.16.10", "fd73:686f:616c:ff::a"), (ServicePort(80),))
MANY = Service("many", "egress", "many.outside.test", BIG, (ServicePort(80),), source_kind="ServiceEntry",
               resolution=Resolution.STATIC)


class FixedResolvers(PodResolvers):
    def __init__(self, server):
        super().__init__()
        self.server = server

    def of(self, netns_fd):
        return self.server


def upstream_answer(data: bytes, udp: bool) -> bytes:
    query = dm.parse_query(data)
    if query.question.name == "other.test":
        return dm.build_response(query, dm.NOERROR, ("198.18.48.99",), authoritative=False)
    if query.question.name == "big.test":
        return dm.build_response(query, dm.NOERROR, BIG, authoritative=False,
                                 max_size=dm.CLASSIC_UDP_SIZE if udp else dm.MAX_MESSAGE)
    return dm.build_response(query, dm.NXDOMAIN, authoritative=False)


def run_upstream(stop: threading.Event, seen: list):
    udp = netns.socket_in(NS, socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(RESOLVER)
    tcp = netns.socket_in(NS, socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(RESOLVER)
    tcp.listen(8)
    udp.settimeout(0.1)
    tcp.settimeout(0.1)
    while not stop.is_set():
        try:
            data, address = udp.recvfrom(2048)
            seen.append(("udp", dm.parse_query(data).question.name))
            udp.sendto(upstream_answer(data, True), address)
        except socket.timeout:
            pass
        try:
            conn, _ = tcp.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(5)
            framer = dm.TcpFramer()
            while not (messages := framer.feed(conn.recv(4096))):
                pass
            seen.append(("tcp", dm.parse_query(messages[0]).question.name))
            conn.sendall(dm.frame(upstream_answer(messages[0], False)))
    udp.close()
    tcp.close()


@pytest.fixture(scope="module")
def pod_netns():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace with nat rules")
    netns.create(NS)
    try:
        for rule in (["-A", "OUTPUT", "-m", "mark", "--mark", "0x539", "-j", "RETURN"],
                     ["-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "REDIRECT", "--to-ports", "15053"],
                     ["-A", "OUTPUT", "-p", "tcp", "--dport", "53", "-j", "REDIRECT", "--to-ports", "15053"]):
            netns.run(NS, ["iptables-legacy", "-t", "nat", *rule])
        netns.run(NS, ["ip", "link", "set", "lo", "up"])
        stop, seen = threading.Event(), []
        thread = threading.Thread(target=run_upstream, args=(stop, seen), daemon=True)
        thread.start()
        yield seen
        stop.set()
        thread.join(5)
    finally:
        netns.remove(NS)


async def serving(body):
    state = ProxyState()
    state.upsert(WEB)
    state.upsert(MANY)
    proxy = DnsProxy(state, FixedResolvers(RESOLVER), forward_timeout=5)
    fd = netns.open_fd(NS)
    pod = Pod(handoff.Workload("uid-client", "client", "shop"), fd, format_spiffe_id("cluster.local", "shop", "default"))
    await proxy.attach(pod)
    try:
        return await body()
    finally:
        proxy.detach("uid-client")
        pod.sockets.close()
        os.close(fd)


async def ask_udp(message: bytes, server=RESOLVER) -> bytes:
    loop = asyncio.get_running_loop()
    sock = netns.socket_in(NS, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, server)
        await loop.sock_sendall(sock, message)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), 10)
    finally:
        sock.close()


async def ask_tcp(*messages: bytes, server=RESOLVER) -> list[bytes]:
    loop = asyncio.get_running_loop()
    sock = netns.socket_in(NS, socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, server), 10)
        await loop.sock_sendall(sock, b"".join(dm.frame(m) for m in messages))
        framer, out = dm.TcpFramer(), []
        while len(out) < len(messages):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65535), 10)
            assert chunk, "the proxy closed the connection before answering"
            out += framer.feed(chunk)
        return out
    finally:
        sock.close()


pytestmark = needs_root("creates a network namespace with nat rules")


def test_services_are_answered_over_captured_udp_and_tcp(pod_netns):
    async def body():
        a = await ask_udp(dm.build_query("web", dm.TYPE_A, 1))
        aaaa = await ask_udp(dm.build_query("web.shop", dm.TYPE_AAAA, 2))
        (tcp_a,) = await ask_tcp(dm.build_query("web.shop.svc.cluster.local", dm.TYPE_A, 3))
        missing = await ask_udp(dm.build_query("nope.shop.svc.cluster.local", dm.TYPE_A, 4))
        return a, aaaa, tcp_a, missing
    a, aaaa, tcp_a, missing = asyncio.run(serving(body))
    assert dm.answer_addresses(a) == ["198.18.16.10"] and struct.unpack_from("!H", a)[0] == 1
    assert dm.answer_addresses(aaaa) == ["fd73:686f:616c:ff::a"]
    assert dm.answer_addresses(tcp_a) == ["198.18.16.10"]
    assert dm.response_code(missing) == dm.NXDOMAIN
    assert not any(name.startswith(("web", "nope")) for _, name in pod_netns)   # none of it reached the resolver


def test_other_names_go_to_the_pods_resolver_over_the_clients_transport(pod_netns):
    async def body():
        return await ask_udp(dm.build_query("other.test", dm.TYPE_A, 5)), \
            (await ask_tcp(dm.build_query("other.test", dm.TYPE_A, 6)))[0]
    udp, tcp = asyncio.run(serving(body))
    assert dm.answer_addresses(udp) == dm.answer_addresses(tcp) == ["198.18.48.99"]
    assert ("udp", "other.test") in pod_netns and ("tcp", "other.test") in pod_netns


def test_a_truncated_udp_answer_is_asked_again_over_tcp_and_comes_whole(pod_netns):
    async def body():
        out = {}
        for name in ("many.outside.test", "big.test"):            # ours, and the resolver's
            udp = await ask_udp(dm.build_query(name, dm.TYPE_A, 7))
            (tcp,) = await ask_tcp(dm.build_query(name, dm.TYPE_A, 8))
            out[name] = (udp, tcp)
        return out
    for name, (udp, tcp) in asyncio.run(serving(body)).items():
        assert dm.truncated(udp) and dm.answer_addresses(udp) == [], name
        assert not dm.truncated(tcp) and dm.answer_addresses(tcp) == list(BIG), name


def test_a_malformed_query_gets_formerr_and_the_next_is_answered(pod_netns):
    async def body():
        bad = dm.HEADER.pack(0x4242, 0x0100, 1, 0, 0, 0) + b"\x05ab"            # a label cut short
        formerr = await ask_udp(bad)
        after = await ask_udp(dm.build_query("web", dm.TYPE_A, 9))
        tcp_bad, tcp_after = await ask_tcp(bad, dm.build_query("web", dm.TYPE_A, 10))
        return formerr, after, tcp_bad, tcp_after
    formerr, after, tcp_bad, tcp_after = asyncio.run(serving(body))
    for reply in (formerr, tcp_bad):
        assert struct.unpack_from("!H", reply)[0] == 0x4242 and dm.response_code(reply) == dm.FORMERR
    assert dm.answer_addresses(after) == dm.answer_addresses(tcp_after) == ["198.18.16.10"]


def test_without_a_resolver_of_the_pod_other_names_get_servfail():
    async def body():
        state = ProxyState()
        proxy = DnsProxy(state, FixedResolvers(None))
        query = dm.build_query("other.test", dm.TYPE_A, 11)

        async def forward(data):
            return await proxy.forward_udp(type("P", (), {"netns_fd": -1, "name": "x"})(), data)
        return await proxy.answer("shop", query, udp=True, forward=forward)
    reply = asyncio.run(body())
    assert dm.response_code(reply) == dm.SERVFAIL


def test_the_pods_resolver_is_read_from_a_process_in_its_netns(pod_netns):
    sleeper = subprocess.Popen(["ip", "netns", "exec", NS, "sleep", "30"])
    try:
        resolvers = PodResolvers()
        fd = netns.open_fd(NS)
        try:
            found = eventually(lambda: resolvers.of(fd), 20, "the sleeper in the netns to be found", interval=0.1)
            # `ip netns exec` shows the process /etc/netns/NS/resolv.conf when there is one, else the host's
            expected = nameserver(open(f"/etc/netns/{NS}/resolv.conf").read()) if os.path.exists(
                f"/etc/netns/{NS}/resolv.conf") else nameserver(open("/etc/resolv.conf").read())
            assert found == expected
        finally:
            os.close(fd)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert nameserver("search x\nnameserver 10.0.0.10\nnameserver 10.0.0.11\n") == ("10.0.0.10", 53)
    # an IPv6-only pod's resolver is IPv6; a scoped (link-local %zone) one is skipped, junk too
    assert nameserver("nameserver FD00::0001\nnameserver 10.0.0.10\n") == ("fd00::1", 53)
    assert nameserver("nameserver fe80::1%eth0\nnameserver resolver\nnameserver 10.0.0.12\n") == ("10.0.0.12", 53)
    assert nameserver("search x\n") is None
