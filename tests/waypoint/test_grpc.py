"""gRPC and HTTP/2 through the waypoint: a real grpcio client and server, HBONE in between.

The client is grpcio over plain TCP into a loopback stand-in for its ztunnel
(one HBONE CONNECT per connection, with the client's certificate); the
server is a grpcio server on loopback behind the service `greeter`, port
9090 declared `grpc`.
"""

import asyncio
from contextlib import asynccontextmanager

import grpc
import pytest

from shoal.model import Destination, Endpoint, Protocol, RetryPolicy, Route, Service, ServicePort, Waypoint

from shoal.proxy_state import ProxyState

from support.ca import TestCA
from support.polling import eventually_async
from wp_harness import Client, Forwarder, Waypoint as WaypointUnderTest
from wp_model import NS, policy, table, workload

GRPC_IP, VIP = "127.0.0.15", "198.18.16.30"
HOST = f"greeter.{NS}.svc.cluster.local"


class Greeter:
    def __init__(self, unavailable_first: int = 0) -> None:
        self.calls = 0
        self.streaming = False
        self.unavailable_first = unavailable_first

    def handler(self):
        async def say(request: bytes, context) -> bytes:
            self.calls += 1
            if self.calls <= self.unavailable_first:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            meta = dict(context.invocation_metadata())
            return b"hello " + request + b" id=" + meta.get("x-request-id", "none").encode()[:4]

        async def count(request: bytes, context):
            for i in range(int(request)):
                yield str(i).encode() * 1000   # 10 x ~1 KB messages, streamed back

        async def total(requests, context) -> bytes:
            size = 0
            async for message in requests:
                size += len(message)
            return str(size).encode()

        async def echo(requests, context):
            async for message in requests:
                yield b"echo " + message

        async def big(request: bytes, context) -> bytes:
            return bytes(range(256)) * (int(request) // 256)

        async def forever(request: bytes, context):
            self.streaming = True
            try:
                i = 0
                while True:
                    yield str(i).encode()
                    i += 1
                    await asyncio.sleep(0.01)
            finally:
                self.streaming = False      # the call ended: grpc cancelled it

        return grpc.method_handlers_generic_handler("test.Greeter", {
            "Big": grpc.unary_unary_rpc_method_handler(big),
            "Forever": grpc.unary_stream_rpc_method_handler(forever),
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
        })


async def grpc_server(greeter: Greeter, port: int = 0):
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((greeter.handler(),))
    port = server.add_insecure_port(f"{GRPC_IP}:{port}")
    await server.start()
    return server, port


@asynccontextmanager
async def serving(greeter: Greeter, *routing):
    """`greeter` behind a waypoint for the body: yields the waypoint and a gRPC channel to it (through an
    HBONE client, as a meshed pod's ztunnel would carry the calls), all closed after the body."""
    server, port = await grpc_server(greeter)
    ca = TestCA()
    pod = workload("greeter", GRPC_IP, "v1", protocol=Protocol.TCP, app="greeter")
    state = ProxyState(waypoint=(NS, "waypoint"))
    for item in (pod, Waypoint("waypoint", NS, "waypoint"),
                 Service(name="greeter", namespace=NS, hostname=HOST, vips=(VIP,),
                         ports=(ServicePort(9090, "grpc", app_protocol="grpc"),),
                         endpoints=(Endpoint(pod.uid, 9090, port),)), *routing):
        state.upsert(item)
    wp = WaypointUnderTest(ca, state, hbone_port=1)
    await wp.start()
    client = Client(ca, f"spiffe://cluster.local/ns/{NS}/sa/client")
    await client.open("127.0.0.1", wp.listener.port)
    forwarder = Forwarder(client, f"{VIP}:9090")
    await forwarder.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{forwarder.port}", options=[
        ("grpc.default_authority", "greeter:9090"), ("grpc.enable_retries", 0)])
    wp.grpc_port = port
    wp.grpc_server = server
    try:
        yield wp, channel
    finally:
        await channel.close()
        forwarder.close()
        client.close()
        await wp.close()
        await wp.grpc_server.stop(None)   # the current one (a test may have restarted it)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_unary_and_server_streaming_calls_pass_with_telemetry():
    async def main():
        async with serving(Greeter()) as (wp, channel):
            reply = await channel.unary_unary("/test.Greeter/Say")(b"bob", timeout=5)
            assert reply.startswith(b"hello bob id=") and not reply.endswith(b"none")   # the waypoint added an id
            chunks = [m async for m in channel.unary_stream("/test.Greeter/Count")(b"10", timeout=5)]
            assert len(chunks) == 10 and chunks[3] == b"3" * 1000
            assert wp.count(request_protocol="grpc", response_code="200", grpc_response_status="0",
                            destination_service=HOST) == 2
    run(main())


