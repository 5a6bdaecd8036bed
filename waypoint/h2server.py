"""HTTP/2 from clients (h2c with prior knowledge, as gRPC clients speak it): one task per stream.

The client's HBONE stream carries an HTTP/2 connection; each of its streams
is one request, handled concurrently by `Proxy.exchange` with an
`H2Responder`. A request is routed at its headers; its body is a
`waypoint.streaming.BodyStream` the proxy reads as it passes it on (or keeps
whole, up to a limit, on a route that retries), and the client's
flow-control credit goes back only as it is read: what a client can make the
waypoint hold is its windows (`STREAM_WINDOW` per stream, `CONNECTION_WINDOW`
for the connection). An answer complete before the request body ended tells
the client to stop sending (RST_STREAM NO_ERROR). Responses stream back,
trailers (gRPC status) included. Outgoing DATA waits for flow-control
window: every stream has an outbox that `_pump()` empties as windows open,
and `await data()` returns once its outbox is small and the client's
connection takes more, so a slow client slows the endpoint instead of
growing buffers.

Not supported: server push, CONNECT over HTTP/2.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from shoal import log

from waypoint import http1
from waypoint.channel import Channel, ChannelReset
from waypoint.errors import DownstreamGone
from waypoint.h2upstream import CONNECTION_WINDOW, STREAM_WINDOW
from waypoint.proxy import Request
from waypoint.responders import grpc_status_for
from waypoint.routing import Peer
from waypoint.streaming import BodyStream

logger = log.get("waypoint.h2")

OUTBOX_LOW = 256 << 10


@dataclass(eq=False)
class _Stream:
    stream_id: int
    headers: list[tuple[str, str]]
    outbox: bytearray = field(default_factory=bytearray)
    trailers: tuple | None = None       # set when the response is complete
    ended: bool = False                 # END_STREAM sent (or the stream reset)
    task: asyncio.Task | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    body_stream: BodyStream | None = None   # the request body, read as the proxy passes it on


class H2Responder:
    plain_heads = False   # an HTTP/1.1 head as it came is no HTTP/2 head: `head` always

    def __init__(self, server: "H2Server", stream: _Stream, grpc: bool) -> None:
        self.server = server
        self.stream = stream
        self.grpc = grpc
        self.bytes_sent = 0
        self.keep = True

    def _headers(self, status: int, headers, extra=()) -> list[tuple[bytes, bytes]]:
        out = [(b":status", str(status).encode())]
        out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (*headers, *extra)
                if k not in ("connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection")]
        return out

    def local(self, status: int, text: str, headers=()) -> None:
        if self.grpc:
            # A trailers-only response, as Envoy answers gRPC clients.
            self.server.send_headers(self.stream, self._headers(200, headers, (
                ("content-type", "application/grpc"), ("grpc-status", str(grpc_status_for(status))),
                ("grpc-message", text), ("x-shoal-http-status", str(status)))), end=True)
            return
        body = (text + "\n").encode()
        self.server.send_headers(self.stream, self._headers(status, headers, (
            ("content-type", "text/plain"), ("content-length", str(len(body))))))
        self.bytes_sent += len(body)
        self.server.queue(self.stream, body, trailers=())

    def head(self, status: int, reason: str, headers, content_length: int | None, end: bool = False) -> None:
        extra = (("content-length", str(content_length)),) if content_length is not None else ()
        self.server.send_headers(self.stream, self._headers(status, headers, extra), end=end)

    async def data(self, data: bytes) -> None:
        if self.stream.ended:
            raise DownstreamGone("the client reset the stream during the response")
        self.bytes_sent += len(data)
        self.server.queue(self.stream, data)
        if len(self.stream.outbox) > OUTBOX_LOW:
            self.stream.drained.clear()
            await self.stream.drained.wait()
        await self.server.client.drain()    # the client's connection takes no more (its HBONE stream is full)

    def end(self, trailers=()) -> None:
        self.server.queue(self.stream, b"", trailers=tuple(trailers))

    def reset(self) -> None:
        self.server.reset(self.stream)


class H2Server:
    def __init__(self, proxy, client: Channel, peer: Peer, source_address) -> None:
        self.proxy = proxy
        self.client = client
        self.peer = peer
        self.source_address = source_address
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, _Stream] = {}
        self._goaway_sent = False

    async def run(self) -> None:
        self.conn.initiate_connection()
        # The same windows as towards endpoints: what a client may send ahead, unread, is bounded by them.
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - self.conn.inbound_flow_control_window)
        self._flush()
        try:
            while True:
                data = await self.client.read()
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    logger.info("client broke HTTP/2; closing its connection", src=self.source_address[0],
                                error=str(e))
                    self._flush()
                    break
                for event in events:
                    self._on(event)
                if self.proxy.draining and not self._goaway_sent:
                    # Shutting down: no new streams; those in flight finish.
                    self.conn.close_connection(last_stream_id=self.conn.highest_inbound_stream_id)
                    self._goaway_sent = True
                self._pump()
                self._flush()
        except ChannelReset:
            pass
        finally:
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.client.end()

    def _on(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
            stream = self.streams[event.stream_id] = _Stream(event.stream_id, headers)
            if not event.stream_ended:
                # Routed at its headers: the body follows as the proxy reads it, and the client's credit
                # comes back only as it does.
                sid = event.stream_id
                length = next((v.strip() for k, v in headers if k == "content-length"), "")
                stream.body_stream = BodyStream(lambda n, sid=sid: self._consumed(sid, n),
                                                int(length) if length.isdigit() else None)
            self._start(stream)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.body_stream is not None:
                stream.body_stream.feed(event.data, event.flow_controlled_length)
                if event.stream_ended:
                    stream.body_stream.end()
                return
            # A stream already answered (or never known): nobody reads this; its credit goes back at once.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.body_stream is not None:
                stream.body_stream.end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.ended = True
                if stream.body_stream is not None:
                    stream.body_stream.fail(ChannelReset("the client reset the stream"))
                stream.drained.set()
                if stream.task is not None:
                    stream.task.cancel()

    def _start(self, stream: _Stream) -> None:
        pseudo = {k: v for k, v in stream.headers if k.startswith(":")}
        authority = pseudo.get(":authority") or next((v for k, v in stream.headers if k == "host"), "")
        fields = [("host", authority)] + [(k, v) for k, v in stream.headers if not k.startswith(":") and k != "host"]
        body = stream.body_stream
        head = http1.Head(pseudo.get(":method", "GET"), pseudo.get(":path", "/"), 0, "", tuple(fields), "2", True,
                          body.length if body is not None else 0, False)
        grpc = (head.header("content-type") or "").startswith("application/grpc")
        responder = H2Responder(self, stream, grpc)
        request = Request(head, b"", self.peer.destination[1], body)
        stream.task = asyncio.get_running_loop().create_task(
            self.proxy.exchange(request, self.peer, responder, self.source_address))
        stream.task.add_done_callback(lambda _t, s=stream: self._finished(s))

    def _consumed(self, stream_id: int, credit: int) -> None:
        """Flow-control credit back to the client as the endpoint takes its messages."""
        try:
            self.conn.acknowledge_received_data(credit, stream_id)
        except h2.exceptions.ProtocolError:
            return   # the stream is gone
        self._flush()

    def _finished(self, stream: _Stream) -> None:
        if not stream.ended and stream.trailers is None:
            self.reset(stream)   # the handler ended without a complete answer
        elif stream.ended:
            self._release(stream)

    # --- writing -----------------------------------------------------------------------

    def send_headers(self, stream: _Stream, headers, end: bool = False) -> None:
        if stream.ended:
            return
        try:
            self.conn.send_headers(stream.stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError:
            stream.ended = True
            return
        if end:
            stream.ended = True
            stream.trailers = ()
            self._answered(stream)
        self._flush()

    def queue(self, stream: _Stream, data: bytes, trailers: tuple | None = None) -> None:
        if stream.ended:
            return
        stream.outbox += data
        if trailers is not None:
            stream.trailers = trailers
        self._pump()
        self._flush()

    def reset(self, stream: _Stream, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        if not stream.ended:
            stream.ended = True
            try:
                self.conn.reset_stream(stream.stream_id, code)
            except h2.exceptions.ProtocolError:
                pass
        stream.drained.set()
        self._release(stream)
        self._flush()

    def _answered(self, stream: _Stream) -> None:
        """The whole answer is out. A client still sending its request body is told to stop, without
        error (RFC 9113 8.1): a refused upload is not read to its end."""
        body = stream.body_stream
        if body is not None and not body.complete and body.broken is None:
            try:
                self.conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass
        self._release(stream)

    def _release(self, stream: _Stream) -> None:
        """The stream is done on our side: later DATA is acknowledged on arrival, queued DATA now."""
        self.streams.pop(stream.stream_id, None)
        if stream.body_stream is not None:
            stream.body_stream.discard()

    def _pump(self) -> None:
        for stream in list(self.streams.values()):
            if stream.ended:
                continue
            try:
                while stream.outbox:
                    room = min(self.conn.local_flow_control_window(stream.stream_id),
                               self.conn.max_outbound_frame_size, len(stream.outbox))
                    if room <= 0:
                        break
                    self.conn.send_data(stream.stream_id, bytes(stream.outbox[:room]))
                    del stream.outbox[:room]
                if not stream.outbox and stream.trailers is not None:
                    if stream.trailers:
                        self.conn.send_headers(stream.stream_id, [(k.encode(), v.encode()) for k, v in stream.trailers],
                                               end_stream=True)
                    else:
                        self.conn.end_stream(stream.stream_id)
                    stream.ended = True
                    self._answered(stream)
            except h2.exceptions.ProtocolError:
                stream.ended = True
                self._release(stream)
            if len(stream.outbox) <= OUTBOX_LOW or stream.ended:
                stream.drained.set()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.client.send(data)
