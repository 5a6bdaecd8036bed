"""shoal.grpc_channel against peers that misbehave: a real TLS + HTTP/2 server (the h2 library) that
answers as told, and the config client keeping its last config when the control plane turns into one.
The channel against the real (grpcio) control plane is tested by tests/control_plane (Watch, Sign)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import ssl
import struct
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, PingReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes

from shoal.api import config_pb2
from shoal.config_client import NODE_TYPES, ClientSettings, ConfigClient
from shoal.grpc_channel import WINDOW, Channel, ChannelSettings
from shoal.grpc_wire import PREFIX, RpcError, StatusCode, encode_message
from support.polling import eventually_async

NAME = "peer.test"
IMMEDIATE = ("trailers_only", "never", "watch_then_close", "state_then_quiet")    # behaviours that answer a call's headers


def server_tls() -> tuple[ssl.SSLContext, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.pem").write_bytes(pem)
        (Path(d) / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")
    ctx.set_alpn_protocols(["h2"])
    return ctx, pem


class Peer(asyncio.Protocol):
    """One server connection; `behaviour(peer, stream_id, headers, body)` answers each finished request."""

    def __init__(self, behaviour, seen: list) -> None:
        self.behaviour, self.seen = behaviour, seen
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.bodies: dict[int, bytes] = {}
        self.headers: dict[int, dict] = {}

    transports: list = []      # every server-side transport, for a test that stops reading them
    pings = 0                  # PINGs received, on every connection
    pump = None                # a behaviour's sender, run again whenever the client may have given credit

    def connection_made(self, transport) -> None:
        self.transport = transport
        Peer.transports.append(transport)
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                self.headers[event.stream_id] = dict(event.headers)
                self.seen.append(dict(event.headers))
                self.bodies[event.stream_id] = b""
                if self.behaviour.__name__ in IMMEDIATE:
                    self.behaviour(self, event.stream_id, self.headers[event.stream_id], b"")
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.bodies[event.stream_id] += event.data
            elif isinstance(event, PingReceived):
                Peer.pings += 1
            elif isinstance(event, StreamEnded) and self.behaviour.__name__ not in IMMEDIATE:
                self.behaviour(self, event.stream_id, self.headers[event.stream_id], self.bodies[event.stream_id])
        if self.pump is not None:
            self.pump()
        if not self.transport.is_closing():
            self.flush()

    def answer(self, stream_id: int, data: bytes, status: int | None = 0, message: str = "") -> None:
        self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        if data:
            self.h2.send_data(stream_id, data)
        if status is not None:
            self.h2.send_headers(stream_id, [(b"grpc-status", str(status).encode()),
                                             (b"grpc-message", quote(message).encode())], end_stream=True)
        self.flush()


async def serve(behaviour):
    ctx, pem = server_tls()
    seen: list = []
    server = await asyncio.get_running_loop().create_server(lambda: Peer(behaviour, seen), "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    return server, pem, f"127.0.0.1:{port}", seen


def settings(target: str, pem: bytes, **kw) -> ChannelSettings:
    return ChannelSettings(target=target, server_name=NAME, bundle_pem=pem, **kw)


def unary_against(behaviour, timeout: float = 10.0, **kw):
    async def main():
        server, pem, target, seen = await serve(behaviour)
        channel = Channel(settings(target, pem, **kw))
        try:
            return await channel.unary("/shoal.api.Test/Echo", b"hello", (("authorization", "Bearer t"),),
                                       timeout=timeout), seen
        finally:
            await channel.close()
            server.close()
    return asyncio.run(main())


def echo(peer, stream_id, headers, body):
    peer.answer(stream_id, body)


def test_a_unary_call_sends_grpc_on_the_wire_and_reads_the_answer():
    answer, seen = unary_against(echo, timeout=7.5)
    assert answer == b"hello"    # the server echoed the one framed message it received, unframed by us
    headers = seen[0]
    assert headers[b":method"] == b"POST" and headers[b":path"] == b"/shoal.api.Test/Echo"
    assert headers[b":authority"] == NAME.encode() and headers[b":scheme"] == b"https"
    assert headers[b"content-type"] == b"application/grpc" and headers[b"te"] == b"trailers"
    assert headers[b"grpc-timeout"] == b"7500m" and headers[b"authorization"] == b"Bearer t"


def trailers_only(peer, stream_id, headers, body):
    peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                     (b"grpc-status", b"16"), (b"grpc-message", quote("unknown token: x").encode())],
                         end_stream=True)


def test_a_trailers_only_refusal_is_its_status_and_message():
    with pytest.raises(RpcError) as info:
        unary_against(trailers_only)
    assert info.value.code is StatusCode.UNAUTHENTICATED and info.value.details == "unknown token: x"


def permission_denied(peer, stream_id, headers, body):
    peer.answer(stream_id, b"", status=7, message="only watch as node node1")


def test_a_status_in_trailers_is_raised():
    with pytest.raises(RpcError) as info:
        unary_against(permission_denied)
    assert info.value.code is StatusCode.PERMISSION_DENIED and "node node1" in info.value.details


def bad_flag(peer, stream_id, headers, body):
    peer.answer(stream_id, b"\x07\x00\x00\x00\x01x")


def oversized(peer, stream_id, headers, body):
    peer.answer(stream_id, b"\x00\x10\x00\x00\x00" + b"x" * 100, status=None)


def half_then_close(peer, stream_id, headers, body):
    peer.answer(stream_id, b"\x00\x00\x00\x01\x00" + b"x" * 10, status=None)
    peer.transport.close()


def half_then_ok(peer, stream_id, headers, body):
    peer.answer(stream_id, b"\x00\x00\x00\x01\x00" + b"x" * 10, status=0)


def not_grpc(peer, stream_id, headers, body):
    peer.h2.send_headers(stream_id, [(b":status", b"503"), (b"content-type", b"text/plain")], end_stream=True)
    peer.flush()


def never(peer, stream_id, headers, body):
    pass


def calm_down(peer, stream_id, headers, body):
    peer.h2.reset_stream(stream_id, ErrorCodes.ENHANCE_YOUR_CALM)
    peer.flush()


def grpc_web(peer, stream_id, headers, body):
    """gRPC-Web carries its status in the body: not the framing this client reads."""
    peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc-web+proto")])
    peer.h2.send_data(stream_id, body, end_stream=True)
    peer.flush()


def goaway_then_echo(peer, stream_id, headers, body):
    """A graceful GOAWAY that still covers the call (written by hand: h2 sends nothing after its own), then,
    a little later, the answer."""
    peer.transport.write(b"\x00\x00\x08\x07\x00" + struct.pack(">III", 0, stream_id, 0))
    asyncio.get_running_loop().call_later(0.1, echo, peer, stream_id, headers, body)


@pytest.mark.parametrize("behaviour,code,words", [
    (bad_flag, StatusCode.INTERNAL, "flag byte 7"),
    (oversized, StatusCode.RESOURCE_EXHAUSTED, "message of 268435456 bytes; the limit is 1024"),
    (half_then_close, StatusCode.UNAVAILABLE, "was lost"),
    (half_then_ok, StatusCode.INTERNAL, "in the middle of a message"),
    (not_grpc, StatusCode.UNAVAILABLE, "HTTP 503"),
    (goaway_then_echo, StatusCode.UNAVAILABLE, "is going away (NO_ERROR)"),
    (calm_down, StatusCode.RESOURCE_EXHAUSTED, "reset the call (ENHANCE_YOUR_CALM)"),
    (grpc_web, StatusCode.UNKNOWN, "content-type application/grpc-web+proto, not application/grpc"),
])
def test_a_misbehaving_server_is_a_clear_error(behaviour, code, words):
    with pytest.raises(RpcError) as info:
        unary_against(behaviour, max_receive_message=1024)
    assert info.value.code is code and words in info.value.details, info.value


def test_a_server_that_never_answers_runs_into_the_deadline():
    with pytest.raises(RpcError) as info:
        unary_against(never, timeout=0.5)
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED


def test_an_unanswered_keepalive_ends_the_connection():
    async def main():
        server, pem, target, _ = await serve(never)
        channel = Channel(settings(target, pem, keepalive_time=0.2, keepalive_timeout=0.3))
        Peer.transports.clear()
        call = await channel.open_stream("/shoal.api.Config/Watch")
        # The peer stops reading: its kernel buffers take the PING, nobody answers it.
        for transport in Peer.transports:
            transport.pause_reading()
        try:
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(call.receive(), 30)
            return info.value
        finally:
            await channel.close()
            server.close()
    error = asyncio.run(main())
    assert error.code is StatusCode.UNAVAILABLE and "keepalive PING" in error.details


def test_keepalive_pings_only_while_a_call_is_open():
    async def main():
        server, pem, target, _ = await serve(never)
        channel = Channel(settings(target, pem, keepalive_time=0.05))
        try:
            with pytest.raises(RpcError):
                await channel.unary("/shoal.api.Test/Echo", b"", timeout=0.3)     # a call open for 0.3 s
            assert Peer.pings > 0
            Peer.pings = 0
            await asyncio.sleep(0.5)                                             # the connection idle
            idle = Peer.pings
            call = await channel.open_stream("/shoal.api.Config/Watch")
            await asyncio.sleep(0.5)
            call.cancel()
            return idle, Peer.pings
        finally:
            await channel.close()
            server.close()
    idle, open_call = asyncio.run(main())
    assert idle == 0 and open_call > 0


def test_a_wrong_server_name_or_an_unreachable_target_is_unavailable_and_backs_off():
    async def main():
        server, pem, target, _ = await serve(echo)
        try:
            wrong = Channel(ChannelSettings(target=target, server_name="other.test", bundle_pem=pem))
            with pytest.raises(RpcError) as info:
                await wrong.unary("/x/Y", b"", timeout=5)
            assert info.value.code is StatusCode.UNAVAILABLE and "does not verify as other.test" in info.value.details
            # During the backoff a call fails at once with the same error, without dialling.
            with pytest.raises(RpcError) as again:
                await wrong.unary("/x/Y", b"", timeout=5)
            assert again.value.details == info.value.details
        finally:
            server.close()
        closed = Channel(settings(target, pem))
        with pytest.raises(RpcError) as info:
            await closed.unary("/x/Y", b"", timeout=5)
        assert info.value.code is StatusCode.UNAVAILABLE and "cannot connect" in info.value.details
    asyncio.run(main())


def status_then_data(peer, stream_id, headers, body):
    """The first call: a grpc-status in its headers without ending the stream, then (once the client let the
    call go) DATA on it up to the whole of the connection's window. Later calls: echo."""
    if stream_id != 1:
        return echo(peer, stream_id, headers, body)
    peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                     (b"grpc-status", b"0")])
    peer.flush()

    def spend_the_window():
        while (window := min(peer.h2.local_flow_control_window(1), peer.h2.max_outbound_frame_size)) > 0:
            peer.h2.send_data(1, b"\x00" * window)
        peer.flush()
    asyncio.get_running_loop().call_later(0.2, spend_the_window)


