"""The DNS proxy, the I/O half: UDP and TCP on 15053 inside each enrolled pod's netns.

The node agent captures the pod's DNS (UDP and TCP port 53) to 15053 when
the pod's namespace or the mesh asks for it. Each message is parsed
(`shoal.dns_message`), decided (`ztunnel.dns.decide`) and:
- answered from the mesh's config: over UDP, an answer larger than the
  client's UDP size goes back truncated (TC), and the client asks again over
  TCP, where it is answered whole;
- or forwarded, bytes unchanged, over the transport the client used, from a
  marked socket inside the pod's netns (so capture skips it), to the pod's own
  resolver: over TCP the address the client dialled (SO_ORIGINAL_DST); over
  UDP, where REDIRECT keeps no original address a socket can read, the first
  nameserver of the pod's resolv.conf (`PodResolvers`). A truncated upstream
  answer reaches the client truncated, so it retries over TCP, forwarded too.
A malformed query is answered FORMERR (NOTIMP for another opcode), or
dropped when not even its header can be read; the next query is served as
if nothing happened. With no resolver to forward to, the answer is SERVFAIL:
a name is never sent to a resolver the pod did not name.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shoal import contracts, dns_message, log, netns, sockets
from shoal.dns_message import MalformedQuery, Query
from shoal.model.addresses import canonical_or_none
from shoal.proxy_state import ProxyState

from ztunnel import dns, takeover

logger = log.get("ztunnel.dns")

DNS_PROXY_PORT = contracts.DNS_PROXY_PORT
FORWARD_TIMEOUT = 5.0
TCP_IDLE_SECONDS = 30.0     # a DNS-over-TCP client that sends nothing this long is closed (RFC 7766 suggests seconds)


def _mark(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, contracts.MARK)


def _udp_listener(netns_fd: int) -> socket.socket:
    """UDP 15053 for both families in one socket (`::`, dual-stack; an IPv4 client is ::ffff:a.b.c.d
    and is answered through the same socket), or 0.0.0.0 where the netns has no IPv6."""
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            udp = netns.socket_in(netns_fd, family, socket.SOCK_DGRAM)
        except OSError:
            continue
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _mark(udp)
            udp.bind((address, DNS_PROXY_PORT))
            udp.setblocking(False)
            return udp
        except OSError:
            udp.close()
            if family == socket.AF_INET:
                raise
    raise OSError("no UDP socket of either family could be made")


class PodResolvers:
    """The resolver a pod's own programs use: the first nameserver of the resolv.conf that a process
    in the pod's netns sees (/proc/PID/root/etc/resolv.conf). Read once per pod, again while unknown."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._known: dict[int, tuple[str, int]] = {}

    def of(self, netns_fd: int) -> tuple[str, int] | None:
        key = os.fstat(netns_fd).st_ino
        if key not in self._known:
            found = self._scan(key)
            if found is None:
                return None
            self._known[key] = found
        return self._known[key]

    def forget(self, netns_fd: int) -> None:
        self._known.pop(os.fstat(netns_fd).st_ino, None)

    def _scan(self, netns_inode: int) -> tuple[str, int] | None:
        for entry in self.proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if os.stat(entry / "ns" / "net").st_ino != netns_inode:
                    continue
                text = (entry / "root" / "etc" / "resolv.conf").read_text()
            except OSError:
                continue                                   # gone meanwhile, or not ours to read
            server = nameserver(text)
            if server is not None:
                return server
        return None


def nameserver(resolv_conf: str) -> tuple[str, int] | None:
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            address = canonical_or_none(parts[1])      # IPv4 or IPv6 (an IPv6-only pod's resolver); no zones
            if address is not None:
                return (address, 53)
    return None


