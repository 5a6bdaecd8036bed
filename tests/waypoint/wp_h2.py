"""HTTP/2 on both sides of the waypoint, with flow control the test decides: a server and a client on h2.

`H2App` is a real h2c server on loopback (TCP): `GET /big/<n>` answers n
bytes as fast as the waypoint's windows allow, `POST /sink` takes the headers
and never acknowledges a byte of the body (an endpoint that stops reading),
`POST /digest` reads the body and answers "<size> <sha256>".
It counts what it sent and received, so a test sees how far ahead of the
client the waypoint let it go.

`H2Client` speaks HTTP/2 on a channel (an HBONE stream from the test's
client): requests, uploads that honour the windows, and reading that can be
stopped (no WINDOW_UPDATE: a client that stops reading) and resumed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

PATTERN = bytes(range(256)) * 64       # 16 KiB, what /big repeats


class H2App:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.sent = 0            # DATA bytes sent (all streams)
        self.received = 0        # DATA bytes received
        self.requests: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(lambda: _H2AppConnection(self), self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _H2AppConnection(asyncio.Protocol):
    def __init__(self, app: H2App) -> None:
        self.app = app
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.left: dict[int, int] = {}      # stream -> bytes still to send
        self.sinks: set[int] = set()
        self.digests: dict[int, list] = {}   # stream -> [sha256, size] of a /digest body
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers)[":path"]
                self.app.requests.append(path)
                if path.startswith("/big/"):
                    self.conn.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/octet-stream")])
                    self.left[ev.stream_id] = int(path.rsplit("/", 1)[1])
                elif path == "/sink":
                    self.sinks.add(ev.stream_id)
                elif path == "/digest":
                    self.digests[ev.stream_id] = [hashlib.sha256(), 0]
                else:
                    self.conn.send_headers(ev.stream_id, [(":status", "404")], end_stream=True)
            elif isinstance(ev, h2.events.DataReceived):
                self.app.received += len(ev.data)
                if ev.stream_id in self.digests:
                    self.digests[ev.stream_id][0].update(ev.data)
                    self.digests[ev.stream_id][1] += len(ev.data)
                if ev.stream_id not in self.sinks:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in self.digests:
                digest, size = self.digests.pop(ev.stream_id)
                self.conn.send_headers(ev.stream_id, [(":status", "200")])
                self.conn.send_data(ev.stream_id, f"{size} {digest.hexdigest()}".encode(), end_stream=True)
            elif isinstance(ev, h2.events.StreamReset):
                self.left.pop(ev.stream_id, None)
        self._send()
        self._flush()

    def _send(self) -> None:
        for sid, left in list(self.left.items()):
            while left:
                room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, left)
                if room <= 0:
                    break
                self.conn.send_data(sid, PATTERN[:room])
                self.app.sent += room
                left -= room
            if left:
                self.left[sid] = left
            else:
                del self.left[sid]
                self.conn.end_stream(sid)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc) -> None:
        self.left.clear()


@dataclass(eq=False)
class ClientStream:
    status: str = ""
    received: int = 0
    body: bytearray = field(default_factory=bytearray)   # the first 4 KiB of the response body
    sent: int = 0
    reset_code: int | None = None
    unacked: int = 0
    reading: bool = True
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    headers_seen: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class H2Client:
    def __init__(self, channel) -> None:
        self.channel = channel
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.streams: dict[int, ClientStream] = {}
        self._window = asyncio.Event()
        self._flush()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.channel.send(data)

    async def _read(self) -> None:
        while True:
            data = await self.channel.read()
            if not data:
                for stream in self.streams.values():
                    stream.ended.set()
                return
            for ev in self.conn.receive_data(data):
                stream = self.streams.get(getattr(ev, "stream_id", 0) or 0)
                if isinstance(ev, h2.events.ResponseReceived):
                    stream.status = dict(ev.headers)[":status"]
                    stream.headers_seen.set()
                elif isinstance(ev, h2.events.DataReceived):
                    stream.received += len(ev.data)
                    stream.body += ev.data[:max(0, 4096 - len(stream.body))]
                    stream.digest.update(ev.data)
                    stream.unacked += ev.flow_controlled_length
                    if stream.reading:
                        self._ack(ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    stream.ended.set()
                elif isinstance(ev, h2.events.StreamReset):
                    stream.reset_code = ev.error_code
                    stream.headers_seen.set()
                    stream.ended.set()
                    self._window.set()
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    self._window.set()
            self._flush()

    def _ack(self, sid: int) -> None:
        stream = self.streams[sid]
        credit, stream.unacked = stream.unacked, 0
        if credit:
            self.conn.acknowledge_received_data(credit, sid)

    def request(self, method: str, path: str, authority: str, *, end: bool, headers=()) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = ClientStream()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "http"), (":path", path),
                                     (":authority", authority), *headers], end_stream=end)
        self._flush()
        return sid

    def stop_reading(self, sid: int) -> None:
        self.streams[sid].reading = False

    def resume_reading(self, sid: int) -> None:
        self.streams[sid].reading = True
        self._ack(sid)
        self._flush()

    async def upload(self, sid: int, size: int, end: bool = True) -> str:
        """Sends `size` random bytes as the windows allow (stops if the stream is reset); their sha256."""
        stream, digest, left = self.streams[sid], hashlib.sha256(), size
        while left and stream.reset_code is None:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, left)
            if room <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            piece = os.urandom(room)
            digest.update(piece)
            self.conn.send_data(sid, piece, end_stream=end and room == left)
            stream.sent += room
            left -= room
            self._flush()
            await self.channel.drain()
        return digest.hexdigest()

    def close(self) -> None:
        self.reader.cancel()