def test_data_on_a_call_let_go_of_gives_its_credit_back():
    async def main():
        server, pem, target, _ = await serve(status_then_data)
        channel = Channel(settings(target, pem))
        try:
            with pytest.raises(RpcError, match="without an answer"):
                await channel.unary("/shoal.api.Test/Echo", b"first", timeout=5)
            await asyncio.sleep(1.0)      # the first call's DATA arrives, for a stream the channel forgot
            return await channel.unary("/shoal.api.Test/Echo", b"hello", timeout=5)
        finally:
            await channel.close()
            server.close()
    assert asyncio.run(main()) == b"hello"


FLOOD = [bytes([i]) * 100_000 for i in range(160)]     # 16 MB: four times the channel's window


def flood(peer, stream_id, headers, body):
    """/Flood: FLOOD's messages as fast as the client's credit allows, then OK; anything else: echo."""
    if headers[b":path"] != b"/shoal.api.Test/Flood":
        return echo(peer, stream_id, headers, body)
    peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    framed = memoryview(b"".join(encode_message(m) for m in FLOOD))
    peer.sent, peer.stalled = 0, False

    def pump():
        while peer.sent < len(framed):
            size = min(len(framed) - peer.sent, peer.h2.local_flow_control_window(stream_id),
                       peer.h2.max_outbound_frame_size)
            peer.stalled = size == 0
            if peer.stalled:
                break
            peer.h2.send_data(stream_id, bytes(framed[peer.sent:peer.sent + size]))
            peer.sent += size
        else:
            peer.pump = None
            peer.h2.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
        peer.flush()
    peer.pump = pump
    pump()


