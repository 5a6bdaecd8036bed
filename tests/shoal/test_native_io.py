"""The native transports (shoal._native through shoal.native_io): TCP and TLS on loopback, under uvloop as
in the proxies, against the asyncio Transport contract the relay and the HBONE driver use."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import struct

import pytest
import uvloop
from hypothesis import given, settings, strategies as st

from shoal import hbone_pool, identity, native_io, relay_lane

from support.ca import TestCA
from support.connect import open_socket
from support.polling import eventually_async

pytestmark = pytest.mark.skipif(not relay_lane.NATIVE, reason="the native transports are not in use here "
                                f"(SHOAL_RELAY={relay_lane.NAME}; scripts/setup.sh builds them)")

SERVER_ID, CLIENT_ID = "spiffe://cluster.local/ns/a/sa/server", "spiffe://cluster.local/ns/a/sa/client"
CA = TestCA()
SERVER_CRED, CLIENT_CRED = CA.credential(SERVER_ID), CA.credential(CLIENT_ID)


class Recorder(asyncio.Protocol):
    """Keeps every callback, in order, and what arrived."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.keep_open_on_eof = keep_open_on_eof
        self.lost = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def run(coro, timeout: float = 60):
    return uvloop.run(asyncio.wait_for(coro, timeout))


async def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (accepted, connecting), non-blocking."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accepted, _ = await asyncio.gather(loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname()))
    return accepted[0], client


async def tls_pair(server_ctx=None, client_ctx=None, server=Recorder, client=Recorder):
    """(server transport, server protocol, client transport, client protocol) after a native TLS handshake."""
    a, b = await socket_pair()
    (st_, sp), (ct, cp) = await asyncio.gather(
        native_io.open_tls(server, a, server_ctx or identity.server_context(SERVER_CRED), server_side=True,
                           handshake_timeout=10),
        native_io.open_tls(client, b, client_ctx or identity.client_context(CLIENT_CRED), server_side=False,
                           handshake_timeout=10))
    return st_, sp, ct, cp


async def tcp_pair(server=Recorder, client=Recorder):
    a, b = await socket_pair()
    st_, sp = await native_io.open_tcp(server, a, accepted=True)
    ct, cp = await native_io.open_tcp(client, b, accepted=False)
    return st_, sp, ct, cp


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- TLS: one policy, the same errors -------------------------------------------------------------------

def test_both_ends_read_the_peers_identity_alpn_and_version_as_ssl_gives_them():
    async def main():
        st_, sp, ct, cp = await tls_pair()
        assert isinstance(ct, native_io._native.Transport) and isinstance(st_, native_io._native.Transport)
        assert str(identity.peer_spiffe_id(ct.get_extra_info("ssl_object"))) == SERVER_ID
        assert str(identity.peer_spiffe_id(st_.get_extra_info("ssl_object"))) == CLIENT_ID
        for t in (st_, ct):
            ssl_object = t.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == identity.ALPN
            assert ssl_object.version() == "TLSv1.3" and ssl_object.cipher()[1] == "TLSv1.3"
            assert t.get_extra_info("peername") == t.get_extra_info("socket").getpeername()
        with pytest.raises(identity.PeerMismatch):
            identity.check_peer(ct.get_extra_info("ssl_object"), identity.parse_spiffe_id(CLIENT_ID))
        ct.close()
        assert await sp.lost is None and await cp.lost is None
        assert sp.events == ["made", "eof", "lost"]           # close_notify reads as EOF; TLS then closes
    run(main())


def test_an_untrusted_server_is_refused_with_a_certificate_verify_error():
    async def main():
        stranger = identity.server_context(TestCA().credential(SERVER_ID))
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            await tls_pair(server_ctx=stranger)
        assert refused.value.reason == "CERTIFICATE_VERIFY_FAILED" and refused.value.verify_code
    run(main())


def test_a_client_without_a_certificate_is_refused_by_the_server():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = await socket_pair()
        server = loop.create_task(native_io.open_tls(Recorder, a, identity.server_context(SERVER_CRED),
                                                     server_side=True, handshake_timeout=10))
        # TLS 1.3: the client finishes first, then hears the server's alert on its first read.
        _, cp = await native_io.open_tls(Recorder, b, identity.client_context(None, CA.bundle_pem),
                                         server_side=False, handshake_timeout=10)
        with pytest.raises(ssl.SSLError) as refused:
            await server
        assert refused.value.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
        assert isinstance(await cp.lost, ssl.SSLError) and cp.events == ["made", "lost"]
        assert a.fileno() == -1     # the refused connection is closed
    run(main())


def test_a_client_offering_another_alpn_gets_none_as_with_ssl():
    """ALPN is the context's: a server whose protocol the client does not offer agrees none, through
    ssl as natively (shoal checks the peer's SPIFFE ID, not ALPN)."""
    async def main():
        other = identity.client_context(CLIENT_CRED)
        other.set_alpn_protocols(["http/1.1"])
        st_, _, ct, _ = await tls_pair(client_ctx=other)
        assert st_.get_extra_info("ssl_object").selected_alpn_protocol() is None
        assert ct.get_extra_info("ssl_object").selected_alpn_protocol() is None
        ct.abort()
        st_.abort()
    run(main())


