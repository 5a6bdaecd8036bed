"""The HBONE data path on loopback: latency and throughput, direct against through a forwarder pair.

    .venv/bin/python -m bench.hbone_latency [--round-trips 5000] [--seconds 3] [--repeats 3]

Set-ups (each end in its own process, as two ztunnels on two nodes would be):
- `direct`: client to app;
- `tls`: the same pair of processes relaying over one TLS 1.3 connection per
  client connection, no HTTP/2 (what HBONE costs beyond bare mTLS);
- `hbone`: client -> forwarder A -> TLS 1.3 + HTTP/2 CONNECT -> forwarder B -> app, with
  `shoal.hbone_io` (the ztunnel's own relay and HBONE driver) and mesh certificates;
  the relay the process chooses when not told (`SHOAL_RELAY` unset: native transports when built);
- `hbone-compiled-relay`: `hbone` with the compiled lane on the loop's (uvloop's) transports
  (`SHOAL_RELAY=compiled`);
- `hbone-python-relay`: `hbone` with the compiled relay lane off (`SHOAL_RELAY=python`);
- `hbone-plain-h2`: the same, with shoal.hbone's lean DATA path turned off (h2 as shipped).

Latency: sequential 1 KiB ping-pongs (p50/p90/p99 in ms) from a blocking client, and the CPU time
(user + system, /proc) the relay processes spent per round trip meanwhile.
Throughput: iperf3, 1 and 4 streams. This isolates the HBONE path; the full
baseline-vs-ambient comparison through the local cluster is `bench.latency`.
Prints a table and writes bench/results/<timestamp>-hbone/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import RESULTS_DIR, Run, percentile, summarize, table

ROOT = Path(__file__).resolve().parents[1]
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"


# --- certificates (a throwaway CA for the run) ----------------------------------------

def make_credentials(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from shoal import identity

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    (directory / "bundle.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    for role, uri in (("server", SERVER_ID), ("client", CLIENT_ID)):
        key = identity.new_key()
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
                .sign(ca_key, hashes.SHA256()))
        (directory / f"{role}.key").write_bytes(identity.key_pem(key))
        (directory / f"{role}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))


def load_credential(directory: Path, role: str):
    from shoal import identity
    return identity.Credential.from_pem((directory / f"{role}.key").read_bytes(),
                                        (directory / f"{role}.pem").read_bytes(),
                                        (directory / "bundle.pem").read_bytes())


# --- the roles, each run as its own process ----------------------------------------------

async def serve_sockets(port: int, on_socket) -> None:
    """Accepts on `port` and hands each connected socket to `await on_socket(sock)` (in a task, as the
    ztunnel's listeners do); says "ready" once listening, then serves forever."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    print("ready", flush=True)
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        task = loop.create_task(on_socket(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def connected(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def relay_listener(port: int, open_far_side, ssl_context=None) -> None:
    """Accepts on `port` (TLS with `ssl_context`) and relays each connection to the side
    `await open_far_side()` gives; says "ready" once listening, then serves forever. Plain TCP goes
    through `shoal.native_io`, as in the ztunnel; the bare TLS relay keeps the loop's TLS."""
    from shoal import native_io
    from shoal.hbone_relay import TcpSide, relay

    loop = asyncio.get_running_loop()

    async def carry(side):
        await relay(side, await open_far_side())

    if ssl_context is None:
        async def on_socket(conn):
            _, side = await native_io.open_tcp(TcpSide, conn, accepted=True)
            await carry(side)

        await serve_sockets(port, on_socket)
        return

    def accept():
        side = TcpSide()
        loop.create_task(carry(side))
        return side

    server = await loop.create_server(accept, "127.0.0.1", port, ssl=ssl_context)
    print("ready", flush=True)
    await server.serve_forever()


async def forwarder_server(directory: Path, port: int, lean: bool) -> None:
    """The HBONE server as the ztunnel's inbound makes it: accepted sockets, TLS and the app's side through
    `shoal.native_io` (native transports or the loop's, as SHOAL_RELAY chooses)."""
    from shoal import hbone, identity, native_io
    from shoal.hbone_io import HboneSession
    from shoal.hbone_relay import TcpSide, relay

    ctx = identity.server_context(load_credential(directory, "server"))

    async def on_request(session, stream):
        host, target = hbone.parse_authority(stream.authority)
        _, app = await native_io.open_tcp(TcpSide, await connected(target), accepted=False)
        session.accept(stream)
        await relay(stream, app)

    async def on_socket(conn):
        await native_io.open_tls(lambda: HboneSession(False, on_request=on_request, lean=lean), conn, ctx,
                                 server_side=True, handshake_timeout=10)

    await serve_sockets(port, on_socket)


async def forwarder_client(directory: Path, port: int, upstream: int, target: int, lean: bool) -> None:
    from shoal import identity, native_io
    from shoal.hbone_io import HboneSession

    ctx = identity.client_context(load_credential(directory, "client"))
    _, session = await native_io.open_tls(lambda: HboneSession(True, lean=lean), await connected(upstream), ctx,
                                          server_side=False, handshake_timeout=10)
    identity.check_peer(session.ssl_object, identity.parse_spiffe_id(SERVER_ID))

    await relay_listener(port, lambda: session.open(f"127.0.0.1:{target}"))


async def tls_server(directory: Path, port: int, target: int) -> None:
    """The `tls` set-up's far end: TLS in, plain TCP to one fixed target (no HTTP/2 at all)."""
    from shoal import identity
    from shoal.hbone_relay import TcpSide

    loop = asyncio.get_running_loop()
    ctx = identity.server_context(load_credential(directory, "server"))

    async def app():
        return (await loop.create_connection(TcpSide, "127.0.0.1", target))[1]

    await relay_listener(port, app, ctx)


async def tls_client(directory: Path, port: int, upstream: int) -> None:
    """The `tls` set-up's near end: plain TCP in, one TLS connection out per connection."""
    from shoal import identity
    from shoal.hbone_relay import TcpSide

    loop = asyncio.get_running_loop()
    ctx = identity.client_context(load_credential(directory, "client"))

    async def far():
        return (await loop.create_connection(TcpSide, "127.0.0.1", upstream, ssl=ctx, server_hostname=""))[1]

    await relay_listener(port, far)


def echo_server(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()


# --- measuring ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(*args: str, relay: str = "") -> subprocess.Popen:
    env = {**os.environ, "SHOAL_RELAY": relay} if relay else None
    proc = subprocess.Popen([sys.executable, "-m", "bench.hbone_latency", *args], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"{' '.join(args)} did not start")
    return proc


PING_PONG_WARMUP = 200   # round trips not timed (they are in the CPU figure)


def ping_pong(port: int, count: int, size: int = 1024) -> list[float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"p" * size
    times = []
    for i in range(count + PING_PONG_WARMUP):
        start = time.perf_counter()
        sock.sendall(message)
        got = 0
        while got < size:
            got += len(sock.recv(size - got))
        if i >= PING_PONG_WARMUP:
            times.append((time.perf_counter() - start) * 1000)
    sock.close()
    return times


def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    """User plus system CPU of these processes so far (/proc/PID/stat, fields 14 and 15)."""
    total = 0
    for proc in procs:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def iperf(port: int, streams: int, seconds: float) -> float:
    for attempt in range(5):
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", str(streams), "-t",
                              str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 30)
        # Through a relay the previous test's last bytes can reach the iperf3 server after its client has
        # exited, so the next test may find the server still busy with it: that is a wait, not a failure.
        if "server is busy" not in out.stdout:
            break
        time.sleep(0.5)
    if out.returncode != 0:
        raise SystemExit(f"iperf3 failed: {out.stderr or out.stdout[-500:]}")
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def measure(setup: str, directory: Path, args) -> list[dict]:
    procs, relays = [], []
    echo_port, iperf_port = free_port(), free_port()
    procs.append(spawn("--role", "echo", "--port", str(echo_port)))
    procs.append(subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    time.sleep(0.3)
    try:
        if setup == "direct":
            echo_entry, iperf_entry = echo_port, iperf_port
        elif setup == "tls":
            echo_entry, iperf_entry = free_port(), free_port()
            for entry, target in ((echo_entry, echo_port), (iperf_entry, iperf_port)):
                far = free_port()
                relays.append(spawn("--role", "tls-server", "--dir", str(directory), "--port", str(far),
                                    "--target", str(target)))
                relays.append(spawn("--role", "tls-client", "--dir", str(directory), "--port", str(entry),
                                    "--upstream", str(far)))
        else:
            lean = [] if setup == "hbone-plain-h2" else ["--lean"]
            relay = {"hbone-python-relay": "python", "hbone-compiled-relay": "compiled"}.get(setup, "")
            hbone_port = free_port()
            relays.append(spawn("--role", "server", "--dir", str(directory), "--port", str(hbone_port), *lean,
                                relay=relay))
            echo_entry, iperf_entry = free_port(), free_port()
            relays.append(spawn("--role", "client", "--dir", str(directory), "--port", str(echo_entry),
                                "--upstream", str(hbone_port), "--target", str(echo_port), *lean, relay=relay))
            relays.append(spawn("--role", "client", "--dir", str(directory), "--port", str(iperf_entry),
                                "--upstream", str(hbone_port), "--target", str(iperf_port), *lean, relay=relay))
        procs += relays
        rows = []
        lat, cpu = [], []
        for _ in range(args.repeats):
            before = cpu_seconds(relays)
            lat.append(sorted(ping_pong(echo_entry, args.round_trips)))
            cpu.append((cpu_seconds(relays) - before) / (args.round_trips + PING_PONG_WARMUP) * 1e6)
        row = {"setup": setup, "case": "ping-pong-1KiB", "round_trips": args.round_trips, "repeats": args.repeats}
        for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            row.update(summarize((percentile(v, q) for v in lat), name))
        if relays:
            row.update(summarize(cpu, "relay_cpu_us"))
        rows.append(row)
        for streams in (1, 4):
            values = [iperf(iperf_entry, streams, args.seconds) for _ in range(args.repeats)]
            rows.append({"setup": setup, "case": "throughput", "streams": streams, **summarize(values, "gbps"),
                         "repeats": args.repeats})
        return rows
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "server", "client", "echo", "tls-server", "tls-client"),
                        default="bench")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream", type=int)
    parser.add_argument("--target", type=int)
    parser.add_argument("--lean", action="store_true")
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--setups", default="direct,tls,hbone,hbone-compiled-relay,hbone-python-relay,hbone-plain-h2")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1: iperf3 runs whole seconds (and -t 0 runs forever)")
    if args.role != "bench":
        from shoal import lifecycle
        lifecycle.install_uvloop()
        if args.role == "echo":
            echo_server(args.port)
        elif args.role == "server":
            asyncio.run(forwarder_server(args.dir, args.port, args.lean))
        elif args.role == "tls-server":
            asyncio.run(tls_server(args.dir, args.port, args.target))
        elif args.role == "tls-client":
            asyncio.run(tls_client(args.dir, args.port, args.upstream))
        else:
            asyncio.run(forwarder_client(args.dir, args.port, args.upstream, args.target, args.lean))
        return 0

    run = Run("hbone", {"round_trips": args.round_trips, "seconds": args.seconds, "repeats": args.repeats})
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        directory = Path(tmp)
        make_credentials(directory)
        for setup in args.setups.split(","):
            run.results += measure(setup, directory, args)
    base = {r["case"] + str(r.get("streams", "")): r for r in run.results if r["setup"] == "direct"}
    shown = []
    for r in run.results:
        ref = base.get(r["case"] + str(r.get("streams", "")))
        if "gbps" in r:
            shown.append({"setup": r["setup"], "case": f"tcp {r['streams']} stream(s)", "Gbit/s": r["gbps"],
                          "vs direct": f"{r['gbps'] / ref['gbps']:.2f}x" if ref else ""})
        else:
            if ref:
                r["added_p50_ms"], r["added_p99_ms"] = r["p50_ms"] - ref["p50_ms"], r["p99_ms"] - ref["p99_ms"]
            shown.append({"setup": r["setup"], "case": r["case"], "p50 ms": r["p50_ms"], "p90 ms": r["p90_ms"],
                          "p99 ms": r["p99_ms"], "relay CPU-us/rt": r.get("relay_cpu_us", "")})
    print(table(shown, ["setup", "case", "p50 ms", "p90 ms", "p99 ms", "relay CPU-us/rt", "Gbit/s", "vs direct"]))
    print(f"wrote {run.write(under=args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
