"""Fuzz target: the waypoint's HTTP/2 server, `waypoint.h2server.H2Server`, over an in-memory channel.

The server reads a `Channel` (as it does an HBONE stream) and hands each
request to `proxy.exchange`. Here the channel's far side is a stand-in for
the client's stream, and the proxy a stand-in that answers as the real one
may: a local answer (plain or gRPC trailers-only), a streamed response with
trailers, a streamed gRPC request read in part, a reset, no answer at all.

An input is one client connection (`scripts.fuzzing.h2frames`: requests with
bodies, gRPC calls, trailers, window updates, resets, pings, GOAWAY, rapid
resets, fields mutated), cut in random chunks; then the client closes or
resets its stream.

What must hold:
- nothing escapes `run()`, no request task fails with anything but a
  `WaypointError`, asyncio reports no error, and `run()` returns once the
  client is gone, with every request task ended and the channel ended;
- bounds: stream records <= the concurrent streams h2 allows, h2's own
  stream records too, a request body waiting for the endpoint <= one
  stream window (the server returns credit only as the body is read), and a
  response outbox <= its low-water mark plus one write.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
from h2.connection import ConnectionState

from waypoint import h2server
from waypoint.channel import Channel, ChannelReset
from waypoint.errors import WaypointError
from waypoint.routing import Peer

from scripts.fuzzing import Broken, RecordingSide, Unbounded, event_loop, measure_growth, settle
from scripts.fuzzing.generate import chance, chunked, mutate_pieces, size
from scripts.fuzzing.h2frames import Conversation, noise, odd_text, preface

NAME = "h2"
EXPECTED = (WaypointError,)
LARGEST_WRITE = 70000   # the largest response piece the stand-in proxy writes at once

PATHS = ("/", "/productpage", "/reviews/1?x=%20", "/grpc.health.v1.Health/Check", "*", "", "/" + "a" * 5000)


def request(talk: Conversation) -> list:
    rng = talk.rng
    grpc = chance(rng, 0.3)
    method = "POST" if grpc else rng.choice(("GET", "GET", "POST", "PUT", "HEAD", "DELETE"))
    path = rng.choice(PATHS if talk.odd(0.3) else PATHS[:4])
    if talk.odd(0.1):
        path = odd_text(rng, path)
    headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "reviews.demo:9080")]
    if grpc:
        headers += [("content-type", "application/grpc"), ("te", "trailers")]
    if chance(rng, 0.2):
        headers.append(("content-length", str(rng.randrange(0, 1000))))
    if chance(rng, 0.2):
        headers.append(("x-request-id", "fuzz"))
    return headers


class StandInProxy:
    """Answers each request as the waypoint's Proxy might, at random; remembers every task it ran in."""

    def __init__(self, rng) -> None:
        self.rng = rng
        self.draining = False
        self.tasks: list[asyncio.Task] = []

    async def exchange(self, request, peer, responder, source_address) -> None:
        self.tasks.append(asyncio.current_task())
        rng = self.rng
        roll = rng.random()
        if request.stream is not None and chance(rng, 0.6):
            try:
                for _ in range(rng.randrange(4)):
                    if not await request.stream.read():
                        break
            except ChannelReset:
                return
        if roll < 0.3:
            responder.local(rng.choice((403, 404, 503)), "refused\nby policy")
            return
        if roll < 0.75:
            responder.head(200, "OK", [("x-answer", "1"), ("connection", "close")],
                           rng.choice((None, 0, 10)), end=chance(rng, 0.1))
            try:
                for _ in range(rng.randrange(4)):
                    await responder.data(rng.randbytes(rng.choice((1, 100, 20000, LARGEST_WRITE))))
            except WaypointError:
                return
            responder.end(rng.choice(((), (("grpc-status", "0"),))))
            return
        if roll < 0.85:
            responder.reset()
            return
        if roll < 0.95:
            await asyncio.Event().wait()    # an endpoint that never answers: cancelled when the client goes
        raise ChannelReset("the endpoint reset the connection")   # a WaypointError, as the real proxy's may be


def check_bounds(server: h2server.H2Server) -> None:
    conn = server.conn
    limit = conn.local_settings.max_concurrent_streams
    if len(server.streams) > limit:
        raise Unbounded(f"{len(server.streams)} stream records, more than the {limit} concurrent streams allowed")
    if len(conn.streams) > limit + 1:
        raise Unbounded(f"h2 holds {len(conn.streams)} stream records for at most {limit} concurrent streams")
    # (the server's SETTINGS may not be acknowledged yet: the client may already use the window they set)
    window = max(65535, conn.local_settings.initial_window_size, h2server.STREAM_WINDOW)
    for stream in server.streams.values():
        if stream.body_stream is not None:
            waiting = stream.body_stream.waiting
            if waiting > window:
                raise Unbounded(f"stream {stream.stream_id} holds {waiting} bytes of request body for the "
                                f"endpoint, more than a stream window ({window})")
        if len(stream.outbox) > h2server.OUTBOX_LOW + LARGEST_WRITE:
            raise Unbounded(f"stream {stream.stream_id} has an outbox of {len(stream.outbox)} bytes")


