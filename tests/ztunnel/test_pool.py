"""The HBONE pool with fake connections and a fake clock."""

from __future__ import annotations

import asyncio

from ztunnel.pool import Key, Pool


class FakeConn:
    def __init__(self, limit=2):
        self.limit = limit
        self.open_streams = 0
        self.last_active = 0.0
        self.closed = False

    @property
    def available(self):
        return not self.closed and self.open_streams < self.limit

    def close(self):
        self.closed = True


KEY = Key("pod-a", "spiffe://cluster.local/ns/a/sa/x", ("198.19.2.2", 15008), "spiffe://cluster.local/ns/b/sa/y")


def test_reuses_until_full_then_opens_another_and_bursts_open_one():
    async def main():
        made = []

        async def connect(key):
            await asyncio.sleep(0.01)
            made.append(FakeConn(limit=2))
            return made[-1]

        pool = Pool(connect, max_streams=100)
        # A burst of 10 checkouts before any stream is opened shares one connection.
        conns = await asyncio.gather(*(pool.checkout(KEY) for _ in range(10)))
        assert len(made) == 1 and all(c is made[0] for c in conns)
        made[0].open_streams = 2  # full (peer limit)
        other = await pool.checkout(KEY)
        assert other is made[1] and pool.size == 2
        # Another key never shares.
        other_key = Key("pod-b", KEY.source_identity, KEY.destination, KEY.expected_identity)
        assert await pool.checkout(other_key) is made[2]
    asyncio.run(main())


def test_our_own_stream_cap_applies():
    async def main():
        async def connect(key):
            return FakeConn(limit=1000)
        pool = Pool(connect, max_streams=3)
        first = await pool.checkout(KEY)
        first.open_streams = 3
        assert await pool.checkout(KEY) is not first
    asyncio.run(main())


def test_idle_and_dead_connections_are_swept():
    async def main():
        now = [100.0]

        async def connect(key):
            conn = FakeConn()
            conn.last_active = now[0]
            return conn

        pool = Pool(connect, idle_timeout=30, clock=lambda: now[0])
        idle = await pool.checkout(KEY)
        busy_key = Key("pod-b", "i", ("198.19.2.3", 15008), "e")
        busy = await pool.checkout(busy_key)
        busy.open_streams = 1
        now[0] = 120.0
        assert pool.sweep() == 0
        now[0] = 131.0
        assert pool.sweep() == 1 and idle.closed and not busy.closed
        busy.open_streams = 0
        busy.closed = True  # the peer went away
        assert pool.sweep() == 1 and pool.size == 0
    asyncio.run(main())


def test_drop_pod_closes_only_its_connections():
    async def main():
        async def connect(key):
            return FakeConn()
        pool = Pool(connect)
        a = await pool.checkout(KEY)
        b = await pool.checkout(Key("pod-b", "i", ("198.19.2.3", 15008), "e"))
        pool.drop_pod("pod-a")
        assert a.closed and not b.closed and pool.size == 1
    asyncio.run(main())
