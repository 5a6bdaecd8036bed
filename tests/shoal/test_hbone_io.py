"""The asyncio HBONE driver and relay, over real TLS on loopback with a test CA."""

from __future__ import annotations

import asyncio
import socket

import pytest

import h2.errors

from shoal import hbone, hbone_io, hbone_relay, identity, native_io, relay_lane
from shoal.hbone_io import HboneSession, TunnelRefused
from shoal.hbone_relay import TcpSide, relay

from support.ca import TestCA
from support.polling import eventually_async

CLIENT_ID = "spiffe://cluster.local/ns/app/sa/client"


@pytest.fixture(autouse=True, params=["native", "compiled", "python"])
def relay_path(request, monkeypatch):
    """Every test here runs on the three relay paths: native transports with the compiled lane, the lane on
    the loop's transports (when built), and the Python path. The rig's connections (HBONE both ends, the
    app's sides) are made by shoal.native_io, as the ztunnel's are."""
    if request.param == "compiled" and not relay_lane.COMPILED:
        pytest.skip("the compiled relay lane is not built here (scripts/setup.sh builds it)")
    if request.param == "native" and not relay_lane.NATIVE:
        pytest.skip(f"the native transports are not in use here (SHOAL_RELAY={relay_lane.NAME}; "
                    "scripts/setup.sh builds them)")
    monkeypatch.setattr(relay_lane, "sessions_take_lane", request.param != "python")
    monkeypatch.setattr(native_io, "in_use", request.param == "native")
    return request.param
SERVER_ID = "spiffe://cluster.local/ns/app/sa/server"


class Rig:
    """app client -> forwarder (plain) -> HBONE/TLS -> HBONE server -> app server, all on 127.0.0.1."""

    def __init__(self, app_handler, refuse: str | None = None, client_uri=CLIENT_ID, accept_delay: float = 0.0,
                 client_settings: hbone.Settings = hbone.Settings()):
        self.app_handler = app_handler
        self.client_settings = client_settings
        self.servers: list[HboneSession] = []   # the server side of each HBONE connection
        self.upstreams: list[TcpSide] = []      # the server's connections to the app
        self.requests = 0                       # tunnels that reached the server's handler
        self.refuse = refuse
        self.accept_delay = accept_delay
        self.ca = TestCA()
        self.client_cred = self.ca.credential(client_uri)
        self.server_cred = self.ca.credential(SERVER_ID)
        self.sides: list = []

    async def start(self):
        self.app = await asyncio.start_server(self.app_handler, "127.0.0.1", 0)
        self.app_port = self.app.sockets[0].getsockname()[1]
        self.tasks: list[asyncio.Task] = []
        server_ctx = identity.server_context(self.server_cred)
        self.hbone_port = self.listen(lambda conn: self.on_hbone(conn, server_ctx))
        client_ctx = identity.client_context(self.client_cred)
        _, self.session = await native_io.open_tls(lambda: HboneSession(True, self.client_settings),
                                                   await connected(self.hbone_port), client_ctx, server_side=False,
                                                   handshake_timeout=10)
        identity.check_peer(self.session.ssl_object, identity.parse_spiffe_id(SERVER_ID))
        self.front_port = self.listen(self.on_front)

    def listen(self, on_connection) -> int:
        """A plain listener on loopback whose accepted sockets go to `on_connection`; its port."""
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)

        async def accept():
            with listener:
                while True:
                    conn, _ = await loop.sock_accept(listener)
                    self.tasks.append(loop.create_task(on_connection(conn)))

        self.tasks.append(loop.create_task(accept()))
        return listener.getsockname()[1]

    async def on_hbone(self, conn, context):
        try:
            await native_io.open_tls(self.server_session, conn, context, server_side=True, handshake_timeout=10)
        except (OSError, asyncio.TimeoutError):   # a client without a mesh certificate (ssl.SSLError is an OSError)
            conn.close()

    def server_session(self):
        session = HboneSession(False, on_request=self.on_request)
        self.servers.append(session)
        return session

    async def on_front(self, conn):
        _, side = await native_io.open_tcp(TcpSide, conn, accepted=True)
        await self._front(side)

    async def _front(self, side):
        try:
            stream = await self.session.open(f"127.0.0.1:{self.app_port}")
        except hbone_io.RelayError as e:
            self.error = e
            side.abort()
            return
        self.sides.append((side, stream))
        await relay(side, stream)

    async def on_request(self, session, stream):
        self.requests += 1
        if self.refuse:
            session.refuse(stream, 403, self.refuse)
            return
        host, port = stream.authority.rsplit(":", 1)
        _, upstream = await native_io.open_tcp(TcpSide, await connected(int(port), host), accepted=False)
        self.upstreams.append(upstream)
        await asyncio.sleep(self.accept_delay)
        session.accept(stream)
        await relay(stream, upstream)

    async def stop(self):
        self.session.close()
        self.app.close()
        for task in self.tasks:
            task.cancel()


