"""The shared HBONE pool with fake connections and a fake clock; the real connector over TLS on loopback."""

from __future__ import annotations

import asyncio

import pytest

from shoal import identity
from shoal.hbone_pool import HboneConnectFailed, Key, Pool, connector
from shoal.identity import parse_spiffe_id

X = parse_spiffe_id("spiffe://cluster.local/ns/a/sa/x")
Y = parse_spiffe_id("spiffe://cluster.local/ns/b/sa/y")


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


KEY = Key("pod-a", X, ("198.19.2.2", 15008), Y)


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
        busy_key = Key("pod-b", X, ("198.19.2.3", 15008), Y)
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


def test_drop_source_closes_only_its_connections():
    async def main():
        async def connect(key):
            return FakeConn()
        pool = Pool(connect)
        a = await pool.checkout(KEY)
        b = await pool.checkout(Key("pod-b", X, ("198.19.2.3", 15008), Y))
        pool.drop_source("pod-a")
        assert a.closed and not b.closed and pool.size == 1
    asyncio.run(main())


def test_a_failed_connect_leaves_no_lock_and_no_entry_and_the_next_try_connects_again():
    async def main():
        attempts = []

        async def connect(key):
            attempts.append(key)
            if len(attempts) == 1:
                raise HboneConnectFailed("refused")
            return FakeConn()

        pool = Pool(connect)
        with pytest.raises(HboneConnectFailed):
            await pool.checkout(KEY)
        assert pool.connections == {} and pool._locks == {}
        assert (await pool.checkout(KEY)).available and len(attempts) == 2
    asyncio.run(main())


def test_connector_checks_the_servers_identity(tmp_path):
    """Real TLS on loopback: the expected identity passes, any other is refused as a mismatch."""
    from shoal.hbone_io import HboneSession
    from support.ca import TestCA
    from support.connect import open_socket

    ca = TestCA()
    server_cred, client_cred = ca.credential(str(Y)), ca.credential(str(X))

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HboneSession(False), "127.0.0.1", 0,
                                          ssl=identity.server_context(server_cred))
        port = server.sockets[0].getsockname()[1]

        async def client_context(who):
            assert who == X
            return identity.client_context(client_cred)

        pool = Pool(connector(open_socket, client_context, timeout=5))
        session = await pool.checkout(Key("", X, ("127.0.0.1", port), Y))
        assert session.available
        impostor = parse_spiffe_id("spiffe://cluster.local/ns/b/sa/impostor")
        with pytest.raises(identity.PeerMismatch, match="impostor"):
            await pool.checkout(Key("", X, ("127.0.0.1", port), impostor))
        assert pool.size == 1
        pool.close()
        server.close()
    asyncio.run(main())


class FakeSession(FakeConn):
    """A pooled connection whose next CONNECT is answered with `answer` (a stream, or an exception)."""

    def __init__(self, answer):
        super().__init__(limit=100)
        self.answer = answer
        self.asked = 0

    @property
    def available(self):
        return not self.closed and not getattr(self, "closing", False)

    async def open(self, authority, timeout):
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("code, retried", [(7, True), (8, False)], ids=["REFUSED_STREAM", "CANCEL"])
def test_a_stream_refused_unprocessed_is_asked_again_on_another_connection(code, retried):
    """RFC 9113 8.7: REFUSED_STREAM means the peer did not process the CONNECT, so another connection may
    be asked (a peer draining with a one-step GOAWAY refuses what crossed it); any other reset is final."""
    from shoal.hbone_io import TunnelBroken

    async def main():
        sessions = [FakeSession(TunnelBroken("refused", code)), FakeSession("the stream")]

        async def connect(key):
            return sessions.pop(0)

        pool = Pool(connect)
        if retried:
            assert await pool.open_stream(KEY, "198.19.2.2:8080", timeout=1) == "the stream"
            assert pool.size == 2 and not sessions
        else:
            with pytest.raises(TunnelBroken):
                await pool.open_stream(KEY, "198.19.2.2:8080", timeout=1)
            assert pool.size == 1
    asyncio.run(main())
