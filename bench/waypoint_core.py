"""The waypoint's own per-request work, in memory: CPU-µs per HTTP/1.1 request, no TLS, no sockets.

    python -m bench waypoint_core [--requests 20000] [--connections 4] [--body-bytes 1024]
                                  [--access-log on|off] [--repeats 3] [--profile]

What a request costs the waypoint between its HBONE legs: reading and
parsing the head (httptools), the route decision, the upstream pool, writing
the request upstream and relaying the answer, telemetry and the access-log
line. Both legs are in-memory relay sides (`shoal.hbone_relay.Side`), so the
figure is the Python of `waypoint.http1_server` and `waypoint.proxy` alone:
TLS, HTTP/2 framing and system calls are measured on the cluster (see
waypoint/PERFORMANCE.md). Clients keep `--connections` connections busy,
one request at a time each, as bench.loadgen does; the endpoint answers
every request at once with a `--body-bytes` body and keeps its connection
alive.

The access log is written as the waypoint writes it (JSON lines) to
/dev/null with `--access-log on`, and not at all with `off` (the
waypoint's default: `shoal.log.set_access_log`). CPU is the process's user+system time (`time.process_time`), the
minimum over `--repeats` runs: on a shared machine the least disturbed run
is the closest to the code's own cost. `--profile` prints cProfile's top
functions of one more run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time

from shoal import identity, log
from shoal.hbone_relay import Side
from shoal.model import Endpoint, Protocol, Service, ServicePort, Waypoint, Workload, freeze_labels
from shoal.proxy_state import ProxyState

# The waypoint's modules are imported in run_once, after main() set logging up: an access logger is
# bound to the logging set-up of the moment its module is imported (shoal.log.get_access).

NS = "bench"
VIP, PORT = "198.18.16.10", 8080
CLIENT_IP, SERVER_IP = "198.19.1.20", "198.19.2.11"
# The request and answer exactly as bench.loadgen's client and server make them (its GET says Content-Length: 0),
# so that this measures the path the cluster's requests take.
REQUEST = b"GET / HTTP/1.1\r\nHost: server.bench:8080\r\nContent-Length: 0\r\n\r\n"


def mesh() -> ProxyState:
    def workload(name: str, ip: str) -> Workload:
        return Workload(uid=f"uid-{name}", name=name, namespace=NS, service_account="default", node="node1",
                        ips=(ip,), labels=freeze_labels({"app": name}), canonical_service=name,
                        canonical_revision="latest", protocol=Protocol.HBONE, workload_name=name)
    client, server = workload("client", CLIENT_IP), workload("server", SERVER_IP)
    state = ProxyState(waypoint=(NS, "waypoint"))
    for item in (client, server, Waypoint("waypoint", NS, "waypoint"),
                 Service(name="server", namespace=NS, hostname=f"server.{NS}.svc.cluster.local", vips=(VIP,),
                         ports=(ServicePort(PORT, "http", app_protocol="http"),),
                         endpoints=(Endpoint(server.uid, PORT, PORT),))):
        state.upsert(item)
    return state


class Endpoint_(Side):
    """The app behind the destination's ztunnel: answers each request it is written at once."""

    def __init__(self, body: bytes) -> None:
        self.answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        self.peer = None

    def attach(self, peer) -> None:
        self.peer = peer

    def write(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            self.peer.write(self.answer)


class Endpoints:
    """Stands in for waypoint.upstream.Upstreams: each open() is a new in-memory endpoint connection."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.opened = 0

    async def open(self, upstream, timeout=None):
        from waypoint.channel import Channel
        self.opened += 1
        return Channel(Endpoint_(self.body))


class Client(Side):
    """One client connection (an HBONE stream from the ztunnel): counts whole answers."""

    def __init__(self, answer_size: int) -> None:
        self.answer_size = answer_size
        self.received = 0
        self.answered = asyncio.Event()
        self.peer = None

    def attach(self, peer) -> None:
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.answer_size:
            self.received -= self.answer_size
            self.answered.set()


async def run_once(requests: int, connections: int, body_bytes: int) -> tuple[float, int]:
    """CPU seconds for `requests` requests over `connections` kept-alive connections; how many endpoint
    connections the waypoint opened."""
    from waypoint.channel import Channel
    from waypoint.http1_server import serve_http1
    from waypoint.proxy import Proxy
    from waypoint.routing import Peer
    from waypoint.telemetry import Metrics
    endpoints = Endpoints(b"x" * body_bytes)
    proxy = Proxy(mesh(), endpoints, Metrics())
    source = identity.format_spiffe_id("cluster.local", NS, "default")
    peer = Peer(CLIENT_IP, source, (VIP, PORT))
    answer_size = None
    serving = []
    clients = []
    for i in range(connections):
        client = Client(0)
        channel = Channel(client)
        serving.append(asyncio.get_running_loop().create_task(
            serve_http1(proxy, channel, peer, (CLIENT_IP, 40000 + i))))
        clients.append((client, channel))
    # The first answer tells its size (head and body), which every later answer has too.
    first, first_channel = clients[0]
    first.answer_size = 1 << 30
    first_channel.write(REQUEST)
    deadline = time.monotonic() + 10
    while not first.received:
        if time.monotonic() > deadline:
            raise RuntimeError("no answer through the in-memory waypoint within 10 s")
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)   # the rest of the answer, if it came in pieces
    answer_size = first.received
    for client, _ in clients:
        client.answer_size, client.received = answer_size, 0

    per_connection = requests // connections

    async def drive(client: Client, channel) -> None:
        for _ in range(per_connection):
            client.answered.clear()
            channel.write(REQUEST)
            await client.answered.wait()

    started = time.process_time()
    await asyncio.gather(*(drive(c, ch) for c, ch in clients))
    spent = time.process_time() - started
    for _, channel in clients:
        channel.write_eof()
    await asyncio.gather(*serving, return_exceptions=True)
    await proxy.close()
    return spent, endpoints.opened


def run_on_uvloop(coroutine):
    """Runs on uvloop, as the waypoint does, without making it the process's policy (a caller's
    later event loops, pyroute2's among them, stay asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench waypoint_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one more run; print the top functions")
    args = parser.parse_args(argv)
    if args.requests < args.connections or args.connections <= 0 or args.repeats <= 0:
        parser.error("--requests must be at least --connections, and both and --repeats positive")
    sink = open("/dev/null", "w")
    log.setup("json", "info", stream=sink)
    log.set_access_log(args.access_log == "on")   # as `shoal waypoint run --access-log` does
    try:
        return measure(args)
    finally:
        log.set_access_log(True)   # the default, for whoever runs next in this process (a test)


def measure(args: argparse.Namespace) -> int:
    runs = [run_on_uvloop(run_once(args.requests, args.connections, args.body_bytes)) for _ in range(args.repeats)]
    best = min(cpu for cpu, _ in runs)
    count = args.connections * (args.requests // args.connections)
    print(f"waypoint core, HTTP/1.1, {args.body_bytes} B answers, {args.connections} connections, access log "
          f"{args.access_log}: {best / count * 1e6:.1f} CPU-µs per request (min of {args.repeats}; runs "
          f"{', '.join(f'{cpu / count * 1e6:.1f}' for cpu, _ in runs)}); endpoint connections opened "
          f"{runs[-1][1]}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_on_uvloop(run_once(args.requests, args.connections, args.body_bytes))
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
    return 0