async def connected(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return sock


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo_after_eof(reader, writer):
    data = await reader.read(-1)  # until the client half-closes
    writer.write(data[::-1])
    await writer.drain()
    writer.close()


def test_half_close_carries_through_and_reply_comes_after():
    async def main():
        rig = Rig(echo_after_eof)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        payload = bytes(range(256)) * 4000
        writer.write(payload)
        writer.write_eof()
        reply = await reader.read(-1)
        assert reply == payload[::-1]
        writer.close()
        await asyncio.sleep(0.05)
        side, stream = rig.sides[0]
        assert side.bytes_received == len(payload) and stream.bytes_received == len(payload)
        await rig.stop()
    run(main())


def test_many_parallel_connections_share_one_tls_connection():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def one(rig, i):
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        message = f"hello {i} ".encode() * 100
        writer.write(message)
        got = await reader.readexactly(len(message))
        writer.close()
        return got == message

    async def main():
        rig = Rig(echo)
        await rig.start()
        assert all(await asyncio.gather(*(one(rig, i) for i in range(50))))
        assert len(rig.servers) == 1
        await rig.stop()
    run(main())


def test_app_reset_becomes_client_reset():
    async def resetter(reader, writer):
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def main():
        rig = Rig(resetter)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
            await reader.read(100)
        await rig.stop()
    run(main())


def test_refusal_resets_the_app_connection_and_keeps_the_reason():
    async def main():
        rig = Rig(echo_after_eof, refuse="denied by policy app/deny-all")
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
            await reader.read(100)
        assert isinstance(rig.error, TunnelRefused) and rig.error.status == 403
        assert "app/deny-all" in str(rig.error)
        await rig.stop()
    run(main())


def test_slow_reader_gets_backpressure_not_unbounded_buffers():
    async def main():
        release = asyncio.Event()
        sink: dict = {}

        async def slow(reader, writer):
            await release.wait()
            sink["data"] = await reader.read(-1)
            writer.close()

        rig = Rig(slow)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        writer.transport.set_write_buffer_limits(1 << 16)
        chunk = b"z" * (1 << 20)
        sent = 0
        # Push up to 256 MiB; the pipe must stall long before (window + socket buffers).
        for _ in range(256):
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except asyncio.TimeoutError:
                break
            sent += len(chunk)
        print("accepted before stall:", sent)
        assert sent < 64 << 20, f"{sent} bytes accepted by a pipe whose reader never reads"
        side, stream = rig.sides[0]
        assert rig.session.conn.unsent(stream.stream_id) <= 2 * hbone_relay.WRITE_HIGH_WATER + (8 << 20)
        release.set()
        writer.write_eof()
        await writer.drain()
        await reader.read(-1)
        await asyncio.sleep(0.1)
        assert len(sink["data"]) == side.bytes_received
        await rig.stop()
    run(main())


def test_client_without_mesh_certificate_cannot_handshake():
    async def main():
        rig = Rig(echo_after_eof)
        await rig.start()
        ctx = identity.client_context(None, rig.ca.bundle_pem)
        with pytest.raises((ConnectionResetError, OSError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", rig.hbone_port, ssl=ctx, server_hostname="")
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            await writer.drain()
            assert await reader.read(100) == b""
            raise ConnectionResetError("closed without a certificate")
        await rig.stop()
    run(main())


def test_client_checks_server_identity():
    async def main():
        rig = Rig(echo_after_eof)
        await rig.start()
        with pytest.raises(identity.PeerMismatch, match="expected"):
            identity.check_peer(rig.session.ssl_object, identity.parse_spiffe_id("spiffe://cluster.local/ns/app/sa/other"))
        await rig.stop()
    run(main())


def test_client_reset_before_the_tunnel_opens_reaches_the_app():
    async def main():
        ended = asyncio.Event()

        async def app(reader, writer):
            try:
                await reader.read(-1)
            except ConnectionError:
                pass
            ended.set()
            writer.close()

        rig = Rig(app, accept_delay=0.3)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST while the tunnel is still waiting for its 200
        await asyncio.wait_for(ended.wait(), 3)  # the app's connection does not linger
        await asyncio.sleep(0.1)
        assert not rig.session.streams
        await rig.stop()
    run(main())


def test_an_unanswered_connect_times_out_and_retires_the_connection():
    async def main():
        rig = Rig(echo_after_eof, accept_delay=30)
        await rig.start()
        assert rig.session.available
        with pytest.raises(hbone_io.RelayError, match="no answer to CONNECT"):
            await rig.session.open(f"127.0.0.1:{rig.app_port}", timeout=0.3)
        assert not rig.session.available  # the pool will open a fresh connection
        await rig.stop()
    run(main())


def test_a_server_that_speaks_first_is_heard_whole():
    # The banner may arrive with the 200, before the client's relay is attached: the core keeps it till then.
    async def banner(reader, writer):
        writer.write(b"220 ready\r\n" * 1000)
        await writer.drain()
        writer.close()

    async def main():
        rig = Rig(banner)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        assert await reader.read(-1) == b"220 ready\r\n" * 1000
        writer.close()
        await rig.stop()
    run(main())


def test_hbone_errors_are_shoal_errors_with_a_response_flag():
    from shoal import hbone
    from shoal.errors import ShoalError

    assert issubclass(hbone.HboneError, ShoalError) and issubclass(hbone_io.RelayError, hbone.HboneError)
    assert hbone_io.RelayError("x").response_flag == "UF"
    assert TunnelRefused(403, "denied").response_flag == "UAEX"
    assert TunnelRefused(503, "").response_flag == "UF"


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_a_drain_goaway_lets_open_tunnels_finish_and_new_ones_open_a_new_connection():
    """Issue 9, item 2: the server's graceful GOAWAY; the client's tunnel keeps flowing, byte-exact."""
    async def main():
        rig = Rig(echo)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        [server] = rig.servers
        server.go_away()
        await eventually_async(lambda: rig.session.closing, 5, "the client to see the GOAWAY")
        assert not rig.session.available                   # a pool opens its next stream elsewhere
        with pytest.raises(hbone.StreamLimitReached):
            await rig.session.open(f"127.0.0.1:{rig.app_port}")
        for i in range(50):                                # the open tunnel still carries bytes both ways
            message = bytes([i]) * 10000
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
        assert not rig.session.lost.done() and not server.transport.is_closing()
        writer.write_eof()
        assert await reader.read(-1) == b""
        # Its last stream over, the drained connection closes; nothing was reset.
        await asyncio.wait_for(rig.session.lost, 5)
        side, stream = rig.sides[0]
        assert not stream.reset and not side.reset and stream.bytes_received == 6 + 50 * 10000
        await rig.stop()
    run(main())


def test_rapid_reset_does_not_reach_the_handler_and_is_cut_off():
    """Issue 9, item 8 (CVE-2023-44487): CONNECTs reset as fast as they are sent cost no upstream connection."""
    async def main():
        rig = Rig(echo)
        await rig.start()
        seen = []
        receive = rig.session.conn.receive_data

        def recording(data):
            events = receive(data)
            seen.extend(events)
            return events
        rig.session.conn.receive_data = recording
        allowed = hbone.Settings().early_resets_allowed
        for _ in range(allowed + 50):
            sid = rig.session.conn.open(f"127.0.0.1:{rig.app_port}")
            rig.session.conn.reset(sid)
        rig.session.flush()
        await asyncio.wait_for(rig.session.lost, 5)      # the server cut the connection
        goaway = [e for e in seen if isinstance(e, hbone.ConnectionClosed)]
        assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        await asyncio.sleep(0.1)
        # A stream reset in the same read as its CONNECT never gets a handler (a read may split one pair).
        assert rig.requests <= 2 and len(rig.upstreams) <= 2
        assert not rig.servers[0].streams and not rig.servers[0].conn._tunnels
        await rig.stop()
    run(main())


def test_reading_the_app_pauses_while_writing_to_the_peer_backs_up():
    """Issue 9, item 8: a peer that does not read stops the server reading its app, however large the
    windows it grants, and what waits in the server stays within its write-buffer limits."""
    async def flood(reader, writer):
        chunk = b"f" * (1 << 20)
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass

    async def main():
        huge = hbone.Settings(stream_window=1 << 30, connection_window=1 << 30)
        rig = Rig(flood, client_settings=huge)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        await eventually_async(lambda: rig.upstreams, 5, "the tunnel to the app")
        rig.session.transport.pause_reading()           # the peer stops reading its HBONE connection
        [upstream] = rig.upstreams
        await eventually_async(lambda: not upstream.transport.is_reading(), 10,
                               lambda: f"the server to stop reading the app; its transport holds "
                                       f"{rig.servers[0].transport.get_write_buffer_size()} bytes")
        [server] = rig.servers
        await asyncio.sleep(0.3)
        assert not upstream.transport.is_reading()
        held = server.transport.get_write_buffer_size() + sum(server.conn.unsent(s) for s in server.streams)
        assert held <= 4 * hbone_relay.WRITE_HIGH_WATER + (4 << 20), held
        rig.session.transport.resume_reading()
        got = await reader.readexactly(8 << 20)              # and it flows again once the peer reads
        assert got == b"f" * (8 << 20)
        writer.close()
        await rig.stop()
    run(main())


def test_with_native_transports_the_lane_writes_to_the_app_in_c(relay_path, monkeypatch):
    """Native path: plain DATA frames reach the app's native transport from the lane in C, not through
    TcpSide.write; the other paths call it for every payload. The bytes are the same either way."""
    calls = []
    python_write = TcpSide.write

    def counted(self, data):
        calls.append(len(data))
        python_write(self, data)

    monkeypatch.setattr(TcpSide, "write", counted)

    async def main():
        rig = Rig(echo)
        await rig.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.front_port)
        for i in range(20):
            message = bytes([i]) * 1000
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
        writer.close()
        await rig.stop()
    run(main())
    if relay_path == "native":
        assert calls == []
    else:
        assert sum(calls) >= 2 * 20 * 1000     # both ends' app sides, every payload


def test_a_peer_that_closes_mid_frame_ends_the_tunnel_after_the_bytes_that_came():
    """The client's TLS connection ends inside a DATA frame (its header and 300 of its 1000 bytes sent): the
    app gets every byte that came, the cut frame's part too (a tunnel is a byte stream, and all three paths
    carry a frame's payload as it arrives), then its connection ends; nothing raises on the loop."""
    async def main():
        loop = asyncio.get_running_loop()
        received, ended = bytearray(), loop.create_future()

        async def app(reader, writer):
            try:
                while data := await reader.read(65536):
                    received.extend(data)
            except ConnectionResetError:
                pass
            finally:
                ended.set_result(None)
                writer.close()

        errors = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        rig = Rig(app)
        await rig.start()
        front = await connected(rig.front_port)
        await loop.sock_sendall(front, b"whole" * 200)
        await eventually_async(lambda: len(received) == 1000, 10, "the whole frames at the app")
        _, stream = rig.sides[0]
        header = (1000).to_bytes(3, "big") + bytes([0, 0]) + stream.stream_id.to_bytes(4, "big")
        rig.session.transport.write(header + b"p" * 300)   # a DATA frame of 1000 bytes, 300 of them sent
        rig.session.transport.close()
        await asyncio.wait_for(ended, 10)
        assert bytes(received) == b"whole" * 200 + b"p" * 300 and not errors
        front.close()
        await rig.stop()
    run(main())
