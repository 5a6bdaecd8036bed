"""The ingress gateway's listeners: HTTP and HTTPS from outside the mesh, on the waypoint's engine.

An `IngressListener` accepts plain TCP on one gateway port; with
`certificates` it terminates TLS first, the client's SNI picking the
certificate (an exact name, else the longest `*.` suffix, else the first
certificate). ALPN offers h2 and http/1.1. Each connection is then served
exactly as the waypoint serves an HBONE stream (`waypoint.http1_server`,
`waypoint.h2server`) by a `Proxy` whose decision is the ingress one
(`waypoint.ingress_routing.decide`, handed in by the caller), so routing,
retries, timeouts, mirrors, faults and header changes are the waypoint's
own, and upstreams are reached over HBONE with the gateway's identity.

Certificates are PEM bytes (a Kubernetes TLS Secret's tls.crt and tls.key);
each is loaded through a file of its own in a private temporary directory
that is removed at once (the ssl module loads keys from files only).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Callable

from shoal import identity, log, native_io, sockets
from shoal.hbone_relay import TcpSide
from shoal.model.addresses import join_address

from waypoint.channel import Channel, ChannelReset
from waypoint.errors import WaypointError
from waypoint.h2server import H2Server
from waypoint.http1_server import serve_http1
from waypoint.proxy import Proxy
from waypoint.routing import Peer

logger = log.get("waypoint.ingress")


class CertificateInvalid(WaypointError):
    """A TLS credential that cannot be loaded; the message names it."""


@dataclass(frozen=True)
class Certificate:
    name: str                      # where it came from ("namespace/secret"), for messages
    hosts: tuple[str, ...]         # the SNI names it serves; "*.example.com" serves the subdomains
    chain_pem: bytes
    key_pem: bytes


def _context(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        identity.load_chain(context, certificate.chain_pem, certificate.key_pem)   # the key never on a disk
    except (ssl.SSLError, ValueError) as e:
        raise CertificateInvalid(f"TLS credential {certificate.name}: cannot load its certificate and key "
                                 f"({getattr(e, 'reason', None) or e}); check the Secret's tls.crt and "
                                 "tls.key") from None
    return context


def pick(certificates: tuple[Certificate, ...], server_name: str | None) -> int:
    """The index of the certificate for an SNI name (see the module's rule)."""
    name = (server_name or "").lower().rstrip(".")
    best, best_length = 0, -1
    for index, certificate in enumerate(certificates):
        for host in certificate.hosts:
            if host == name:
                return index
            if host.startswith("*.") and name.endswith(host[1:]) and len(host) > best_length:
                best, best_length = index, len(host)
    return best


def server_context(certificates: tuple[Certificate, ...] | Callable[[], tuple[Certificate, ...]]) -> ssl.SSLContext:
    """A server context whose SNI callback picks among `certificates`: fixed, or a function asked at each
    handshake (a gateway's credentials change with its config). No certificate at all: the handshake fails."""
    if not callable(certificates):
        fixed = tuple(certificates)
        if not fixed:
            raise CertificateInvalid("an HTTPS listener needs at least one certificate")
        for certificate in fixed:
            _context(certificate)               # a bad one is refused now, naming its Secret
        certificates = lambda: fixed  # noqa: E731
    current = certificates
    loaded: dict[Certificate, ssl.SSLContext] = {}

    def choose(ssl_object, server_name, _base):
        available = current()
        if not available:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        chosen = available[pick(available, server_name)]
        if chosen not in loaded:
            try:
                loaded[chosen] = _context(chosen)
            except CertificateInvalid as e:
                logger.warning("TLS credential refused", error=str(e))
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            for stale in [c for c in loaded if c not in available]:
                del loaded[stale]
        ssl_object.context = loaded[chosen]
        return None
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.minimum_version = ssl.TLSVersion.TLSv1_2
    base.set_alpn_protocols(["h2", "http/1.1"])
    base.sni_callback = choose
    return base


class IngressListener:
    def __init__(self, proxy: Proxy, port: int, *, host: str = sockets.ALL_ADDRESSES, gateway_port: int | None = None,
                 certificates: tuple[Certificate, ...] | Callable[[], tuple[Certificate, ...]] = (),
                 handshake_timeout: float = 10.0) -> None:
        """`gateway_port`: the port the Gateway declares, which routes are keyed by (default: `port`; a test
        or a node port may listen elsewhere)."""
        self.proxy = proxy
        self.requested = (host, port)
        self.gateway_port = gateway_port
        self.tls = server_context(certificates) if callable(certificates) or certificates else None
        self.handshake_timeout = handshake_timeout
        self.sock: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def start(self) -> None:
        host, port = self.requested
        self.sock = sockets.listener(None, port, host, mark=False)
        task = asyncio.get_running_loop().create_task(
            sockets.accept_forever(self.sock, self._serve, what=f"ingress listener {port}"))
        self._tasks.add(task)

    def _serve(self, conn: socket.socket, address: tuple) -> None:
        task = asyncio.get_running_loop().create_task(self._connection(conn, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, conn: socket.socket, address) -> None:
        loop = asyncio.get_running_loop()
        made: list[TcpSide] = []

        def side() -> TcpSide:      # ours even when the loop wraps it in its own TLS protocol
            made.append(TcpSide())
            return made[-1]
        try:
            if self.tls is not None:
                await loop.connect_accepted_socket(side, conn, ssl=self.tls,
                                                   ssl_handshake_timeout=self.handshake_timeout)
            else:   # plain TCP: the native transport when in use, as the ztunnel's (TLS stays the loop's)
                await native_io.open_tcp(side, conn, accepted=True)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as e:
            logger.info("ingress connection failed before HTTP", src=join_address(address),
                        error=str(getattr(e, "reason", None) or e))
            conn.close()
            return
        channel = Channel(made[0])
        peer = Peer(address[0], None, (self.requested[0], self.gateway_port or self.port))
        try:
            async with asyncio.timeout(self.proxy.idle_timeout):   # no Task of its own to leave unstarted
                first = await channel.read()
        except (ChannelReset, asyncio.TimeoutError):
            channel.reset()
            return
        channel.unread(first)
        if first.startswith(b"PRI "):
            await H2Server(self.proxy, channel, peer, address[:2]).run()
        else:
            await serve_http1(self.proxy, channel, peer, address[:2])

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
