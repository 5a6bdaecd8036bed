"""Connections from the waypoint to endpoints: HBONE (pooled TLS sessions) or plain TCP.

Meshed endpoints get a CONNECT stream to `podIP:15008` on an HBONE session
that presents the waypoint's own certificate and checks the server's SPIFFE
ID; one TLS session per (endpoint address, expected identity) carries many
streams. Endpoints outside the mesh get a plain TCP connection. Either way
the caller gets a `Channel`. Every socket carries SO_MARK 0x539 so that no
capture rule takes it.

The pool changes state synchronously; the awaits (TCP connect, TLS
handshake) run under a per-key lock so a burst opens one session, not fifty.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Callable

from shoal import hbone, identity, log
from shoal.contracts import MARK
from shoal.hbone_io import HboneSession, RelayError, TunnelRefused
from shoal.hbone_relay import TcpSide

from waypoint.channel import Channel
from waypoint.errors import UpstreamFailed
from waypoint.routing import Upstream

logger = log.get("waypoint.upstream")


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    except PermissionError:
        pass  # not root (unit tests): nothing to skip capture of
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


async def _tcp(address: tuple[str, int], timeout: float) -> socket.socket:
    sock = _socket()
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), timeout)
        return sock
    except asyncio.TimeoutError:
        sock.close()
        raise UpstreamFailed(f"connection to {address[0]}:{address[1]} timed out after {timeout:g}s; "
                             "check that the endpoint is up", "connect-failure") from None
    except OSError as e:
        sock.close()
        raise UpstreamFailed(f"cannot connect to {address[0]}:{address[1]}: {e.strerror or e}; "
                             "check that the endpoint listens there", "connect-failure") from None


class Upstreams:
    def __init__(self, client_context: Callable[[], ssl.SSLContext], *, connect_timeout: float = 5.0,
                 max_streams: int = 100, hbone_port: int = 15008) -> None:
        self.client_context = client_context      # the waypoint's own credential, current
        self.hbone_port = hbone_port
        self.connect_timeout = connect_timeout
        self.max_streams = max_streams
        self.sessions: dict[tuple, list[HboneSession]] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}

    async def open(self, upstream: Upstream, timeout: float | None = None) -> Channel:
        timeout = min(timeout or self.connect_timeout, self.connect_timeout)
        if not upstream.hbone:
            sock = await _tcp(upstream.address, timeout)
            _, side = await asyncio.get_running_loop().create_connection(TcpSide, sock=sock)
            return Channel(side)
        authority = f"{upstream.address[0]}:{upstream.address[1]}"
        session = await self._session(upstream, timeout)
        try:
            stream = await session.open(authority, timeout=timeout)
        except TunnelRefused as e:
            raise UpstreamFailed(f"the endpoint's ztunnel refused the tunnel: {e}",
                                 "refused-stream" if e.status == 503 else "connect-failure",
                                 e.response_flag) from None
        except (RelayError, hbone.HboneError) as e:
            raise UpstreamFailed(f"HBONE stream to {authority} failed: {e}", "connect-failure") from None
        return Channel(stream)

    def _usable(self, key) -> HboneSession | None:
        for session in self.sessions.get(key, ()):
            if session.available and session.open_streams < self.max_streams:
                return session
        return None

    async def _session(self, upstream: Upstream, timeout: float) -> HboneSession:
        key = ((upstream.address[0], self.hbone_port), upstream.identity)
        found = self._usable(key)
        if found is not None:
            return found
        async with self._locks.setdefault(key, asyncio.Lock()):
            found = self._usable(key)
            if found is not None:
                return found
            session = await self._connect(upstream, timeout)
            live = [s for s in self.sessions.get(key, []) if s.available or s.open_streams]
            self.sessions[key] = live + [session]
            return session

    async def _connect(self, upstream: Upstream, timeout: float) -> HboneSession:
        address = (upstream.address[0], self.hbone_port)
        sock = await _tcp(address, timeout)
        loop = asyncio.get_running_loop()
        try:
            _, session = await loop.create_connection(
                lambda: HboneSession(True, name=f"{address[0]}:{address[1]}"), sock=sock,
                ssl=self.client_context(), server_hostname="", ssl_handshake_timeout=timeout)
        except (ssl.SSLError, OSError, asyncio.TimeoutError) as e:
            sock.close()
            raise UpstreamFailed(f"TLS to {address[0]}:{address[1]} failed: {getattr(e, 'reason', None) or e}; "
                                 "check that the endpoint's ztunnel runs and trusts the same mesh root",
                                 "connect-failure", "UPE" if isinstance(e, ssl.SSLError) else "UF") from None
        try:
            identity.check_peer(session.ssl_object, identity.parse_spiffe_id(upstream.identity))
        except identity.IdentityError as e:
            session.close()
            raise UpstreamFailed(f"TLS identity mismatch at {address[0]}:{address[1]}: {e}",
                                 "connect-failure", "UPE") from None
        return session

    def sweep(self, idle_seconds: float = 60.0) -> None:
        import time
        now = time.monotonic()
        for key, sessions in list(self.sessions.items()):
            keep = []
            for s in sessions:
                if s.open_streams == 0 and (not s.available or now - s.last_active > idle_seconds):
                    s.close()
                else:
                    keep.append(s)
            if keep:
                self.sessions[key] = keep
            else:
                del self.sessions[key]

    def close(self) -> None:
        for sessions in self.sessions.values():
            for s in sessions:
                s.close()
        self.sessions.clear()