def test_a_context_with_python_callbacks_takes_the_loops_tls_and_says_why_once(caplog):
    async def main():
        ctx = identity.server_context(SERVER_CRED)
        ctx.sni_callback = lambda *args: None
        a, b = await socket_pair()
        (st_, _), (ct, _) = await asyncio.gather(
            native_io.open_tls(Recorder, a, ctx, server_side=True, handshake_timeout=10),
            native_io.open_tls(Recorder, b, identity.client_context(CLIENT_CRED), server_side=False,
                               handshake_timeout=10))
        assert not isinstance(st_, native_io._native.Transport) and isinstance(ct, native_io._native.Transport)
        assert str(identity.peer_spiffe_id(ct.get_extra_info("ssl_object"))) == SERVER_ID
        ct.abort()
        st_.abort()
    run(main())


def test_a_silent_peer_times_the_handshake_out_and_leaves_no_fd():
    async def main():
        before = open_fds()
        a, b = await socket_pair()
        with pytest.raises(ConnectionAbortedError, match="handshake"):
            await native_io.open_tls(Recorder, b, identity.client_context(CLIENT_CRED), server_side=False,
                                     handshake_timeout=0.3)
        a.close()
        assert b.fileno() == -1 and open_fds() == before
    run(main())


# --- the transport contract, both kinds ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_backpressure_both_ways_with_a_paused_reader_loses_nothing(kind):
    async def main():
        st_, sp, ct, cp = await (tls_pair() if kind == "tls" else tcp_pair())
        payload = os.urandom(8 << 20)
        for sender, receiver, rp, sp_ in ((ct, st_, sp, cp), (st_, ct, cp, sp)):
            sender.set_write_buffer_limits(high=256 << 10)
            receiver.pause_reading()
            assert not receiver.is_reading()
            sender.write(payload)
            await eventually_async(lambda: "pause_writing" in sp_.events, timeout=30)
            assert sender.get_write_buffer_size() > 256 << 10
            receiver.resume_reading()
            await eventually_async(lambda: len(rp.data) == len(payload), timeout=60)
            assert bytes(rp.data) == payload and sender.get_write_buffer_size() == 0
            assert sp_.events.index("resume_writing") > sp_.events.index("pause_writing")
            rp.data.clear()
        ct.close()
        await asyncio.gather(sp.lost, cp.lost)
    run(main())


def test_tcp_half_close_each_way():
    async def main():
        st_, sp, ct, cp = await tcp_pair(server=lambda: Recorder(keep_open_on_eof=True),
                                         client=lambda: Recorder(keep_open_on_eof=True))
        assert ct.can_write_eof()
        ct.write(b"request")
        ct.write_eof()
        with pytest.raises(RuntimeError):
            ct.write(b"more")
        await eventually_async(lambda: "eof" in sp.events, timeout=10)
        assert bytes(sp.data) == b"request"
        st_.write(b"answer after the client's EOF")    # the server's half is still open
        st_.write_eof()
        await eventually_async(lambda: "eof" in cp.events, timeout=10)
        assert bytes(cp.data) == b"answer after the client's EOF"
        st_.close()
        ct.close()
        assert await sp.lost is None and await cp.lost is None
        assert sp.events == ["made", "data", "eof", "lost"] and cp.events == ["made", "data", "eof", "lost"]
    run(main())


def test_tls_eof_both_ways_and_a_peer_that_drops_tcp_without_close_notify():
    async def main():
        st_, sp, ct, cp = await tls_pair()
        assert not ct.can_write_eof()
        st_.write(b"bye")
        st_.close()                                   # flush, close_notify, close
        assert await cp.lost is None and await sp.lost is None
        assert bytes(cp.data) == b"bye" and cp.events == ["made", "data", "eof", "lost"]

        st_, sp, ct, cp = await tls_pair()
        st_.get_extra_info("socket").shutdown(socket.SHUT_WR)     # FIN, no close_notify
        assert await cp.lost is None and cp.events == ["made", "eof", "lost"]
        st_.abort()
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_abort_and_a_reset_from_the_peer(kind):
    async def main():
        st_, sp, ct, cp = await (tls_pair() if kind == "tls" else tcp_pair())
        ct.write(b"x" * 1000)
        await eventually_async(lambda: len(sp.data) == 1000, timeout=10)
        sock = st_.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        st_.abort()                                   # RST
        assert st_.is_closing() and await sp.lost is None
        error = await cp.lost
        assert isinstance(error, ConnectionResetError), error
        assert cp.events[-1] == "lost" and ct.is_closing()
        ct.write(b"after the end")                    # dropped, as asyncio drops it
    run(main())


