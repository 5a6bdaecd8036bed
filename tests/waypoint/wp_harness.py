"""In-process waypoint on loopback: a test CA, real HTTP servers, an HBONE endpoint, an HBONE client.

Nothing here needs root. Addresses are in 127.0.0.0/8 (loopback only).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import generate_latest

from shoal import identity
from shoal.hbone_io import HboneSession
from shoal.hbone_relay import TcpSide, relay

from shoal.certs import CertManager
from shoal.proxy_state import ProxyState
from waypoint.channel import Channel
from waypoint.proxy import Proxy
from waypoint.server import HboneListener
from waypoint.telemetry import Metrics
from waypoint.upstream import Upstreams

from support import metrics as exposition
from support.ca import TestCA

TD = "cluster.local"


@dataclass
class AppBehaviour:
    name: str
    fail_first: int = 0          # answer 503 to this many requests first
    delay: float = 0.0           # seconds before answering
    hits: list = field(default_factory=list)   # (method, path, headers dict, body)
    peers: list = field(default_factory=list)  # the client (ip, port) of each hit: one per connection used
    idle_timeout: float | None = None          # close kept-alive connections idle this long
    digest: bool = False         # keep "<size> <sha256 hex>" of a body instead of the body (large uploads)
    one_write: bool = False      # answer head and body in one write (as most servers do), not two


class App:
    """A real threaded HTTP/1.1 server (http.server) that records what it gets."""

    def __init__(self, host: str, behaviour: AppBehaviour) -> None:
        b = behaviour

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # head and body are two writes: no 40 ms delayed-ACK stall on kept-alive connections

            def _pieces(self):
                if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if not size:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass   # trailers
                            return
                        yield self.rfile.read(size)
                        self.rfile.readline()
                left = int(self.headers.get("content-length") or 0)
                while left:
                    piece = self.rfile.read(min(left, 1 << 16))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece

            def _body(self) -> bytes:
                if not b.digest:
                    return b"".join(self._pieces())
                digest, size = hashlib.sha256(), 0
                for piece in self._pieces():
                    digest.update(piece)
                    size += len(piece)
                return f"{size} {digest.hexdigest()}".encode()

            def _answer(self):
                body = self._body()
                b.hits.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                b.peers.append(self.client_address)
                if b.delay:
                    time.sleep(b.delay)
                failing = len(b.hits) <= b.fail_first
                status = 503 if failing else 200
                data = f"{b.name} {self.command} {self.path} {len(body)}\n".encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.send_header("x-app", b.name)
                if b.one_write and self.command != "HEAD":
                    self._headers_buffer.append(b"\r\n" + data)   # (http.server's own buffer of the head)
                    self.flush_headers()
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _answer
            timeout = b.idle_timeout

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 256   # the default backlog of 5 drops SYNs of a burst

        self.behaviour = b
        self.server = Server((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HboneEndpoint:
    """What a destination ztunnel does for the waypoint: terminate HBONE and connect to the app on loopback."""

    def __init__(self, ca: TestCA, uri: str, host: str) -> None:
        self.ctx = identity.server_context(ca.credential(uri))
        self.host = host
        self.tunnels: list[str] = []
        self.peers: list[str] = []
        self.server = None

    async def start(self, port: int) -> None:
        async def on_request(session, stream):
            self.tunnels.append(stream.authority)
            self.peers.append(str(identity.peer_spiffe_id(session.ssl_object)))
            host, port_text = stream.authority.rsplit(":", 1)
            _, app = await asyncio.get_running_loop().create_connection(TcpSide, host, int(port_text))
            session.accept(stream)
            await relay(stream, app)

        self.server = await asyncio.get_running_loop().create_server(
            lambda: HboneSession(False, on_request=on_request), self.host, port, ssl=self.ctx)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Waypoint:
    """A Proxy + HboneListener with the test CA's credential for ns/sa waypoint."""

    def __init__(self, ca: TestCA, state: ProxyState, hbone_port: int, rand=None) -> None:
        namespace, name = state.waypoint
        self.who = identity.parse_spiffe_id(f"spiffe://{TD}/ns/{namespace}/sa/{name}")
        self.certs = CertManager(ca.sign)
        self.metrics = Metrics()
        self.upstreams = Upstreams(self.certs, self.who, connect_timeout=1.0, hbone_port=hbone_port)
        kwargs = {"rand": rand} if rand else {}
        self.proxy = Proxy(state, self.upstreams, self.metrics, **kwargs)
        self.listener = HboneListener(self.proxy, lambda: self.certs.server_context(self.who))

    async def start(self, host: str = "127.0.0.1") -> None:
        await self.listener.start(host, 0)

    async def close(self) -> None:
        await self.listener.close()
        await self.proxy.close()
        self.upstreams.close()

    def scrape(self) -> str:
        """What the waypoint's /metrics would answer."""
        return generate_latest(self.metrics.registry).decode()

    def count(self, **labels) -> float:
        return exposition.value(self.scrape(), "istio_requests_total", **labels) or 0.0


