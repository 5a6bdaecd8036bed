"""Control-plane push time and memory: `python -m bench config_push`.

For each size (1,000 and 10,000 workloads by default):
1. a throw-away local-cluster store (under a temp SHOAL_RUN_ROOT) is filled
   with one ambient namespace and N running pods spread over the nodes;
2. the real `shoal control-plane --source local` process is started on it;
3. S subscribers (100 by default, one per node, as S ztunnels would be) open
   Config.Watch over TLS with their node tokens and ack every response;
4. C times, one pod's labels are changed in the store, and each subscriber's
   receipt of the Workload response carrying that pod is timed from the
   moment just before the store write. So a figure covers the store's watch,
   the translator, the diff, the encoding and gRPC to every subscriber.

Figures: push time to every subscriber (per change: the slowest subscriber)
as p50/p99, per-delivery p50/p99, the server's own push time (from its
histogram: the change applied to its state -> the response written, as the
bound of the bucket holding the quantile), time for all subscribers to get
the initial snapshot, and the control plane's RSS after that. The gap
between the server's figure and the delivery figure is the store's watch
poll (20 ms), the translator, and the subscribers' side. The subscribers are raw
gRPC clients in this one process (no model conversion), so a delivery time
also includes this process's own queueing behind the other 99 - on 2 cores
shared with the server, that is part of what is measured.

Each size runs `--repeats` times (3), each with a fresh store and control
plane; every figure is the median of the runs, with `_min` and `_max`.
Bounded: sizes, subscribers, changes and repeats are flags; the default run
takes under a minute. Prints a table and writes bench/results/<timestamp>/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.report import Run, percentile, summarize, table
from shoal import tokens
from shoal.api import config_pb2, config_pb2_grpc
from shoal.config_client import ClientSettings, open_channel
from shoal.store import Store

CLUSTER = "bench"
NAMESPACE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fill_store(root: Path, workloads: int, nodes: int) -> dict[str, str]:
    store = Store(CLUSTER, root=root)
    store.init()
    node_tokens = {f"node{i}": f"bench-token-{i:03d}-" + os.urandom(8).hex() for i in range(1, nodes + 1)}
    (root / CLUSTER / "bootstrap-tokens.json").write_text(json.dumps({t: n for n, t in node_tokens.items()}))
    store.apply({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": NAMESPACE, "labels": {"shoal.io/dataplane-mode": "ambient"}}})
    pods = []
    for i in range(workloads):
        node = i % nodes + 1
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"pod-{i}", "namespace": NAMESPACE,
                                  "labels": {"app": f"app-{i % 50}", "version": "v1"}},
                     "spec": {"nodeName": f"node{node}", "serviceAccountName": f"sa-{i % 50}",
                              "containers": [{"name": "app"}]},
                     # A new object is stored with the status it is given: the kubelet's part, done here.
                     "status": {"phase": "Running", "podIP": f"198.19.{node % 250}.{(i // nodes) % 250 + 2}"}})
    for start in range(0, len(pods), 1000):
        store.apply_many(pods[start:start + 1000])
    return node_tokens


def server_push_quantiles(http_port: int) -> dict:
    """The control plane's own view (change applied -> response written), from its histogram:
    the upper bound of the bucket holding each quantile."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("shoal_xds_push_time_seconds_bucket{") and 'type="Workload"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out = {}
    for name, q in (("server_push_p50_ms_le", 0.5), ("server_push_p99_ms_le", 0.99)):
        bound = next((le for le, count in buckets if total and count >= q * total), None)
        out[name] = None if bound is None or bound == float("inf") else bound * 1000
    return out


class Subscriber:
    """A raw Watch client: acks everything, records when each key arrives."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.arrivals: dict[str, float] = {}
        self.initial_workloads = 0
        self.initial_done = asyncio.Event()
        self.types_seen: set[str] = set()

    async def run(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(config_pb2.WatchRequest(subscribe=config_pb2.Subscribe(node=self.settings.node)))

        async def requests():
            while True:
                yield await queue.get()

        async with open_channel(self.settings) as channel:
            call = config_pb2_grpc.ConfigStub(channel).Watch(requests(),
                                                             metadata=tokens.metadata(self.settings.token))
            async for response in call:
                now = time.perf_counter()
                if response.type == "Workload":
                    for resource in response.resources:
                        self.arrivals[resource.workload.name] = now
                    if response.initial:
                        self.initial_workloads = len(response.resources)
                self.types_seen.add(response.type)
                if len(self.types_seen) == 5:
                    self.initial_done.set()
                queue.put_nowait(config_pb2.WatchRequest(ack=config_pb2.Ack(type=response.type,
                                                                              nonce=response.nonce)))


async def measure(root: Path, store: Store, node_tokens: dict[str, str], grpc_port: int, changes: int,
                  cp_pid: int) -> dict:
    bundle = (root / CLUSTER / "ca" / "bundle.pem").read_bytes()
    subscribers = [Subscriber(ClientSettings(target=f"127.0.0.1:{grpc_port}", bundle_pem=bundle, token=token,
                                             node=node)) for node, token in node_tokens.items()]
    started = time.perf_counter()
    tasks = [asyncio.create_task(s.run()) for s in subscribers]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.initial_done.wait() for s in subscribers)), 300)
        initial_sync = time.perf_counter() - started
        rss = rss_mb(cp_pid)
        to_all, deliveries = [], []
        for c in range(changes):
            name = f"pod-{(c * 7919) % max(1, len(subscribers[0].arrivals))}"
            for s in subscribers:
                s.arrivals.pop(name, None)
            t0 = time.perf_counter()
            await asyncio.to_thread(store.patch_metadata, "Pod", NAMESPACE, name,
                                    labels={"app": "changed", "version": f"v{c + 2}"})
            deadline = t0 + 30
            while any(name not in s.arrivals for s in subscribers):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"change {c} did not reach every subscriber within 30 s")
                await asyncio.sleep(0.001)
            times = [(s.arrivals[name] - t0) * 1000 for s in subscribers]
            deliveries.extend(times)
            to_all.append(max(times))
            await asyncio.sleep(0.05)
        to_all.sort()
        deliveries.sort()
        return {
            "initial_sync_s": initial_sync, "rss_mb": rss,
            "p50_ms": percentile(to_all, 0.50), "p99_ms": percentile(to_all, 0.99),
            "delivery_p50_ms": percentile(deliveries, 0.50), "delivery_p99_ms": percentile(deliveries, 0.99),
            "initial_workloads": subscribers[0].initial_workloads,
        }
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_size(workloads: int, subscribers: int, changes: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-cp-"))
    proc = None
    try:
        t = time.perf_counter()
        node_tokens = fill_store(root, workloads, subscribers)
        fill_s = time.perf_counter() - t
        grpc_port, http_port = free_port(), free_port()
        log = open(root / "control-plane.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", "--log-format", "json", "--log-level", "warning", "control-plane",
             "--source", "local", "--cluster", CLUSTER, "--listen", f"127.0.0.1:{grpc_port}",
             "--http", f"127.0.0.1:{http_port}"],
            env={**os.environ, "SHOAL_RUN_ROOT": str(root)}, stdout=log, stderr=subprocess.STDOUT)
        t = time.perf_counter()
        deadline = t + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"control plane did not become ready; see {root / 'control-plane.log'}")
            time.sleep(0.05)
        ready_s = time.perf_counter() - t
        figures = asyncio.run(measure(root, Store(CLUSTER, root=root), node_tokens, grpc_port, changes, proc.pid))
        figures.update(server_push_quantiles(http_port))
        return {"setup": "control-plane", "case": "config-push", "workloads": workloads,
                "subscribers": subscribers, "changes": changes, "store_fill_s": fill_s, "ready_s": ready_s,
                **figures}
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


FIGURES = ("p50_ms", "p99_ms", "delivery_p50_ms", "delivery_p99_ms", "server_push_p50_ms_le",
           "server_push_p99_ms_le", "initial_sync_s", "ready_s", "rss_mb", "store_fill_s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench config_push", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="workload counts, comma-separated")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--changes", type=int, default=20, help="changes timed per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (a fresh control plane each)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if (not 1 <= args.subscribers <= 250 or not 1 <= args.changes <= 200 or not 1 <= args.repeats <= 10
            or any(not 1 <= s <= 50_000 for s in sizes)):
        parser.error("keep it bounded: 1-250 subscribers, 1-200 changes, 1-10 repeats, 1-50000 workloads")
    run = Run("config_push", {"sizes": sizes, "subscribers": args.subscribers, "changes": args.changes,
                              "repeats": args.repeats, "transport": "gRPC over TLS on loopback",
                              "source": "local store"})
    for size in sizes:
        runs = []
        for repeat in range(args.repeats):
            print(f"config_push: {size} workloads, {args.subscribers} subscribers, {args.changes} changes "
                  f"(run {repeat + 1}/{args.repeats}) ...", file=sys.stderr)
            runs.append(run_size(size, args.subscribers, args.changes))
        row = {k: runs[0][k] for k in ("setup", "case", "workloads", "subscribers", "changes")}
        row["repeats"] = args.repeats
        for figure in FIGURES:
            values = [r[figure] for r in runs if r.get(figure) is not None]
            row.update(summarize(values, figure))
        run.add(**row)
    path = run.write()
    print(table(run.results, ["workloads", "subscribers", *FIGURES[:-1]],
                title="Config push: a pod change to every subscriber (ms, median of the runs); "
                      "control-plane RSS (MB)"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
