"""Config.Watch over gRPC: the thin asyncio driver around `Subscription`.

Per stream: authenticate the bearer token, read the Subscribe, check the
caller may watch that scope, then run two loops. The reader feeds acks to the
subscription; the writer waits for a wake-up (a state change or an ack) and
writes whatever `next_response()` returns. The state's listener only sets
each stream's wake-up event, so the producer never waits for a subscriber and
a slow subscriber (whose writes block on HTTP/2 flow control) delays no one
but itself.

Responses are pre-serialized bytes (see `control_plane.state`), so the method
is registered with a pass-through response serializer; clients see an
ordinary `WatchResponse`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from control_plane import authz
from control_plane.authn import AuthenticationFailed, AuthenticationUnavailable, Caller, GuardedAuthenticator
from control_plane.metrics import Metrics
from control_plane.state import ConfigState
from control_plane.subscription import AckOutcome, Scope, Subscription
from shoal import log, tokens
from shoal.api import config_pb2

logger = log.get("shoal.control_plane.watch")

SUBSCRIBE_TIMEOUT = 10.0
SERVICE = "shoal.api.Config"


@dataclass(eq=False)
class Stream:
    """One open Watch stream, for the dashboard and the wake-ups."""
    caller: Caller
    scope: Scope
    peer: str
    subscription: Subscription
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    opened: float = field(default_factory=time.time)
    nacks: int = 0


class WatchService:
    def __init__(self, state: ConfigState, authenticator: GuardedAuthenticator, metrics: Metrics,
                 ready: asyncio.Event, root_namespace: str = "istio-system") -> None:
        self.state = state
        self.authenticator = authenticator
        self.metrics = metrics
        self.ready = ready  # set once the config source has delivered its first full list
        self.root_namespace = root_namespace
        self.streams: set[Stream] = set()
        state.listeners.append(self._on_change)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Watch": grpc.stream_stream_rpc_method_handler(
                self.watch, request_deserializer=config_pb2.WatchRequest.FromString,
                response_serializer=lambda payload: payload),
        })

    def _on_change(self, changed) -> None:
        for stream in self.streams:
            stream.wake.set()

    async def watch(self, requests, context: grpc.aio.ServicerContext):
        try:
            caller = await self.authenticator.authenticate(tokens.bearer(context.invocation_metadata()))
        except AuthenticationUnavailable as e:
            logger.warning("watch refused for now", peer=context.peer(), reason=str(e))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except AuthenticationFailed as e:
            self.metrics.auth_failures.labels("Watch").inc()
            logger.warning("watch refused", peer=context.peer(), reason=str(e))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        scope, held = await self._read_subscribe(requests, context)
        reason = authz.may_watch(caller, scope)
        if reason:
            logger.warning("watch refused", peer=context.peer(), reason=reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        await self.ready.wait()
        stream = Stream(caller, scope, context.peer(), Subscription.start(scope, self.state, held))
        stream.wake.set()  # the initial responses
        kind = "waypoint" if scope.is_waypoint else "ztunnel"
        self.streams.add(stream)
        self.metrics.connected.labels(kind).inc()
        logger.info("proxy connected", scope=scope.describe(), peer=stream.peer,
                    resumed={t: bool(h.version or h.resources) for t, h in held.items()} or None)
        reader = asyncio.ensure_future(self._read_acks(requests, stream))
        try:
            await self._write(stream, context, reader)
        finally:
            reader.cancel()
            self.streams.discard(stream)
            self.metrics.connected.labels(kind).dec()
            logger.info("proxy disconnected", scope=scope.describe(), peer=stream.peer)

    async def _read_subscribe(self, requests, context) -> tuple[Scope, dict]:
        try:
            first = await asyncio.wait_for(requests.__anext__(), SUBSCRIBE_TIMEOUT)
        except (StopAsyncIteration, asyncio.TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"send a Subscribe as the first message, within {SUBSCRIBE_TIMEOUT:.0f}s")
        if first.WhichOneof("request") != "subscribe":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a Watch must be a Subscribe")
        sub = first.subscribe
        which = sub.WhichOneof("scope")
        if which == "node" and sub.node:
            scope = Scope(node=sub.node, root_namespace=self.root_namespace)
        elif which == "waypoint" and sub.waypoint.namespace:
            scope = Scope(waypoint_namespace=sub.waypoint.namespace, waypoint_name=sub.waypoint.name,
                          root_namespace=self.root_namespace)
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "Subscribe must name a node (ztunnel) or a waypoint namespace")
        return scope, dict(sub.held)

    async def _read_acks(self, requests, stream: Stream) -> None:
        async for request in requests:
            if request.WhichOneof("request") != "ack":
                logger.warning("ignoring a second Subscribe on one stream", scope=stream.scope.describe())
                continue
            ack = request.ack
            outcome = stream.subscription.on_ack(ack)
            if outcome is AckOutcome.NACKED:
                stream.nacks += 1
                self.metrics.nacks.labels(ack.type).inc()
                logger.warning("proxy refused config (NACK); it keeps its previous version",
                               scope=stream.scope.describe(), type=ack.type, error=ack.error[:500])
            stream.wake.set()

    async def _write(self, stream: Stream, context, reader: asyncio.Future) -> None:
        sub = stream.subscription
        # One wake-up event serves both causes (a change or an ack, and the client closing),
        # so a push costs no task or wait-set of its own.
        reader.add_done_callback(lambda _: stream.wake.set())
        while True:
            await stream.wake.wait()
            if reader.done():
                break  # the client closed its side
            stream.wake.clear()
            while (out := sub.next_response()) is not None:
                await context.write(out.payload)
                self.metrics.pushes.labels(str(out.type)).inc()
                if out.first_change_at is not None:
                    self.metrics.push_latency.labels(str(out.type)).observe(time.perf_counter() - out.first_change_at)
        if not reader.cancelled() and reader.exception() is not None:
            logger.info("watch stream ended", scope=stream.scope.describe(), error=str(reader.exception()))