class Client:
    """A meshed client: an HBONE session with its own certificate, one CONNECT stream per `connect`."""

    def __init__(self, ca: TestCA, uri: str) -> None:
        self.ctx = identity.client_context(ca.credential(uri))
        self.session: HboneSession | None = None

    async def open(self, host: str, port: int) -> None:
        _, self.session = await asyncio.get_running_loop().create_connection(
            lambda: HboneSession(True), host, port, ssl=self.ctx, server_hostname="")

    async def connect(self, authority: str) -> Channel:
        stream = await self.session.open(authority, timeout=5)
        return Channel(stream)

    async def request(self, authority: str, raw: bytes, timeout: float = 5.0) -> bytes:
        """Sends raw bytes on a new stream, half-closes, returns everything until the end."""
        channel = await self.connect(authority)
        channel.send(raw)
        return await read_all(channel, timeout)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


async def read_all(channel: Channel, timeout: float = 5.0) -> bytes:
    out = bytearray()

    async def loop():
        while True:
            data = await channel.read()
            if not data:
                return
            out.extend(data)
    await asyncio.wait_for(loop(), timeout)
    return bytes(out)


async def upload(channel, size: int, chunked: bool) -> str:
    """Sends `size` random bytes in 256 KiB pieces, waiting while the waypoint takes no more; their sha256."""
    digest, left, block = hashlib.sha256(), size, 256 << 10
    while left:
        piece = os.urandom(min(block, left))
        digest.update(piece)
        left -= len(piece)
        channel.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        await channel.drain()
    if chunked:
        channel.send(b"0\r\n\r\n")
    return digest.hexdigest()


def get(path="/", host="reviews:9080", headers=(), method="GET", body=b"", close=True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange_kept_alive(channel, raw: bytes) -> bytes:
    """Sends one request on a kept-alive connection and reads its whole answer (head, Content-Length body)."""
    channel.send(raw)
    data = b""
    while b"\r\n\r\n" not in data or len(body_of(data)) < content_length_of(data):
        piece = await asyncio.wait_for(channel.read(), 5)
        assert piece, data
        data += piece
    return data


def content_length_of(response: bytes) -> int:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    return next(int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:"))


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


class Forwarder:
    """A tiny stand-in for the client's ztunnel: plain TCP on loopback in, one HBONE CONNECT out per connection.

    Lets unmodified clients (grpcio, curl) talk to the waypoint."""

    def __init__(self, client: "Client", authority: str) -> None:
        self.client = client
        self.authority = authority
        self.server = None
        self.port = 0

    async def start(self) -> None:
        from shoal.hbone_relay import TcpSide as _Tcp

        loop = asyncio.get_running_loop()

        async def accept(sock) -> None:
            _, app = await loop.connect_accepted_socket(_Tcp, sock)
            stream = await self.client.session.open(self.authority, timeout=5)
            await relay(app, stream)

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        tasks = self._tasks = set()

        async def loop_accept():
            while True:
                conn, _ = await loop.sock_accept(listener)
                task = loop.create_task(accept(conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        self.server = loop.create_task(loop_accept())

    def close(self) -> None:
        if self.server is not None:
            self.server.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._listener.close()