@settings(max_examples=12, deadline=None)
@given(chunks=st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=12), tls=st.booleans())
def test_a_large_transfer_arrives_whole_over_any_chunking(chunks, tls):
    async def main():
        st_, sp, ct, cp = await (tls_pair() if tls else tcp_pair())
        sent = hashlib.sha256()
        total = 0
        for i, size in enumerate(chunks):
            data = os.urandom(size)
            sent.update(data)
            total += size
            (ct.writelines([data[:size // 2], data[size // 2:]]) if i % 2 else ct.write(data))
        ct.close()                                    # flushes all first
        assert await sp.lost is None and await cp.lost is None
        assert len(sp.data) == total and hashlib.sha256(sp.data).digest() == sent.digest()
    run(main(), timeout=20)


def test_no_fd_is_left_after_many_connections_close():
    async def main():
        before = open_fds()
        for i in range(20):
            st_, sp, ct, cp = await (tls_pair() if i % 2 else tcp_pair())
            ct.write(b"ping")
            await eventually_async(lambda: bytes(sp.data) == b"ping", timeout=10)
            (ct.close if i % 3 else ct.abort)()
            await asyncio.gather(sp.lost, cp.lost)
        assert open_fds() == before
    run(main())


def test_the_pool_connector_uses_the_native_tls_and_refuses_an_untrusted_server_as_upe():
    async def main():
        loop = asyncio.get_running_loop()
        me, server_id = identity.parse_spiffe_id(CLIENT_ID), identity.parse_spiffe_id(SERVER_ID)
        for server_ctx, refused in ((identity.server_context(SERVER_CRED), False),
                                    (identity.server_context(TestCA().credential(SERVER_ID)), True)):
            listener = socket.create_server(("127.0.0.1", 0))
            listener.setblocking(False)

            async def serve():
                conn, _ = await loop.sock_accept(listener)
                try:
                    await native_io.open_tls(Recorder, conn, server_ctx, server_side=True, handshake_timeout=10)
                except OSError:
                    conn.close()

            served = loop.create_task(serve())

            async def client_context(who):
                return identity.client_context(CLIENT_CRED)

            connect = hbone_pool.connector(open_socket, client_context, timeout=10)
            key = hbone_pool.Key("", me, listener.getsockname(), server_id)
            if refused:
                with pytest.raises(hbone_pool.HboneConnectFailed, match="TLS handshake .* failed") as e:
                    await connect(key)
                assert e.value.response_flag == "UPE"
            else:
                session = await connect(key)
                assert isinstance(session.transport, native_io._native.Transport) and session.available
                session.close()
            await served
            listener.close()
    run(main())


def test_a_closed_transport_is_freed_without_the_cycle_collector():
    """Its buffers and TLS session go when the last reference does, not at the next full collection (a
    busy proxy's closed connections would otherwise hold them by the thousand)."""
    import gc

    def transports() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is native_io._native.Transport)

    async def main():
        gc.collect()
        gc.disable()
        try:
            before = transports()
            for make in (tcp_pair, tls_pair):
                st_, sp, ct, cp = await make()
                ct.write(b"x" * 1000)
                ct.close()
                await sp.lost, await cp.lost
                del st_, sp, ct, cp
            await asyncio.sleep(0.05)
            assert transports() == before
        finally:
            gc.enable()
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "tls"])
@pytest.mark.parametrize("callback", ["data_received", "eof_received"])
def test_a_protocol_callback_that_raises_ends_the_connection_as_asyncio_does(kind, callback):
    """asyncio's transports treat an exception from data_received or eof_received as fatal: the loop's
    exception handler hears it, and connection_lost gets it. A transport left open would hand the next
    read to a protocol whose state the exception left half-changed."""
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if callback == "data_received":
                raise ValueError("broken protocol")

        def eof_received(self):
            super().eof_received()
            raise ValueError("broken protocol")

    async def main():
        reported = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        make = tcp_pair if kind == "tcp" else tls_pair
        st_, sp, ct, cp = await make(server=Failing)
        if callback == "data_received":
            ct.write(b"first")
        else:
            ct.close()
        exc = await asyncio.wait_for(sp.lost, 5)
        assert isinstance(exc, ValueError) and st_.is_closing()
        assert [c["exception"] for c in reported] == [exc]
        assert await asyncio.wait_for(cp.lost, 5) is None or kind == "tcp"
        ct.abort()
    run(main())


def test_a_connection_made_that_raises_fails_the_handshake_at_once():
    """The error reaches open_tls's caller now, not as a handshake timeout later."""
    class Failing(Recorder):
        def connection_made(self, transport) -> None:
            raise ValueError("broken protocol")

    async def main():
        a, b = await socket_pair()
        loop = asyncio.get_running_loop()
        started = loop.time()
        server, client = await asyncio.gather(
            native_io.open_tls(Failing, a, identity.server_context(SERVER_CRED), server_side=True,
                               handshake_timeout=10),
            native_io.open_tls(Recorder, b, identity.client_context(CLIENT_CRED), server_side=False,
                               handshake_timeout=10), return_exceptions=True)
        assert isinstance(server, ValueError) and loop.time() - started < 5
        client[0].abort()
    run(main())
