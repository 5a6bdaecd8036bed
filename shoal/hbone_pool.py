"""The proxies' HBONE client pool: one mTLS connection carries many tunnels.

Used by the ztunnel (for each enrolled pod) and the waypoint (for itself).
Keyed by (source, source identity, destination, expected identity): the
source matters to the ztunnel because connections are opened from inside the
source pod's netns and carry its IP (a waypoint uses one source, ""). A
connection is reused while it has room for another stream (the peer's max
concurrent streams, capped by ours) and is not closing; an idle one is
closed after `idle_timeout`, and a dead one is dropped.

Pool state changes synchronously; the awaits (TCP connect, TLS handshake)
run under a per-key lock, so a burst of new connections to one destination
opens one TLS connection, not fifty. A key whose connection attempt fails
leaves nothing behind (no lock, no entry): it is evicted.

`connector(...)` makes the real connect function: a socket from the caller
(the ztunnel makes it in the pod's netns), TLS with the source identity's
client certificate, and a check that the server's SPIFFE ID is the one
expected. Its failures are `HboneConnectFailed` (TLS, TCP) or
`identity.PeerMismatch`, each with the Istio response flag to report.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from shoal import hbone, identity, native_io
from shoal.hbone_io import HboneSession, RelayError, TunnelBroken, TunnelStream
from shoal.identity import SpiffeId
from shoal.model.addresses import join_address


@dataclass(frozen=True)
class Key:
    source: str                       # the source pod's uid (ztunnel), "" for a waypoint
    source_identity: SpiffeId         # the client certificate presented
    destination: tuple[str, int]      # the peer's HBONE address
    expected_identity: SpiffeId       # what the server's certificate must say


class PooledConnection(Protocol):
    available: bool
    open_streams: int
    last_active: float

    def close(self) -> None: ...


Connect = Callable[[Key], Awaitable[PooledConnection]]


class HboneConnectFailed(RelayError):
    """The TCP connection or the TLS handshake to a peer's HBONE port failed."""

    def __init__(self, message: str, response_flag: str = "UF") -> None:
        super().__init__(message)
        self.response_flag = response_flag


class Pool:
    def __init__(self, connect: Connect, *, max_streams: int = 100, idle_timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.connections: dict[Key, list[PooledConnection]] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    def _usable(self, key: Key) -> PooledConnection | None:
        for conn in self.connections.get(key, ()):
            if conn.available and conn.open_streams < self.max_streams:
                return conn
        return None

    async def checkout(self, key: Key) -> PooledConnection:
        """A connection with room for one more stream (new or reused)."""
        conn = self._usable(key)
        if conn is not None:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                conn = self._usable(key)  # someone may have opened one while we waited
                if conn is None:
                    conn = await self._connect(key)
                    self.connections.setdefault(key, []).append(conn)
                return conn
        finally:
            self._evict_if_empty(key)  # a failed attempt leaves no lock and no entry behind

    async def open_stream(self, key: Key, authority: str, timeout: float) -> TunnelStream:
        """A CONNECT stream to `authority` on a pooled connection (HboneSession connections only).

        Asked again once, on another connection, when the first could take no stream (the peer lowered
        its limit) or refused it unprocessed (REFUSED_STREAM: a peer draining with a one-step GOAWAY)."""
        session = await self.checkout(key)
        try:
            return await session.open(authority, timeout=timeout)
        except hbone.StreamLimitReached:
            pass
        except TunnelBroken as e:
            if not e.refused:
                raise
            session.closing = True          # it takes no more streams: the checkout below opens another
        session = await self.checkout(key)
        return await session.open(authority, timeout=timeout)

    def discard(self, key: Key, conn: PooledConnection) -> None:
        conns = self.connections.get(key, [])
        if conn in conns:
            conns.remove(conn)
        self._evict_if_empty(key)

    def _evict_if_empty(self, key: Key) -> None:
        if self.connections.get(key):
            return
        self.connections.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def sweep(self) -> int:
        """Closes connections idle for longer than idle_timeout, and drops dead ones; returns how many."""
        now = self.clock()
        closed = 0
        for key, conns in list(self.connections.items()):
            for conn in list(conns):
                dead = not conn.available and conn.open_streams == 0
                idle = conn.open_streams == 0 and now - conn.last_active >= self.idle_timeout
                if dead or idle:
                    conn.close()
                    self.discard(key, conn)
                    closed += 1
        return closed

    def drop_source(self, source: str) -> None:
        """Closes every connection opened for `source` (a pod that left the mesh)."""
        for key in [k for k in self.connections if k.source == source]:
            for conn in list(self.connections.get(key, ())):
                conn.close()
                self.discard(key, conn)

    def close(self) -> None:
        for key, conns in list(self.connections.items()):
            for conn in list(conns):
                conn.close()
                self.discard(key, conn)

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.connections.values())

    async def run_sweeper(self, every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep()

    def dump(self) -> list[dict]:
        return [{"source": k.source, "destination": join_address(k.destination),
                 "identity": str(k.expected_identity), "connections": len(v),
                 "streams": sum(c.open_streams for c in v)} for k, v in self.connections.items()]


OpenSocket = Callable[[Key, float], Awaitable[socket.socket]]
ClientContext = Callable[[SpiffeId], Awaitable[ssl.SSLContext]]


def connector(open_socket: OpenSocket, client_context: ClientContext, timeout: float,
              settings: hbone.Settings = hbone.Settings()) -> Connect:
    """The real connect function of a Pool: TCP (socket from `open_socket`), mTLS as the
    key's source identity, then the server's SPIFFE ID checked against the expected one."""

    async def connect(key: Key) -> HboneSession:
        context = await client_context(key.source_identity)
        sock = await open_socket(key, timeout)
        where = join_address(key.destination)            # [fd73::5]:15008 for IPv6
        try:
            _, session = await native_io.open_tls(lambda: HboneSession(True, settings, name=where), sock, context,
                                                  server_side=False, handshake_timeout=timeout)
        except ssl.SSLError as e:
            sock.close()
            raise HboneConnectFailed(f"TLS handshake with {where} failed: {e.reason or e}; check that both sides "
                                     "trust the same mesh root and that the certificates are valid", "UPE") from None
        except (OSError, asyncio.TimeoutError) as e:
            sock.close()
            raise HboneConnectFailed(f"HBONE connection to {where} failed: {e or type(e).__name__}; check that "
                                     f"the destination's ztunnel listens on {hbone.PORT}") from None
        try:
            identity.check_peer(session.ssl_object, key.expected_identity)
        except identity.IdentityError:
            session.close()
            raise
        return session

    return connect