def test_a_slow_reader_holds_back_a_flooding_server_and_loses_nothing():
    bound = WINDOW + PREFIX.size + len(FLOOD[0])     # the stream's window of whole messages, and one arriving

    async def main():
        server, pem, target, _ = await serve(flood)
        Peer.transports.clear()
        channel = Channel(settings(target, pem))
        try:
            call = await channel.open_stream("/shoal.api.Test/Flood")
            await call.send(b"", last=True)
            peer = Peer.transports[0].get_protocol()
            stream = call._stream
            # Nothing is read until the server has no credit left and the client holds all it sent (or it
            # sent everything: what a client that gives credit at once lets it do).
            await eventually_async(lambda: hasattr(peer, "sent") and (
                stream.buffered() > bound or peer.pump is None
                or (peer.stalled and stream.buffered() + len(stream.messages) * PREFIX.size == peer.sent)),
                what="the server to stop sending")
            most = stream.buffered()
            assert most <= bound, f"{most} bytes buffered for a reader that did not read"
            # Meanwhile the connection is not held back: another call on it is answered.
            assert await channel.unary("/shoal.api.Test/Echo", b"hello", timeout=5) == b"hello"
            received = []
            while (message := await call.receive()) is not None:
                received.append(message)
                most = max(most, stream.buffered())
                await asyncio.sleep(0.001)
            return most, received
        finally:
            await channel.close()
            server.close()
    most, received = asyncio.run(main())
    assert received == FLOOD
    assert most <= bound, f"{most} bytes buffered for a reader that did not read"