def test_retry_on_unavailable_then_success():
    route = Route(retry=RetryPolicy(2, retry_on=("unavailable",)), destinations=(Destination(HOST),))

    async def main():
        greeter = Greeter(unavailable_first=1)
        async with serving(greeter, table(route, host=HOST, port=9090)) as (wp, channel):
            assert (await channel.unary_unary("/test.Greeter/Say")(b"x", timeout=5)).startswith(b"hello x")
            assert greeter.calls == 2
    run(main())


def test_policy_denial_is_a_grpc_permission_denied():
    async def main():
        greeter = Greeter()
        no_say = policy("no-say", "DENY", paths=("/test.Greeter/Say",), target="greeter")
        async with serving(greeter, no_say) as (wp, channel):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Greeter/Say")(b"x", timeout=5)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details() == "RBAC: access denied"   # the policy is named in the access log only
            assert greeter.calls == 0
            chunks = [m async for m in channel.unary_stream("/test.Greeter/Count")(b"2", timeout=5)]
            assert len(chunks) == 2
    run(main())


def test_calls_share_one_upstream_connection_and_survive_an_endpoint_restart():
    async def main():
        greeter = Greeter()
        async with serving(greeter) as (wp, channel):
            say = channel.unary_unary("/test.Greeter/Say")
            replies = await asyncio.gather(*(say(f"n{i}".encode(), timeout=5) for i in range(20)))
            assert all(r.startswith(b"hello n") for r in replies) and greeter.calls == 20
            assert wp.proxy.h2_pool.opened == 1          # 20 calls, one multiplexed connection to the endpoint
            await wp.grpc_server.stop(None)               # the endpoint restarts on the same address
            server, _ = await grpc_server(greeter, wp.grpc_port)
            wp.grpc_server = server
            assert (await say(b"again", timeout=5)).startswith(b"hello again")
            assert wp.proxy.h2_pool.opened == 2
    run(main())


def test_client_streaming_and_bidirectional_calls_stream_through():
    async def main():
        async with serving(Greeter()) as (wp, channel):
            async def messages():
                for _ in range(50):
                    yield b"x" * 4000          # 200 kB in all: more than one flow-control window
            assert await channel.stream_unary("/test.Greeter/Total")(messages(), timeout=10) == b"200000"
            # Bidirectional, in lock step: each reply comes before the next message is sent, which only
            # works if the waypoint forwards messages as they arrive.
            call = channel.stream_stream("/test.Greeter/Echo")(timeout=10)
            for word in (b"one", b"two", b"three"):
                await call.write(word)
                assert await asyncio.wait_for(call.read(), 5) == b"echo " + word
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK
    run(main())


def test_large_messages_cross_both_flow_controlled_legs_and_a_cancel_reaches_the_server():
    async def main():
        greeter = Greeter()
        async with serving(greeter) as (wp, channel):
            size = 3 * 1024 * 1024      # many HTTP/2 windows on each side of the waypoint
            reply = await channel.unary_unary("/test.Greeter/Big")(str(size).encode(), timeout=20)
            assert len(reply) == size and reply[:256] == bytes(range(256))
            call = channel.unary_stream("/test.Greeter/Forever")(b"", timeout=20)
            assert await call.read() == b"0" and await call.read() == b"1"
            assert greeter.streaming
            call.cancel()
            # The client's RST_STREAM travels through the waypoint and ends the server's stream.
            await eventually_async(lambda: not greeter.streaming, 4, "the server's stream to be cancelled",
                                   interval=0.02)
    run(main())
