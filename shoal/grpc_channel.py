"""A gRPC client channel on the running asyncio loop: HTTP/2 (the h2 library) over TLS.

The proxies' one use of gRPC is their client of the control plane
(`shoal.config_client`): the `Config.Watch` stream and the unary
`Certificates.Sign`. grpcio would cost each proxy process about 14 MiB
(its core, BoringSSL and abseil) for those two calls; this channel speaks
the same wire format (`shoal.grpc_wire`) with the h2 and ssl every proxy
loads anyway. The control plane's server stays grpcio.

    channel = Channel(ChannelSettings(target="198.18.0.1:15012", server_name=..., bundle_pem=...))
    answer = await channel.unary("/shoal.api.Certificates/Sign", request_bytes, metadata, timeout=10)
    call = await channel.open_stream("/shoal.api.Config/Watch", metadata)
    await call.send(message_bytes); message = await call.receive()   # None: ended with OK
    await channel.close()

One TLS connection (ALPN h2, the server's certificate checked for
`server_name` against the bundle) carries every call; it is opened on the
first call and again after it is lost. A failed attempt is followed by a
backoff (200 ms, times 1.6, up to 5 s) during which calls fail at once
with UNAVAILABLE, as a grpcio channel in "transient failure" does. A
keepalive PING goes out every `keepalive_time` seconds while a call is open; one not answered
within `keepalive_timeout` ends the connection and its calls (UNAVAILABLE).
Every failure is an `RpcError` with the status code a grpcio client would
have given.

Received messages are held back by flow control, not buffered without end:
the connection's credit goes back to the server as DATA arrives, a stream's
only as its caller reads the messages (`Call.receive`). So a call whose
caller reads slowly has at most its stream window (`WINDOW`) of whole
messages waiting, plus the one message being received, itself at most
`max_receive_message`; the server waits for credit, and other calls on the
connection go on. Sending likewise waits for the server's credit, and a call
past the server's SETTINGS_MAX_CONCURRENT_STREAMS waits for a stream to end.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, PingAckReceived, RemoteSettingsChanged,
                       ResponseReceived, StreamEnded, StreamReset, TrailersReceived, WindowUpdated)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from shoal.grpc_wire import (PREFIX, MessageReader, RpcError, StatusCode, check_response_headers, encode_message,
                             request_headers, status_of)

WINDOW = 4 * 1024 * 1024     # what the server may send ahead, per stream and per connection
CREDIT_BATCH = WINDOW // 4   # credit goes back in WINDOW_UPDATEs of at least this much, not one per frame
# A server's RST_STREAM as gRPC's table maps it; any other code is INTERNAL.
_RESET_STATUS = {ErrorCodes.REFUSED_STREAM: StatusCode.UNAVAILABLE, ErrorCodes.CANCEL: StatusCode.CANCELLED,
                 ErrorCodes.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
                 ErrorCodes.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True)
class ChannelSettings:
    target: str                      # host:port ([v6]:port)
    server_name: str                 # the name the server's certificate must carry (and :authority)
    bundle_pem: bytes                # the roots the server's chain must reach
    keepalive_time: float = 20.0
    keepalive_timeout: float = 10.0
    max_receive_message: int = 256 * 1024 * 1024
    connect_timeout: float = 20.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0


def split_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RpcError(StatusCode.UNAVAILABLE, f"control plane address {target!r} is not host:port")
    return host.strip("[]"), int(port)


class _Stream:
    """One call's receiving side: headers, messages, then its status; and the stream's credit.

    The credit of what arrives is `held` while whole messages wait in `messages`, and earned as the caller
    takes them; while none waits, what is held (a message still arriving) is earned at once, so that a
    message larger than the window can arrive. Earned credit waits in `credit` for the connection to
    send it."""

    def __init__(self, max_message: int) -> None:
        self.reader = MessageReader(max_message)
        self.messages: deque[bytes] = deque()
        self.held = 0
        self.credit = 0
        self.headers_seen = False
        self.outcome: RpcError | None = None
        self.finished = False          # outcome is final (None: OK)
        self._waiter: asyncio.Future | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def finish(self, outcome: RpcError | None) -> None:
        if not self.finished:
            self.finished, self.outcome = True, outcome
            self._wake()

    def on_headers(self, headers: dict[bytes, bytes]) -> None:
        if b"grpc-status" in headers and not self.headers_seen:      # trailers-only
            self.headers_seen = True
            if headers.get(b":status") == b"200":
                self.finish(status_of(headers))
                return
        self.headers_seen = True
        check_response_headers(headers)

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        if not self.headers_seen:
            raise RpcError(StatusCode.INTERNAL, "the server sent DATA before its headers")
        self.held += flow_controlled_length
        self.messages.extend(self.reader.feed(data))
        self._settle()
        if self.messages:
            self._wake()

    def _settle(self) -> None:
        if not self.messages:
            self.credit += self.held
            self.held = 0

    def buffered(self) -> int:
        """Bytes received and not yet read by the caller."""
        return sum(len(m) for m in self.messages) + self.reader.pending()

    def on_trailers(self, trailers: dict[bytes, bytes]) -> None:
        if self.reader.pending():
            self.finish(RpcError(StatusCode.INTERNAL, "the server ended the call in the middle of a message"))
        self.finish(status_of(trailers))

    def on_end(self) -> None:
        if self.reader.pending():
            self.finish(RpcError(StatusCode.INTERNAL, "the server ended the call in the middle of a message"))
        self.finish(RpcError(StatusCode.INTERNAL, "the server ended the call without a grpc-status"))

    async def next(self) -> bytes | None:
        while not self.messages:
            if self.finished:
                if self.outcome is not None:
                    raise self.outcome
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        message = self.messages.popleft()
        release = min(self.held, PREFIX.size + len(message))
        self.held -= release
        self.credit += release
        self._settle()
        return message


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; the h2 state machine fed by the transport."""

    def __init__(self, settings: ChannelSettings) -> None:
        self.settings = settings
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.failure: RpcError | None = None     # set once the connection is of no more use
        self._connection_credit = 0              # earned by DATA received, not yet sent
        self._room_waiters: list[asyncio.Future] = []   # sends waiting for credit, calls for a stream slot
        self._pong: asyncio.Future | None = None
        self._keepalive: asyncio.Task | None = None

    @property
    def usable(self) -> bool:
        return self.failure is None and self.transport is not None

    def connection_made(self, transport) -> None:
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self.fail(RpcError(StatusCode.UNAVAILABLE, f"{self.settings.target} did not agree to HTTP/2 (ALPN h2)"))
            return
        self.h2.initiate_connection()
        # After the preface's SETTINGS, not in it: h2 would send the old values there and count with the new.
        self.h2.update_settings({SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.h2.increment_flow_control_window(WINDOW - 65_535)
        self.flush()
        self._keepalive = asyncio.ensure_future(self._ping_loop())

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self.fail(RpcError(StatusCode.UNAVAILABLE, f"{self.settings.target} broke HTTP/2: {e}"))
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def _on_event(self, event) -> None:
        if isinstance(event, PingAckReceived):
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(None)
            return
        if isinstance(event, (WindowUpdated, RemoteSettingsChanged, StreamEnded, StreamReset)):
            self._wake_room_waiters()     # credit, a larger initial window, more streams, a stream ended
        if isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
            return
        if isinstance(event, ConnectionTerminated):
            # h2 takes no frame in or out after a GOAWAY, even for the calls the server would still finish:
            # the connection and all its calls end here (UNAVAILABLE, so callers retry on a new one).
            self.fail(RpcError(StatusCode.UNAVAILABLE, f"{self.settings.target} is going away "
                               f"({getattr(event.error_code, 'name', event.error_code)})"))
            return
        if isinstance(event, DataReceived):
            # The connection's credit goes back for every DATA frame, a forgotten stream's too: its window is
            # shared, and a call read slowly holds back its own stream, not the others.
            self._connection_credit += event.flow_controlled_length
            if self._connection_credit >= CREDIT_BATCH:
                self.h2.increment_flow_control_window(self._connection_credit)
                self._connection_credit = 0
        stream = self.streams.get(getattr(event, "stream_id", None) or 0)
        if stream is None:
            if isinstance(event, DataReceived):
                self.reset(event.stream_id)      # a call already let go of: no more of it
            return
        try:
            if isinstance(event, ResponseReceived):
                stream.on_headers(dict(event.headers))
            elif isinstance(event, DataReceived):
                stream.on_data(event.data, event.flow_controlled_length)
                self.return_credit(event.stream_id, stream)
            elif isinstance(event, TrailersReceived):
                stream.on_trailers(dict(event.headers))
            elif isinstance(event, StreamEnded):
                stream.on_end()
            elif isinstance(event, StreamReset):
                code = _RESET_STATUS.get(event.error_code, StatusCode.INTERNAL)
                stream.finish(RpcError(code, f"the server reset the call ("
                                       f"{getattr(event.error_code, 'name', event.error_code)})"))
        except RpcError as e:
            stream.finish(e)
            self.reset(event.stream_id)

    def return_credit(self, stream_id: int, stream: _Stream) -> None:
        """Sends the stream's earned credit once there is a batch of it (or none is needed any more)."""
        if stream.credit < CREDIT_BATCH or self.failure is not None:
            return
        credit, stream.credit = stream.credit, 0
        if not stream.finished:
            try:
                self.h2.increment_flow_control_window(credit, stream_id)
            except (H2Error, KeyError):
                return       # the server has ended its side: it sends no more
            self.flush()

    def reset(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        try:
            self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        except H2Error:
            pass     # already closed on the server's side
        self.flush()
        self._wake_room_waiters()

    def _wake_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_room(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        await waiter

    def fail(self, error: RpcError) -> None:
        if self.failure is None:
            self.failure = error
        for stream in self.streams.values():
            stream.finish(error)
        self._wake_room_waiters()
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        detail = f": {exc}" if exc else ""
        self.fail(RpcError(StatusCode.UNAVAILABLE, f"the connection to {self.settings.target} was lost{detail}"))

    async def _ping_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self.failure is None:
            await asyncio.sleep(self.settings.keepalive_time)
            if not self.streams:
                continue     # as grpcio by default: no PING on an idle connection (a Sign channel between renewals)
            self._pong = loop.create_future()
            self.h2.ping(os.urandom(8))
            self.flush()
            try:
                await asyncio.wait_for(self._pong, self.settings.keepalive_timeout)
            except asyncio.TimeoutError:
                self.fail(RpcError(StatusCode.UNAVAILABLE, f"{self.settings.target} did not answer a keepalive "
                                   f"PING within {self.settings.keepalive_timeout:g} s"))

    # -- calls ------------------------------------------------------------------------

    async def start(self, path: str, metadata, timeout: float | None) -> tuple[int, _Stream]:
        """Opens the call's stream; while the server's SETTINGS_MAX_CONCURRENT_STREAMS are all open, waits
        for one to end (as grpcio queues such a call), within the call's deadline."""
        while True:
            if self.failure is not None:
                raise self.failure        # no stream on a connection that is gone: nothing would end it
            if self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams:
                break
            await self._wait_for_room()
        stream_id = self.h2.get_next_available_stream_id()
        stream = _Stream(self.settings.max_receive_message)
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, request_headers(path, self.settings.server_name, metadata, timeout))
        self.flush()
        return stream_id, stream

    async def send(self, stream_id: int, payload: bytes, end: bool) -> None:
        data = memoryview(encode_message(payload))
        while True:
            stream = self.streams.get(stream_id)
            if self.failure is not None or stream is None or stream.finished:
                raise (stream.outcome if stream is not None and stream.outcome else self.failure) or RpcError(
                    StatusCode.CANCELLED, "the call ended before its message was sent")
            # (The window is below zero when the server lowered its initial window under what was sent.)
            size = min(len(data), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if size <= 0 and len(data):
                await self._wait_for_room()
                continue
            last = size == len(data)
            self.h2.send_data(stream_id, bytes(data[:size]), end_stream=end and last)
            self.flush()
            data = data[size:]
            if last:
                return


class Call:
    """A streaming call: `send` messages, `receive` them (None once it ended with OK), `cancel`."""

    def __init__(self, connection: _Connection, stream_id: int, stream: _Stream) -> None:
        self._connection, self._stream_id, self._stream = connection, stream_id, stream

    async def send(self, payload: bytes, *, last: bool = False) -> None:
        await self._connection.send(self._stream_id, payload, last)

    async def receive(self) -> bytes | None:
        message = await self._stream.next()
        self._connection.return_credit(self._stream_id, self._stream)
        return message

    def cancel(self) -> None:
        """Ends the call; from then on `receive` raises CANCELLED (unless it had ended already)."""
        if not self._stream.finished:
            self._stream.messages.clear()     # what arrived and was not read is not wanted any more
        self._stream.finish(RpcError(StatusCode.CANCELLED, "cancelled by the client"))
        if self._connection.failure is None:
            self._connection.reset(self._stream_id)

    def done(self) -> None:
        """Forget the stream once its outcome was read."""
        self._connection.streams.pop(self._stream_id, None)


class Channel:
    def __init__(self, settings: ChannelSettings) -> None:
        self.settings = settings
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future | None = None
        self._backoff = settings.backoff_initial
        self._retry_at = 0.0
        self._last_failure: RpcError | None = None
        self._closed = False

    async def __aenter__(self) -> "Channel":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Ends the connection and its calls; a connection still being dialled is ended once it is made."""
        self._closed = True
        if self._connection is not None:
            self._connection.fail(RpcError(StatusCode.CANCELLED, "the channel was closed"))
            self._connection = None

    def _context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cadata=self.settings.bundle_pem.decode())
        except (ssl.SSLError, ValueError) as e:
            raise RpcError(StatusCode.UNAVAILABLE, f"the trust bundle cannot be used: {e}") from None
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RpcError(StatusCode.CANCELLED, "the channel was closed")
        if self._connection is not None and self._connection.usable:
            return self._connection
        if time.monotonic() < self._retry_at and self._last_failure is not None:
            raise self._last_failure
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._dial())
            self._connecting.add_done_callback(self._dialled)
        return await asyncio.shield(self._connecting)

    def _dialled(self, dial: asyncio.Future) -> None:
        # Forgotten when it ends, not when a caller returns: a caller cancelled meanwhile (its deadline) left
        # it in place, and the next call, after the connection was lost, got that dead connection back.
        self._connecting = None
        if not dial.cancelled():
            dial.exception()      # read here too, for when every caller was cancelled

    async def _dial(self) -> _Connection:
        host, port = split_target(self.settings.target)
        connection = _Connection(self.settings)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: connection, host, port, ssl=self._context(),
                server_hostname=self.settings.server_name), self.settings.connect_timeout)
        except (OSError, asyncio.TimeoutError, RpcError) as e:
            self._last_failure = RpcError(StatusCode.UNAVAILABLE, _describe(self.settings, e))
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
            self._backoff = min(self._backoff * 1.6, self.settings.backoff_max)
            raise self._last_failure from None
        if self._closed:                  # closed while dialling: the connection would outlive its channel
            connection.fail(RpcError(StatusCode.CANCELLED, "the channel was closed"))
        if connection.failure is not None:
            self._last_failure = connection.failure
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
            self._backoff = min(self._backoff * 1.6, self.settings.backoff_max)
            raise connection.failure
        self._backoff, self._retry_at, self._last_failure = self.settings.backoff_initial, 0.0, None
        self._connection = connection
        return connection

    async def open_stream(self, path: str, metadata=(), timeout: float | None = None) -> Call:
        connection = await self._connect()
        return Call(connection, *await connection.start(path, metadata, timeout))

    async def unary(self, path: str, request: bytes, metadata=(), timeout: float | None = None) -> bytes:
        """One request, one answer; DEADLINE_EXCEEDED when `timeout` passes first."""
        call: Call | None = None
        try:
            async with asyncio.timeout(timeout):
                call = await self.open_stream(path, metadata, timeout)
                await call.send(request, last=True)
                answer = await call.receive()
                if answer is None:
                    raise RpcError(StatusCode.INTERNAL, "the server ended a unary call without an answer")
                if await call.receive() is not None:
                    raise RpcError(StatusCode.INTERNAL, "the server sent more than one answer to a unary call")
                return answer
        except TimeoutError:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"no answer from {self.settings.target} "
                           f"within {timeout:g} s") from None
        finally:
            if call is not None:
                if not call._stream.finished:
                    call.cancel()
                call.done()


def _describe(settings: ChannelSettings, error: BaseException) -> str:
    if isinstance(error, RpcError):
        return error.details
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"the certificate of {settings.target} does not verify as {settings.server_name} against the "
                f"trust bundle ({error.verify_message}); check the bundle and the control plane's address")
    if isinstance(error, asyncio.TimeoutError):
        return f"no TLS connection to {settings.target} within {settings.connect_timeout:g} s"
    return f"cannot connect to {settings.target}: {error.strerror or error}" if isinstance(error, OSError) \
        else str(error)