async def _serve(rng) -> str:
    loop = asyncio.get_running_loop()
    failures: list = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    talk = Conversation(rng, request, end_on_headers=0.4, max_frame=16384, max_streams=100, noise=noise(rng))
    frames = talk.frames(1 + size(rng, 10, 100))
    talk.mutate_fields(frames)
    pieces = [frame.encode() for frame in frames]
    if talk.odd(0.2):
        pieces = mutate_pieces(rng, pieces, lambda r: b"".join(f.encode() for f in talk.frame()), flood=500)
    data = preface(talk) + b"".join(pieces)

    side, proxy = RecordingSide(), StandInProxy(rng)
    channel = Channel(side)
    server = h2server.H2Server(proxy, channel, Peer("198.19.1.5", None, ("198.18.16.3", 9080)),
                               ("198.19.1.5", 40000))
    run = loop.create_task(server.run())
    try:
        for chunk in chunked(rng, data):
            channel.write(chunk)
            for _ in range(rng.randrange(1, 4)):
                await asyncio.sleep(0)
            if chance(rng, 0.02):
                server.proxy.draining = True
            check_bounds(server)
            if run.done():
                break
        if chance(rng, 0.8):
            channel.write_eof()
        else:
            channel.abort()
        for _ in range(200):
            if run.done():
                break
            await asyncio.sleep(0)
        else:
            raise Broken("H2Server.run() did not return after the client's stream ended")
        run.result()   # anything it raised goes up
        for task in proxy.tasks:
            if not task.done():
                raise Broken("a request task is still running after run() returned")
            if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), EXPECTED):
                raise task.exception()
        if failures:
            context = failures[0]
            raise context.get("exception") or Broken(context.get("message", "asyncio reported an error"))
        if not side.ended and not channel.was_reset:
            raise Broken("run() returned without ending the client's channel")
    finally:
        await settle([run, *proxy.tasks])   # an input cut short (a failure, Hypothesis stopping it) leaves nothing
    return "refused" if server.conn.state_machine.state is ConnectionState.CLOSED else "accepted"


def run_one(rng) -> str:
    return event_loop().run_until_complete(_serve(rng))


# --- soak: one connection, many requests ----------------------------------------------------

def soak(cycles: int) -> dict:
    """`cycles` requests, one after the other, on one client connection (plain and gRPC, answered locally or
    streamed, some reset by the client); returns the memory the second half left behind. h2 remembers up
    to 2**16 closed stream ids per connection; the cap is lowered to a quarter of the cycles here, so
    that the first half reaches that steady state."""
    loop = event_loop()

    class Answering:
        draining = False

        async def exchange(self, request, peer, responder, source_address) -> None:
            if request.stream is not None:
                while await request.stream.read():
                    pass
            if request.head.target.endswith("0"):
                responder.local(404, "no route")
            else:
                responder.head(200, "OK", [("x", "1")], None)
                await responder.data(b"answer" * 100)
                responder.end((("grpc-status", "0"),) if request.stream is not None else ())

    side = RecordingSide()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    state: dict = {}

    async def setup() -> None:
        state["channel"] = channel = Channel(side)
        state["server"] = server = h2server.H2Server(Answering(), channel, Peer("198.19.1.5", None, ("198.18.16.3", 80)),
                                                     ("198.19.1.5", 40000))
        server.conn._closed_streams._size_limit = max(16, cycles // 4)
        client._closed_streams._size_limit = max(16, cycles // 4)
        state["run"] = asyncio.get_running_loop().create_task(server.run())
        side.write = read   # the client reads what the server writes

    def read(data) -> None:
        for event in client.receive_data(bytes(data)):
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    async def exchange(n: int) -> None:
        sid = client.get_next_available_stream_id()
        grpc = n % 3 == 0
        headers = [(":method", "POST"), (":scheme", "http"), (":path", f"/svc/{n}"), (":authority", "r:80")]
        if grpc:
            headers += [("content-type", "application/grpc"), ("te", "trailers")]
        client.send_headers(sid, headers)
        client.send_data(sid, b"body" * (n % 50), end_stream=n % 11 != 0)
        if n % 11 == 0:
            client.reset_stream(sid)
        for _ in range(6):
            out = client.data_to_send()
            if out:
                state["channel"].write(out)
            await asyncio.sleep(0)

    loop.run_until_complete(setup())
    result = measure_growth(lambda n: loop.run_until_complete(exchange(n)), cycles,
                            lambda: {"streams": len(state["server"].streams),
                                     "h2_streams": len(state["server"].conn.streams)})
    state["channel"].write_eof()
    loop.run_until_complete(state["run"])
    return result