def dialling(test):
    """Runs `test(channel, opening)` against an echo server, just after `opening` (a call's open) began to
    dial: the TLS handshake is not done."""
    async def main():
        server, pem, target, _ = await serve(echo)
        Peer.transports.clear()
        channel = Channel(settings(target, pem))
        try:
            opening = asyncio.ensure_future(channel.open_stream("/shoal.api.Config/Watch"))
            await asyncio.sleep(0)
            return await test(channel, opening)
        finally:
            await channel.close()
            server.close()
    return asyncio.run(main())


def test_a_channel_closed_while_it_dials_keeps_no_connection():
    async def test(channel, opening):
        await channel.close()
        with pytest.raises(RpcError) as info:
            await opening
        assert info.value.code is StatusCode.CANCELLED
        await eventually_async(lambda: Peer.transports and all(t.is_closing() for t in Peer.transports),
                               what="the server's side of the connection to be closed")
    dialling(test)


def test_a_call_after_the_connection_was_lost_dials_again_though_the_first_dial_lost_its_caller():
    async def test(channel, opening):
        opening.cancel()                # its caller's deadline passed while it dialled; the dial goes on
        lost = await eventually_async(lambda: channel._connection, what="the dial to end")
        for transport in Peer.transports:
            transport.close()           # the server goes away
        await eventually_async(lambda: lost.failure is not None, what="the connection to be seen lost")
        return await channel.unary("/shoal.api.Test/Echo", b"hello", timeout=3)
    assert dialling(test) == b"hello"


def against_echo(test):
    """Runs `test(channel, peer)` on a connection to an echo server that answered one call already (so the
    client has the server's SETTINGS), `peer` being the server's side of it."""
    async def main():
        server, pem, target, _ = await serve(echo)
        Peer.transports.clear()
        channel = Channel(settings(target, pem))
        try:
            assert await channel.unary("/shoal.api.Test/Echo", b"warm-up", timeout=5) == b"warm-up"
            return await test(channel, Peer.transports[0].get_protocol())
        finally:
            await channel.close()
            server.close()
    return asyncio.run(main())


def server_settings(peer, **values) -> None:
    peer.h2.update_settings({getattr(SettingCodes, name): value for name, value in values.items()})
    peer.flush()


def test_a_call_past_the_servers_stream_limit_waits_for_a_stream_to_end():
    async def test(channel, peer):
        server_settings(peer, MAX_CONCURRENT_STREAMS=1)
        connection = channel._connection
        await eventually_async(lambda: connection.h2.remote_settings.max_concurrent_streams == 1,
                               what="the client to take the server's stream limit")
        held = await channel.open_stream("/shoal.api.Test/Echo")      # open until cancelled
        second = asyncio.ensure_future(channel.unary("/shoal.api.Test/Echo", b"hello", timeout=10))
        await eventually_async(lambda: second.done() or connection._room_waiters, what="the call to wait")
        assert not second.done(), second
        held.cancel()
        return await second
    assert against_echo(test) == b"hello"


