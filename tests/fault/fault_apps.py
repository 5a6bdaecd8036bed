"""The fault suite's apps, run inside pods: `python fault_apps.py server PORT | load HOST PORT OUT [options] |
once HOST PORT [--size N --pieces N --pause S]`.

The protocol checks every byte both ways. The client sends a 16-byte header
(payload size, seed) and then the payload; the server echoes each chunk as it
arrives, and once it has read the whole payload it sends the SHA-256 of what
it read and closes. The client compares the echo with what it sent, and the
digest with its own, so a byte lost, changed or reordered in either direction
fails the connection. The server prints `accepted <peer address>` for every
connection, so a test can see who reached the app.

`once` makes one connection and prints `flowing` when the first echo came
back, then its outcome with its start and end times (JSON); with --hold-at it
stops before that piece until a line arrives on its stdin.

`load` opens connections at a paced rate, a bounded number at once, until it
has opened `--count` or `--deadline` seconds have passed, whichever comes
first, and then waits for those open (each has its own time limit). Some
connections are long: they send in pieces with pauses, so that they are
established across the faults the test makes meanwhile. It writes one JSON
record per connection (start, end, size, outcome) and a summary to OUT.
"""

import argparse
import asyncio
import hashlib
import json
import random
import struct
import sys
import time

HEADER = struct.Struct("!QQ")
CHUNK = 64 * 1024


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    print(f"accepted {writer.get_extra_info('peername')[0]}", flush=True)
    try:
        size, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
        digest, left = hashlib.sha256(), size
        while left:
            chunk = await reader.read(min(left, CHUNK))
            if not chunk:
                return                     # the client went away early: no digest for it
            digest.update(chunk)
            left -= len(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.write(digest.digest())
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def server(port: int) -> None:
    srv = await asyncio.start_server(serve_one, "0.0.0.0", port, backlog=1024)
    print("ready", flush=True)
    async with srv:
        await srv.serve_forever()


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


PIECES = 8


async def one_connection(host: str, port: int, size: int, seed: int, long: bool, limit: float, *,
                         pieces: int = PIECES, pause: tuple[float, float] = (0.3, 1.5), flowing=None,
                         hold_at: int | None = None) -> str:
    """The outcome: ok, reset, refused, mismatch, short, timeout, or error:<what>. A long connection
    sends its payload in `pieces`, pausing between them; `flowing()` is called at the first echo;
    with `hold_at`, it waits for a line on stdin before sending that piece."""
    data = payload(size, seed)

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(HEADER.pack(size, seed))
        step = max(1, -(-size // (pieces if long else 1)))
        for piece, offset in enumerate(range(0, size, step)):
            if piece == hold_at:
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            writer.write(data[offset:offset + step])
            await writer.drain()
            if long:
                await asyncio.sleep(random.uniform(*pause))
        await writer.drain()

    async def receive(reader: asyncio.StreamReader) -> bytes:
        got = bytearray()
        while chunk := await reader.read(CHUNK):
            if not got and flowing:
                flowing()
            got += chunk
        return bytes(got)

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return (await asyncio.gather(send(writer), receive(reader)))[1]
        finally:
            writer.close()

    try:
        got = await asyncio.wait_for(exchange(), limit)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except asyncio.TimeoutError:
        return "timeout"
    except OSError as e:
        return f"error:{type(e).__name__}:{e.errno}"
    if len(got) < size + 32:
        return "short"
    if got[:size] != data or got[size:] != hashlib.sha256(data).digest():
        return "mismatch"
    return "ok"


async def load(args) -> dict:
    rng = random.Random(args.seed)
    records: list[dict] = []
    in_flight: set[asyncio.Task] = set()
    slots = asyncio.Semaphore(args.concurrency)
    started_at = time.time()
    interval = 1.0 / args.rate
    longest_pause = args.longest / PIECES   # a long connection's pauses add up to at most --longest

    async def run(i: int) -> None:
        size = rng.randrange(0, args.max_size + 1) if rng.random() < 0.1 else rng.randrange(0, 16 * 1024)
        long = rng.random() < args.long_fraction
        start = time.time()
        try:
            outcome = await one_connection(args.host, args.port, size, args.seed * 1_000_003 + i, long, args.limit,
                                           pause=(min(0.3, longest_pause), longest_pause))
        except Exception as e:  # noqa: BLE001 - recorded, never hidden
            outcome = f"error:{type(e).__name__}:{e}"
        finally:
            slots.release()
        records.append({"i": i, "start": start, "end": time.time(), "size": size, "long": long, "outcome": outcome})

    opened = 0
    next_at = time.monotonic()
    while opened < args.count and time.time() - started_at < args.deadline:
        await slots.acquire()
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = max(next_at + interval, time.monotonic() - 1.0)   # no burst after a stall
        task = asyncio.create_task(run(opened))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        opened += 1
    if in_flight:
        await asyncio.wait(set(in_flight))
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {"opened": opened, "finished": len(records), "outcomes": outcomes,
            "bytes": sum(r["size"] for r in records if r["outcome"] == "ok"),
            "started": started_at, "ended": time.time(), "records": records}


async def once(args) -> dict:
    start = time.time()
    outcome = await one_connection(args.host, args.port, args.size, args.seed, args.pieces > 1, args.limit,
                                   pieces=args.pieces, pause=(args.pause, args.pause),
                                   flowing=lambda: print("flowing", flush=True), hold_at=args.hold_at)
    return {"outcome": outcome, "start": start, "end": time.time()}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("port", type=int)
    c = sub.add_parser("load")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("out")
    c.add_argument("--count", type=int, default=10_000)
    c.add_argument("--rate", type=float, default=60.0, help="connections opened per second, at most")
    c.add_argument("--concurrency", type=int, default=64)
    c.add_argument("--max-size", type=int, default=512 * 1024)
    c.add_argument("--long-fraction", type=float, default=0.05)
    c.add_argument("--limit", type=float, default=60.0, help="seconds one connection may take")
    c.add_argument("--longest", type=float, default=12.0,
                   help="seconds a long connection pauses in all, at most (keep it under a drain deadline)")
    c.add_argument("--deadline", type=float, default=600.0, help="seconds after which no connection is opened")
    c.add_argument("--seed", type=int, default=1)
    o = sub.add_parser("once")
    o.add_argument("host")
    o.add_argument("port", type=int)
    o.add_argument("--size", type=int, default=4096)
    o.add_argument("--pieces", type=int, default=1)
    o.add_argument("--pause", type=float, default=0.0, help="seconds between pieces")
    o.add_argument("--hold-at", type=int, help="wait for a line on stdin before sending this piece")
    o.add_argument("--limit", type=float, default=10.0)
    o.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(server(args.port))
        return
    if args.mode == "once":
        print(json.dumps(asyncio.run(once(args))), flush=True)
        return
    print("loading", flush=True)
    result = asyncio.run(load(args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "records"}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