@dataclass(eq=False)
class DnsProxy:
    state: ProxyState
    resolvers: PodResolvers = field(default_factory=PodResolvers)
    cluster_domain: str = dns.CLUSTER_DOMAIN
    forward_timeout: float = FORWARD_TIMEOUT
    _served: dict[str, "_Served"] = field(default_factory=dict)

    # --- the answer, whatever the transport ---------------------------------------------

    async def answer(self, namespace: str, data: bytes, *, udp: bool,
                     forward: Callable[[bytes], "asyncio.Future[bytes | None]"]) -> bytes | None:
        try:
            query = dns_message.parse_query(data)
        except MalformedQuery as e:
            logger.info("malformed DNS query", namespace=namespace, error=str(e))
            return e.reply
        decision = dns.decide(self.state, namespace, query.question, self.cluster_domain)
        if isinstance(decision, dns.Answer):
            return dns_message.build_response(query, dns_message.NOERROR, decision.addresses,
                                              max_size=query.udp_size if udp else dns_message.MAX_MESSAGE)
        if isinstance(decision, dns.NoSuchName):
            return dns_message.build_response(query, dns_message.NXDOMAIN)
        try:
            reply = await forward(data)
        except (OSError, asyncio.TimeoutError, sockets.SocketError) as e:
            logger.info("DNS forward failed", namespace=namespace, name=query.question.name, error=str(e))
            reply = None
        return reply if reply is not None else _servfail(query)

    # --- per pod ------------------------------------------------------------------------

    async def attach(self, pod) -> None:
        """UDP and TCP listeners on 15053 in the pod's netns; a port the pod already holds is logged and
        left (the pod's DNS then goes unanswered only if its capture is on)."""
        loop = asyncio.get_running_loop()
        try:
            udp = _udp_listener(pod.netns_fd)
            tcp = sockets.listener(pod.netns_fd, DNS_PROXY_PORT)
            takeover.prefer_newest(tcp)
        except (OSError, sockets.SocketError) as e:
            logger.warning("DNS proxy not listening in this pod", pod=pod.name, error=str(e))
            return
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self, pod), sock=udp)
        served = _Served([udp, tcp], [transport])

        def serve(conn: socket.socket, _address) -> None:
            task = loop.create_task(self._tcp_client(pod, conn))
            served.tasks.add(task)
            task.add_done_callback(served.tasks.discard)
        served.tasks.add(loop.create_task(sockets.accept_forever(tcp, serve, what="dns")))
        self._served[pod.info.uid] = served

    @property
    def served(self) -> set[str]:
        return set(self._served)

    def detach(self, uid: str) -> None:
        served = self._served.pop(uid, None)
        if served is None:
            return
        for task in list(served.tasks):
            task.cancel()
        for transport in served.transports:
            transport.close()
        for sock in served.sockets:
            sock.close()

    def stop_accepting(self) -> None:
        for uid in list(self._served):
            self.detach(uid)

    # --- forwarding -------------------------------------------------------------------

    async def forward_udp(self, pod, data: bytes) -> bytes | None:
        upstream = self.resolvers.of(pod.netns_fd)
        if upstream is None:
            logger.info("no resolver known for the pod; answering SERVFAIL", pod=pod.name)
            return None
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
        sock = netns.socket_in(pod.netns_fd, family, socket.SOCK_DGRAM)
        try:
            _mark(sock)
            sock.setblocking(False)
            await loop.sock_connect(sock, upstream)
            await loop.sock_sendall(sock, data)
            return await asyncio.wait_for(loop.sock_recv(sock, dns_message.MAX_MESSAGE), self.forward_timeout)
        finally:
            sock.close()

    async def forward_tcp(self, pod, upstream: tuple[str, int], data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        sock = await sockets.connect(pod.sockets, upstream, timeout=self.forward_timeout)
        try:
            await loop.sock_sendall(sock, dns_message.frame(data))
            framer = dns_message.TcpFramer()
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), self.forward_timeout)
                if not chunk:
                    return None
                messages = framer.feed(chunk)
                if messages:
                    return messages[0]
        finally:
            sock.close()

    async def _tcp_client(self, pod, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream = sockets.original_destination(conn)
        except OSError:
            upstream = None
        if upstream is not None and upstream[1] == DNS_PROXY_PORT:
            upstream = self.resolvers.of(pod.netns_fd)       # dialled 15053 itself: not captured
        framer = dns_message.TcpFramer()
        conn.setblocking(False)

        async def forward(data: bytes) -> bytes | None:
            if upstream is None:
                return None
            return await self.forward_tcp(pod, upstream, data)
        try:
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(conn, 65536), TCP_IDLE_SECONDS)
                if not chunk:
                    return
                for message in framer.feed(chunk):
                    reply = await self.answer(pod.info.namespace, message, udp=False, forward=forward)
                    if reply is not None:
                        await loop.sock_sendall(conn, dns_message.frame(reply))
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            return
        finally:
            conn.close()


@dataclass(eq=False)
class _Served:
    """What one pod's DNS proxy holds: its two sockets, the UDP transport, the TCP tasks."""
    sockets: list[socket.socket]
    transports: list[asyncio.BaseTransport]
    tasks: set[asyncio.Task] = field(default_factory=set)


def _servfail(query: Query) -> bytes:
    return dns_message.build_response(query, dns_message.SERVFAIL, authoritative=False)


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy, pod) -> None:
        self.proxy = proxy
        self.pod = pod
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task] = set()       # held, so no answer in flight is collected

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        for task in list(self.pending):
            task.cancel()

    def datagram_received(self, data: bytes, address) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(data, address))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _serve(self, data: bytes, address) -> None:
        reply = await self.proxy.answer(self.pod.info.namespace, data, udp=True,
                                        forward=lambda message: self.proxy.forward_udp(self.pod, message))
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, address)