def test_a_send_waits_while_the_server_has_lowered_its_window_below_what_was_sent():
    async def test(channel, peer):
        call = await channel.open_stream("/shoal.api.Test/Echo")
        await call.send(b"first")
        server_settings(peer, INITIAL_WINDOW_SIZE=0)          # the stream's window: 65535 - 10 - 65535 < 0
        connection = channel._connection
        await eventually_async(lambda: connection.h2.remote_settings.initial_window_size == 0,
                               what="the client to take the server's window")
        sending = asyncio.ensure_future(call.send(b"second", last=True))
        await eventually_async(lambda: sending.done() or connection._room_waiters, what="the send to wait")
        assert not sending.done(), sending
        server_settings(peer, INITIAL_WINDOW_SIZE=65_535)     # room again: a SETTINGS, no WINDOW_UPDATE
        await asyncio.wait_for(sending, 10)
        return [await call.receive(), await call.receive(), await call.receive()]
    assert against_echo(test) == [b"first", b"second", None]


# -- the config client keeps its last config --------------------------------------------------

def full_state() -> list[bytes]:
    return [encode_message(config_pb2.WatchResponse(type=str(rtype), version="v1", nonce=str(i), replace=True,
                                                    initial=True).SerializeToString())
            for i, rtype in enumerate(NODE_TYPES)]


connections = {"count": 0}


def watch_then_close(peer, stream_id, headers, body):
    """First connection: the whole (empty) state, then the server goes away. Later ones: broken framing."""
    if body:
        return
    connections["count"] += 1
    if connections["count"] == 1:
        peer.answer(stream_id, b"".join(full_state()), status=None)
        asyncio.get_running_loop().call_later(0.3, peer.transport.close)
    else:
        peer.answer(stream_id, b"\x00\x7f\xff\xff\xff", status=None)


def test_the_config_client_keeps_its_last_config_when_the_server_misbehaves():
    async def main():
        server, pem, target, seen = await serve(watch_then_close)
        client = ConfigClient(ClientSettings(target=target, bundle_pem=pem, token="t", node="node1",
                                             server_name=NAME, backoff_initial=0.05, backoff_max=0.2))
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.synced.wait(), 20)
            versions = {t: client.version(t) for t in NODE_TYPES}
            while connections["count"] < 3:
                await asyncio.sleep(0.05)
            assert client.synced.is_set() and {t: client.version(t) for t in NODE_TYPES} == versions
            assert client.reconnects >= 2 and client.acks == len(NODE_TYPES)
            assert seen[0][b"authorization"] == b"Bearer t"
        finally:
            client.stop()
            await asyncio.wait_for(task, 20)
            server.close()
    asyncio.run(main())


def state_then_quiet(peer, stream_id, headers, body):
    """A Watch answered with the whole (empty) state, then nothing more; the stream stays open."""
    if not body:
        peer.answer(stream_id, b"".join(full_state()), status=None)


def test_a_cancelled_call_gives_no_more_of_what_had_arrived():
    async def main():
        server, pem, target, _ = await serve(state_then_quiet)
        channel = Channel(settings(target, pem))
        try:
            call = await channel.open_stream("/shoal.api.Config/Watch")
            await call.receive()                    # the first of the state's responses; the rest are here too
            await eventually_async(lambda: len(call._stream.messages) == len(NODE_TYPES) - 1,
                                   what="the rest of the state to arrive")
            call.cancel()
            with pytest.raises(RpcError) as info:
                await call.receive()
            return info.value.code
        finally:
            await channel.close()
            server.close()
    assert asyncio.run(main()) is StatusCode.CANCELLED


def test_a_config_client_cancelled_mid_stream_leaves_no_task_behind():
    async def main():
        loop = asyncio.get_running_loop()
        problems = []
        loop.set_exception_handler(lambda _loop, context: problems.append(context["message"]))
        server, pem, target, _ = await serve(state_then_quiet)
        client = ConfigClient(ClientSettings(target=target, bundle_pem=pem, token="t", node="node1",
                                             server_name=NAME))
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.synced.wait(), 20)
            task.cancel()                   # as a proxy shutting down does, while the client waits for more
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually_async(lambda: asyncio.all_tasks() == {asyncio.current_task()},
                                   what="every task of the client to end")
            gc.collect()
            return problems
        finally:
            server.close()
    assert asyncio.run(main()) == []
