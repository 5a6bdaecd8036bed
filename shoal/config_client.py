"""The proxies' client of the control plane: Config.Watch and Certificates.Sign.

Used by the ztunnel and the waypoint; it imports no component.

    settings = ClientSettings(target="198.18.0.1:15012", bundle_pem=..., token=lambda: read_token(path),
                              node="node1")
    client = ConfigClient(settings, on_update=state.apply_update)
    task = asyncio.create_task(client.run())
    await client.synced.wait()          # every type of the scope received once

`on_update(update)` gets an `Update` of model dataclasses (never protobuf).
If it raises, the response is NACKed with the exception's message and the
client's cache keeps the previous version of that type; otherwise the update
is applied to the cache and ACKed.

Token and bundle may be given as functions; they are called again on every
(re)connection, so a rotated token file or trust bundle is picked up.

On a lost stream the client reconnects with exponential backoff (with
jitter) and resumes: its Subscribe carries, per type, the version and the
per-resource versions it holds, so the server sends only what differs. While
the server is away the client keeps its last config (`resources()`).

`SignClient(settings).sign(key, identity)` is the one client of
`Certificates.Sign`: it keeps one channel, opened again when the trust
bundle changed, and returns a `shoal.identity.Credential`.
`request_certificate(settings, key, identity)` is a one-off signing.

Both calls go over `shoal.grpc_channel` (gRPC over the h2 library), not
grpcio: a proxy process does not load grpcio (about 14 MiB resident).
`open_channel` still gives a grpcio channel with the same options, for
what uses the generated stubs: the hundred raw subscribers of
`bench/config_push.py` and a few control-plane tests. It imports grpcio
when called.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from google.protobuf.message import DecodeError

from shoal import identity, log, tokens
from shoal.api import ca_pb2, config_pb2, convert
from shoal.errors import ShoalError
from shoal.grpc_channel import Channel, ChannelSettings
from shoal.grpc_wire import RpcError, StatusCode
from shoal.model import ResourceType

logger = log.get("shoal.config_client")

CONTROL_PLANE_NAME = "shoal-control-plane.shoal-system.svc"
WATCH = "/shoal.api.Config/Watch"
SIGN = "/shoal.api.Certificates/Sign"

# What each kind of subscriber receives (the server scopes by the same tuples).
NODE_TYPES = (ResourceType.SERVICE, ResourceType.WORKLOAD, ResourceType.WAYPOINT,
              ResourceType.AUTHORIZATION, ResourceType.PEER_AUTHENTICATION)
WAYPOINT_TYPES = (ResourceType.SERVICE, ResourceType.WORKLOAD, ResourceType.WAYPOINT,
                  ResourceType.AUTHORIZATION, ResourceType.ROUTE_TABLE, ResourceType.TLS_CREDENTIAL)


class ConfigClientError(ShoalError):
    """A control-plane call failed; the message says what to check."""

    response_flag = "UAEX"


@dataclass(frozen=True)
class ClientSettings:
    target: str                              # host:port of the control plane's gRPC
    bundle_pem: bytes | Callable[[], bytes]  # the mesh trust bundle (or a function that reads it: roots rotate)
    token: str | Callable[[], str]           # bearer token, or a function that reads it (files rotate)
    node: str = ""                           # a ztunnel: its node
    waypoint_namespace: str = ""             # a waypoint: its namespace and name
    waypoint_name: str = ""
    server_name: str = CONTROL_PLANE_NAME
    backoff_initial: float = 0.2
    backoff_max: float = 15.0
    call_timeout: float = 10.0
    keepalive_time: float = 20.0             # a PING this often on an open connection...
    keepalive_timeout: float = 10.0          # ...answered within this, or the connection is dropped

    def current_token(self) -> str:
        return self.token() if callable(self.token) else self.token

    def current_bundle(self) -> bytes:
        return self.bundle_pem() if callable(self.bundle_pem) else self.bundle_pem


def channel_settings(settings: ClientSettings) -> ChannelSettings:
    return ChannelSettings(target=settings.target, server_name=settings.server_name,
                           bundle_pem=settings.current_bundle(), keepalive_time=settings.keepalive_time,
                           keepalive_timeout=settings.keepalive_timeout)


def open_channel(settings: ClientSettings) -> "grpc.aio.Channel":
    """A grpcio channel to the control plane (for tools and tests; the proxies use `channel_settings`)."""
    import grpc   # noqa: PLC0415 - grpcio stays out of the proxies (see the module's docstring)

    credentials = grpc.ssl_channel_credentials(root_certificates=settings.current_bundle())
    return grpc.aio.secure_channel(settings.target, credentials, options=[
        ("grpc.ssl_target_name_override", settings.server_name),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        # gRPC shares subchannels between channels to one target, with their reconnect backoff (up to
        # 120 s): a control plane that came back would stay "refused" for that long. Each channel gets
        # its own, and our own backoff (ConfigClient.run) paces the retries.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ])


@dataclass(frozen=True)
class Update:
    """One accepted response, as model objects."""
    type: ResourceType
    version: str
    upserted: Mapping[str, Any]        # key -> resource added or changed
    removed: frozenset[str]            # keys gone
    replace: bool = False              # upserted is the whole set of the type
    initial: bool = False              # the first response of this type on this stream


@dataclass
class _Held:
    version: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


class ConfigClient:
    def __init__(self, settings: ClientSettings, on_update: Callable[[Update], None] | None = None) -> None:
        if bool(settings.node) == bool(settings.waypoint_namespace):
            raise ConfigClientError("ClientSettings needs exactly one of node (ztunnel) or waypoint_namespace")
        self.settings = settings
        self.on_update = on_update or (lambda update: None)
        self._held: dict[ResourceType, _Held] = {}
        self.synced = asyncio.Event()       # set once every type of the scope arrived; stays set
        self.connected = asyncio.Event()    # set while a stream is open
        self.acks = 0
        self.nacks = 0
        self.reconnects = 0
        self._stopping = asyncio.Event()

    # -- what the proxy reads ----------------------------------------------------------

    def resources(self, rtype: ResourceType) -> Mapping[str, Any]:
        return MappingProxyType(self._held.get(rtype, _Held()).resources)

    def version(self, rtype: ResourceType) -> str:
        return self._held.get(rtype, _Held()).version

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        backoff = self.settings.backoff_initial
        while not self._stopping.is_set():
            received = False
            try:
                received = await self._session()
            except RpcError as e:
                level = logger.error if e.code in (StatusCode.UNAUTHENTICATED,
                                                   StatusCode.PERMISSION_DENIED) else logger.warning
                level("config stream lost; keeping the last config", target=self.settings.target,
                      code=e.code.name, details=e.details)
            except ConfigClientError as e:
                logger.warning("config stream lost; keeping the last config", error=str(e))
            except Exception as e:  # noqa: BLE001 - a token file being rewritten, a bad bundle...: retry
                logger.warning("cannot open the config stream; retrying", target=self.settings.target,
                               error=f"{type(e).__name__}: {e}")
            finally:
                self.connected.clear()
            if self._stopping.is_set():
                return
            if received:
                backoff = self.settings.backoff_initial
            delay = backoff * random.uniform(0.5, 1.0)
            backoff = min(backoff * 2, self.settings.backoff_max)
            self.reconnects += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _subscribe(self) -> config_pb2.WatchRequest:
        s = self.settings
        sub = config_pb2.Subscribe()
        if s.node:
            sub.node = s.node
        else:
            sub.waypoint.namespace, sub.waypoint.name = s.waypoint_namespace, s.waypoint_name
        for rtype, held in self._held.items():
            entry = sub.held[str(rtype)]
            entry.version = held.version
            entry.resources.update(held.versions)
        return config_pb2.WatchRequest(subscribe=sub)

    async def _session(self) -> bool:
        """One stream, until it ends; True if anything was received."""
        received = False
        token = self.settings.current_token()
        async with Channel(channel_settings(self.settings)) as channel:
            call = await channel.open_stream(WATCH, tokens.metadata(token))
            stop_waiter = asyncio.ensure_future(self._stopping.wait())
            nxt: asyncio.Future | None = None
            try:
                await call.send(self._subscribe().SerializeToString())
                while True:
                    nxt = asyncio.ensure_future(call.receive())
                    done, _ = await asyncio.wait({nxt, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        call.cancel()
                        return received
                    payload = nxt.result()
                    if payload is None:
                        raise ConfigClientError("the control plane closed the stream")
                    try:
                        response = config_pb2.WatchResponse.FromString(payload)
                    except DecodeError as e:
                        call.cancel()
                        raise RpcError(StatusCode.INTERNAL, f"a Watch response that is not a WatchResponse: "
                                       f"{e}") from None
                    if not received:
                        self.connected.set()
                        logger.info("config stream open", target=self.settings.target)
                    received = True
                    await call.send(config_pb2.WatchRequest(ack=self._handle(response)).SerializeToString())
            finally:
                # Cancelled while waiting (a proxy shutting down), the receive would end with the closed
                # channel's error, which nobody would read.
                stop_waiter.cancel()
                if nxt is not None:
                    nxt.cancel()
                    if nxt.done() and not nxt.cancelled():
                        nxt.exception()     # it ended first: its error is read, not reported as lost

    # -- one response -------------------------------------------------------------------

    def _handle(self, response: config_pb2.WatchResponse) -> config_pb2.Ack:
        ack = config_pb2.Ack(type=response.type, nonce=response.nonce)
        try:
            rtype = ResourceType(response.type)
            upserted: dict[str, Any] = {}
            versions: dict[str, str] = {}
            for envelope in response.resources:
                got_type, resource = convert.from_resource(envelope)
                if got_type is not rtype:
                    raise convert.ConversionError(f"a {got_type} in a {rtype} response")
                upserted[envelope.key] = resource
                versions[envelope.key] = envelope.version
            update = Update(rtype, response.version, MappingProxyType(upserted), frozenset(response.removed),
                            response.replace, response.initial)
            self.on_update(update)
        except Exception as e:  # noqa: BLE001 - any refusal by the proxy becomes a NACK
            ack.error = f"{type(e).__name__}: {e}" or "refused"
            self.nacks += 1
            logger.warning("refused a config update (NACK); keeping the previous version", type=response.type,
                           version=response.version, error=ack.error)
            return ack
        self._apply(update, versions)
        self.acks += 1
        return ack

    def _apply(self, update: Update, versions: dict[str, str]) -> None:
        held = self._held.setdefault(update.type, _Held())
        if update.replace:
            held.resources, held.versions = {}, {}
        for key in update.removed:
            held.resources.pop(key, None)
            held.versions.pop(key, None)
        held.resources.update(update.upserted)
        held.versions.update(versions)
        held.version = update.version
        if not self.synced.is_set() and self._scope_types() <= set(self._held):
            self.synced.set()

    def _scope_types(self) -> set[ResourceType]:
        return set(NODE_TYPES if self.settings.node else WAYPOINT_TYPES)


# -- certificates ------------------------------------------------------------------------

class SignClient:
    """`Certificates.Sign` on one channel, opened again when the trust bundle changes (roots rotate)."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._channel: Channel | None = None
        self._bundle: bytes | None = None

    def _current_channel(self) -> Channel:
        bundle = self.settings.current_bundle()
        if self._channel is None or bundle != self._bundle:
            if self._channel is not None:
                asyncio.ensure_future(self._channel.close())
            self._channel = Channel(channel_settings(self.settings))
            self._bundle = bundle
        return self._channel

    async def sign(self, key, who: identity.SpiffeId, ttl: dt.timedelta | None = None) -> identity.Credential:
        """Signs a CSR for `who` with `key` (shoal.identity.new_workload_key() in the proxies); raises
        ConfigClientError, or an IdentityError when the CA answers with a certificate for someone else."""
        request = ca_pb2.SignRequest(csr=identity.make_csr(key, who).decode(), identity=str(who),
                                     ttl_seconds=int(ttl.total_seconds()) if ttl else 0)
        try:
            answer = await self._current_channel().unary(
                SIGN, request.SerializeToString(), tokens.metadata(self.settings.current_token()),
                timeout=self.settings.call_timeout)
            response = ca_pb2.SignResponse.FromString(answer)
        except DecodeError as e:
            raise ConfigClientError(f"certificate for {who}: {self.settings.target} answered something that is "
                                    f"not a SignResponse: {e}") from None
        except RpcError as e:
            if e.code is StatusCode.UNAVAILABLE:
                await self.close()           # the next call opens a fresh channel, not one in backoff
            raise ConfigClientError(f"certificate for {who} refused by {self.settings.target}: "
                                    f"{e.code.name}: {e.details}") from None
        credential = identity.Credential.from_pem(identity.key_pem(key), response.chain.encode(),
                                                  response.bundle.encode())
        if credential.identity != who:
            raise identity.InvalidCertificate(f"the CA returned a certificate for {credential.identity}, not {who}")
        return credential

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


async def request_certificate(settings: ClientSettings, key, who: identity.SpiffeId,
                              ttl: dt.timedelta | None = None) -> identity.Credential:
    """One signing on a channel of its own (see SignClient)."""
    client = SignClient(settings)
    try:
        return await client.sign(key, who, ttl)
    finally:
        await client.close()
