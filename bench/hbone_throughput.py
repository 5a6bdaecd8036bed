"""HBONE core throughput in memory: h2's plain receive path against shoal's lean one.

No sockets and no TLS: one client and one server `shoal.hbone` connection
pass bytes in memory, so the figure is the protocol core's own cost per byte
(and per message), the ceiling the ztunnel's HBONE relay can reach.

    .venv/bin/python -m bench.hbone_throughput [--seconds 2] [--repeats 3]

Prints a table and writes bench/results/<timestamp>-hbone-core/results.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.report import RESULTS_DIR, Run, summarize, table
from shoal import hbone


def _pair(lean: bool):
    client, server = hbone.HboneClient(lean=lean), hbone.HboneServer(lean=lean)
    client.initiate()
    server.initiate()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    sid = client.open("198.19.2.5:8080")
    server.receive_data(client.data_to_send())
    server.accept(sid)
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server, sid


def bulk(lean: bool, write_size: int, seconds: float) -> float:
    """Gbit/s of one stream: send, receive on the peer, consume (window update back)."""
    client, server, sid = _pair(lean)
    payload = b"\xab" * write_size
    moved = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(8):
            paused = client.send(sid, payload)  # [ReadingPaused] once bytes wait for window
            for ev in server.receive_data(client.data_to_send()):
                if ev.__class__ is hbone.DataReceived:
                    server.consumed(sid, ev.flow_controlled_length)
                    moved += len(ev.data)
            client.receive_data(server.data_to_send())
            if paused:
                break
    return moved * 8 / (time.perf_counter() - start) / 1e9


def ping_pong(lean: bool, size: int, seconds: float) -> float:
    """Microseconds per 1 KiB request and reply, each received and consumed."""
    client, server, sid = _pair(lean)
    message = b"m" * size
    count = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        client.send(sid, message)
        for ev in server.receive_data(client.data_to_send()):
            if ev.__class__ is hbone.DataReceived:
                server.consumed(sid, ev.flow_controlled_length)
                server.send(sid, ev.data)
        for ev in client.receive_data(server.data_to_send()):
            if ev.__class__ is hbone.DataReceived:
                client.consumed(sid, ev.flow_controlled_length)
        server.receive_data(client.data_to_send())
        count += 1
    return (time.perf_counter() - start) / count * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    run = Run("hbone-core", {"seconds": args.seconds, "repeats": args.repeats, "hbone": hbone.Settings().__dict__})
    shown = []
    for case, fn, param, unit in (
        ("bulk-256KiB", bulk, 256 << 10, "gbps"),
        ("bulk-16KiB", bulk, 16 << 10, "gbps"),
        ("ping-pong-1KiB", ping_pong, 1024, "us_per_round_trip"),
    ):
        for path in ("plain-h2", "lean"):
            values = [fn(path == "lean", param, args.seconds) for _ in range(args.repeats)]
            row = run.add(setup=f"hbone-core-{path}", case=case, **summarize(values, unit), repeats=args.repeats)
            shown.append({"case": case, "path": path, "median": row[unit], "min": row[f"{unit}_min"],
                          "max": row[f"{unit}_max"], "unit": unit})
    print(table(shown, ["case", "path", "median", "min", "max", "unit"]))
    print(f"wrote {run.write(under=args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
