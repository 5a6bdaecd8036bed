"""The waypoint's HBONE listener (15008): terminate mTLS and CONNECT, then serve HTTP on each stream.

TLS presents the waypoint's own certificate and requires a client chain to
the mesh root. The context is asked for per connection (`await
server_context()`, from `shoal.certs`), so a renewed certificate is used
from the next connection on. Each CONNECT
names the destination the client's ztunnel chose (a Service VIP and port,
or a workload IP): it is accepted at once. HTTP on the stream is routed by
`waypoint.http1_server` (HTTP/1.1) or `waypoint.h2server`; a port declared opaque, or whose first bytes are not HTTP
(none within `sniff_seconds`: a server-first protocol), is relayed as TCP
(`waypoint.tcp`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Awaitable, Callable

from shoal import hbone, identity, log, sockets
from shoal.hbone_io import HboneSession, TunnelStream, accept_session, serve_until_lost
from shoal.model.addresses import canonical_address, join_address

from waypoint.channel import Channel, ChannelReset
from waypoint.h2server import H2Server
from waypoint.http1_server import serve_http1
from waypoint.proxy import Proxy
from waypoint.routing import Peer, protocol_of
from waypoint.tcp import looks_like_http, serve_tcp

logger = log.get("waypoint.server")


class HboneListener:
    def __init__(self, proxy: Proxy, server_context: Callable[[], Awaitable[ssl.SSLContext]], *,
                 handshake_timeout: float = 10.0, sniff_seconds: float = 1.0) -> None:
        self.proxy = proxy
        self.sniff_seconds = sniff_seconds
        self.server_context = server_context
        self.handshake_timeout = handshake_timeout
        self.sock: socket.socket | None = None
        self.sessions: set[HboneSession] = set()
        self._tasks: set[asyncio.Task] = set()
        self._accepting: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def start(self, host: str = sockets.ALL_ADDRESSES, port: int = hbone.PORT) -> None:
        self.sock = sockets.listener(None, port, host, mark=False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()

        def serve(conn: socket.socket, address: tuple) -> None:
            task = loop.create_task(self._connection(conn, address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await sockets.accept_forever(self.sock, serve, what="waypoint HBONE listener")

    async def _connection(self, conn: socket.socket, address) -> None:
        try:
            context = await self.server_context()
            session = await accept_session(conn, context, self._tunnel, handshake_timeout=self.handshake_timeout)
        except Exception as e:  # noqa: BLE001 - a client without a mesh certificate: one line, no harm
            logger.info("HBONE handshake failed", src=join_address(address),
                        error=f"{getattr(e, 'reason', None) or e}; the client must present a mesh certificate")
            conn.close()
            return
        await serve_until_lost(session, self.sessions)

    async def _tunnel(self, session: HboneSession, stream: TunnelStream) -> None:
        host, port = hbone.parse_authority(stream.authority)   # the HBONE core refused any other authority
        try:
            source = identity.peer_spiffe_id(session.ssl_object)
        except identity.IdentityError as e:
            session.refuse(stream, 401, f"client certificate carries no mesh identity: {e}")
            return
        try:
            session.accept(stream)
        except Exception:  # noqa: BLE001 - the client gave up meanwhile
            return
        channel = Channel(stream)
        # On the dual-stack listener an IPv4 client is ::ffff:a.b.c.d: policies, workload lookups and logs
        # take the address it has in the mesh.
        client = canonical_address(session.peer_address)
        peer = Peer(client[0], source, (host, port))
        protocol = protocol_of(self.proxy.state, (host, port))
        first = b""
        try:
            if protocol == "sniff":
                try:
                    first = await asyncio.wait_for(channel.read(), self.sniff_seconds)
                except asyncio.TimeoutError:
                    first = b""    # the server speaks first: not HTTP
                protocol = "http" if looks_like_http(first) else "tcp"
            elif protocol == "http":
                # HTTP clients speak first: which version?
                first = await asyncio.wait_for(channel.read(), self.proxy.idle_timeout)
        except (ChannelReset, asyncio.TimeoutError):
            channel.end()
            return
        channel.unread(first)
        if protocol == "http" and first.startswith(b"PRI "):
            await H2Server(self.proxy, channel, peer, client).run()
        elif protocol == "http":
            await serve_http1(self.proxy, channel, peer, client)
        else:
            await serve_tcp(self.proxy.state, self.proxy.upstreams, channel, peer, client,
                            self.proxy.rand, self.proxy.metrics)

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self.sock is not None:
            self.sock.close()

    async def close(self) -> None:
        self.stop_accepting()
        for session in list(self.sessions):
            session.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
