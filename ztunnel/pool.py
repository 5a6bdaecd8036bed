"""The HBONE connection pool: one TLS connection carries many tunnels.

Keyed by (source pod, source identity, destination address, expected
identity): the source pod matters because connections are opened from inside
its netns and carry its IP. A connection is reused while it has room for
another stream (the peer's max concurrent streams, capped by ours) and is
not closing; an idle connection is closed after `idle_timeout`.

Pool state changes synchronously; the awaits (the TLS handshake) happen
outside any shared state, under a per-key lock so that a burst of new
connections to one destination opens one TLS connection, not fifty.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol


@dataclass(frozen=True)
class Key:
    source_pod: str
    source_identity: str
    destination: tuple[str, int]
    expected_identity: str


class PooledConnection(Protocol):
    available: bool
    open_streams: int
    last_active: float

    def close(self) -> None: ...


class Pool:
    def __init__(self, connect: Callable[[Key], Awaitable[PooledConnection]], *, max_streams: int = 100,
                 idle_timeout: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
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
        async with lock:
            conn = self._usable(key)  # someone may have opened one while we waited
            if conn is not None:
                return conn
            conn = await self._connect(key)
            self.connections.setdefault(key, []).append(conn)
            return conn

    def discard(self, key: Key, conn: PooledConnection) -> None:
        conns = self.connections.get(key, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
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

    def drop_pod(self, source_pod: str) -> None:
        for key in [k for k in self.connections if k.source_pod == source_pod]:
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
