"""An open-loop HTTP/1.1 load generator, and the small server it talks to.

    python -m bench.loadgen client --url http://HOST:PORT/ --rps 1000 --connections 4 --duration 30 --warmup 5
    python -m bench.loadgen server --port 8080 --body-bytes 1024

The client sends requests on a fixed schedule, whatever the responses do:
request i is due at t0 + i/rps, and connection k carries every k-th request
(keep-alive). A request is timed from its *intended* time when its connection
was still busy then, because that wait is the system holding it back
(coordinated omission). When the connection was free, it is timed from the
actual send, because the lateness of a timer wake-up is the generator's own
(BENCHMARKS.md: timing everything from the intended time buried a 0.04 ms
baseline under the generator's jitter). Every timestamp is
`time.perf_counter()`, never the loop's clock.

It prints one JSON object: the percentiles in milliseconds, the achieved
rate, and the error count. Both sides run on the default asyncio loop, with
uvloop when available.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.report import percentile

MAX_HEADER = 64 * 1024


def timed_from(intended: float, sent: float, previous_done: float) -> float:
    """When a request's latency starts: its intended time if its connection was still busy with the
    previous request then (the system held it back), else its actual send (a late timer is ours)."""
    return intended if previous_done > intended else sent


@dataclass(frozen=True)
class Sample:
    """One measured request, every time from `time.perf_counter()`."""
    intended: float
    sent: float
    done: float
    latency: float      # done - timed_from(intended, sent, previous done)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_client(url: str, rps: float, connections: int, duration: float, warmup: float,
                     body_bytes: int = 0, samples: list[Sample] | None = None) -> dict:
    """Runs the schedule and returns the summary; with `samples`, also appends every measured request."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = parts.path or "/"
    body = b"x" * body_bytes
    method = b"POST" if body else b"GET"
    request = (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
               + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    interval = 1.0 / rps
    streams = [await asyncio.open_connection(host, port, limit=MAX_HEADER) for _ in range(connections)]
    t0 = time.perf_counter() + 0.05
    measure_from = t0 + warmup
    end = t0 + warmup + duration
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def connection(k: int, reader, writer) -> None:
        nonlocal errors, sent
        i = k
        previous_done = 0.0
        while True:
            intended = t0 + i * interval
            if intended >= end:
                return
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            send_time = time.perf_counter()
            start = timed_from(intended, send_time, previous_done)
            try:
                writer.write(request)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                return
            previous_done = time.perf_counter()
            if intended >= measure_from:
                sent += 1
                if status >= 400:
                    errors += 1
                else:
                    latencies.append(previous_done - start)
                    if samples is not None:
                        samples.append(Sample(intended, send_time, previous_done, previous_done - start))
            i += connections

    await asyncio.gather(*(connection(k, r, w) for k, (r, w) in enumerate(streams)))
    for _, writer in streams:
        writer.close()
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    result = {"rps_target": rps, "rps_achieved": round(len(latencies) / duration, 1), "connections": connections,
              "requests": sent, "errors": errors, "duration_s": duration}
    if ms:
        for name, fraction in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("p999_ms", 0.999)):
            result[name] = round(percentile(ms, fraction), 4)
        result["max_ms"] = round(ms[-1], 4)
    return result


async def run_server(host: str, port: int, body_bytes: int) -> None:
    body = b"x" * body_bytes
    response = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and int(value):
                        await reader.readexactly(int(value))
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEADER, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="role", required=True)
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--rps", type=float, default=1000)
    c.add_argument("--connections", type=int, default=4)
    c.add_argument("--duration", type=float, default=30)
    c.add_argument("--warmup", type=float, default=5)
    c.add_argument("--body-bytes", type=int, default=0, help="request body (POST); 0 sends a GET")
    s = sub.add_parser("server")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--body-bytes", type=int, default=1024)
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    if args.role == "server":
        asyncio.run(run_server(args.host, args.port, args.body_bytes))
        return 0
    if args.rps <= 0 or args.connections <= 0 or args.duration <= 0:
        parser.error("--rps, --connections and --duration must be positive")
    result = asyncio.run(run_client(args.url, args.rps, args.connections, args.duration, args.warmup,
                                    args.body_bytes))
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
