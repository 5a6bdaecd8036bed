"""What the waypoint adds: HTTP latency and cost through the local cluster, L4 against L7.

    python -m bench.waypoint_latency [--setups baseline,ambient-l4,ambient-l7] [--rps 500] [--duration 20]
                                     [--repeats 3] [--cluster benchwp] [--keep]

Set-ups (BENCHMARKS.md names), each in its own namespace, client pod on node1,
server pod on node2 behind a Service (the same pods as `bench.latency`):
- `baseline`: no mesh;
- `ambient-l4`: the namespace enrolled: ztunnel, HBONE, ztunnel;
- `ambient-l7`: enrolled and bound to a waypoint (`shoal waypoint apply`):
  ztunnel, HBONE to the waypoint, HTTP parsed and routed, HBONE to the
  server's ztunnel.
The load is `bench.loadgen` (open loop, HTTP/1.1, 1 KiB bodies). Cost is the
CPU seconds per 1000 requests and the resident memory of the ztunnels, and of
the waypoint pod for `ambient-l7`, read from their cgroups. One iperf3 stream
shows what opaque TCP through the waypoint costs.

Prints a table and writes bench/results/<timestamp>-waypoint-latency/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.latency import manifest, mesh_usage, pod_usage, shoal
from bench.report import Run, summarize, table
from shoal.local import cluster as local_cluster
from shoal.local.layout import Layout

SETUPS = {
    "baseline": {},
    "ambient-l4": {"shoal.io/dataplane-mode": "ambient"},
    "ambient-l7": {"shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"},
}


def usage(layout: Layout, namespace: str, setup: str) -> tuple[float, float, float, float]:
    """(ztunnel cpu, ztunnel rss, waypoint cpu, waypoint rss)."""
    zcpu, zrss = mesh_usage(layout, "ztunnel")
    wcpu, wrss = pod_usage(layout, namespace, "waypoint") if setup == "ambient-l7" else (0.0, 0.0)
    return zcpu, zrss, wcpu, wrss


def prepare(args, layout: Layout, setup: str) -> str:
    c = ["--cluster", args.cluster]
    namespace = f"benchwp-{setup}"
    shoal("local", "apply", "-f", "-", *c, input=manifest(namespace, SETUPS[setup], args.body_bytes))
    if setup == "ambient-l7":
        shoal("waypoint", "apply", "-n", namespace, *c)
    local_cluster.wait_ready(layout, [(namespace, "server"), (namespace, "client")], progress=lambda m: None,
                             timeout=60)
    url = f"http://server.{namespace}:8080/"
    deadline = time.monotonic() + 90
    while True:   # the path works end to end (through the waypoint, once it is deployed and has its config)
        try:
            code = shoal("local", "exec", "-n", namespace, "client", *c, "--", "curl", "-sS", "-m", "5", "-o",
                         "/dev/null", "-w", "%{http_code}", url, timeout=30)
            if code.strip() == "200":
                break
        except SystemExit:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{setup}: {url} did not answer 200 within 90s")
        time.sleep(1)
    if setup == "ambient-l7":
        dump = shoal("waypoint", "list", "-n", namespace, *c)
        if "1/1" not in dump:
            raise SystemExit(f"{setup}: the waypoint is not ready:\n{dump}")
    return namespace


def run_setup(args, layout: Layout, run: Run, setup: str) -> None:
    c = ["--cluster", args.cluster]
    namespace = prepare(args, layout, setup)
    url = f"http://server.{namespace}:8080/"
    results, zcpu_per_1000, wcpu_per_1000, zrss, wrss = [], [], [], [], []
    for _ in range(args.repeats):
        before = usage(layout, namespace, setup)
        out = shoal("local", "exec", "-n", namespace, "client", *c, "--", sys.executable, "-m", "bench.loadgen",
                    "client", "--url", url, "--rps", str(args.rps), "--connections", str(args.connections),
                    "--duration", str(args.duration), "--warmup", str(args.warmup))
        after = usage(layout, namespace, setup)
        result = json.loads(out)
        results.append(result)
        requests = max(result["rps_achieved"] * (args.duration + args.warmup), 1)
        zcpu_per_1000.append((after[0] - before[0]) / requests * 1000)
        wcpu_per_1000.append((after[2] - before[2]) / requests * 1000)
        zrss.append(after[1])
        wrss.append(after[3])
    row = {"setup": setup, "case": "http-latency", "placement": "cross-node", "rps_target": args.rps,
           "connections": args.connections, "repeats": args.repeats}
    for key in ("rps_achieved", "p50_ms", "p90_ms", "p99_ms", "p999_ms"):
        row.update(summarize([r[key] for r in results if key in r], key))
    row.update(summarize(zcpu_per_1000, "ztunnel_cpu_per_1000rps"))
    row.update(summarize(wcpu_per_1000, "waypoint_cpu_per_1000rps"))
    row.update(summarize(zrss, "ztunnel_rss_mb"))
    row.update(summarize(wrss, "waypoint_rss_mb"))
    run.add(**row)
    if args.iperf_seconds:
        gbps = []
        for _ in range(args.repeats):
            out = shoal("local", "exec", "-n", namespace, "client", *c, "--", "iperf3", "-c", f"server.{namespace}",
                        "-p", "5201", "-t", str(args.iperf_seconds), "-J")
            gbps.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
        run.add(setup=setup, case="throughput", placement="cross-node", streams=1, repeats=args.repeats,
                **summarize(gbps, "gbps"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waypoint_latency")
    parser.add_argument("--setups", default="baseline,ambient-l4,ambient-l7")
    parser.add_argument("--cluster", default="benchwp")
    parser.add_argument("--redirect", default="iptables")
    parser.add_argument("--rps", type=float, default=500)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--iperf-seconds", type=int, default=3, help="0 skips the throughput case")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args(argv)
    setups = args.setups.split(",")
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown set-up {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    layout = Layout(args.cluster)
    run = Run("waypoint-latency", {k: v for k, v in vars(args).items() if k != "keep"})
    print(f"bringing up cluster {args.cluster!r}", flush=True)
    local_cluster.up(layout, 2, args.redirect, progress=lambda m: print(f"  {m}", flush=True))
    try:
        for setup in setups:
            print(f"measuring {setup} ({args.repeats} x {args.duration:.0f}s at {args.rps:.0f} rps)", flush=True)
            run_setup(args, layout, run, setup)
    finally:
        if not args.keep:
            local_cluster.down(layout, progress=lambda m: None)
    latency = [r for r in run.results if r["case"] == "http-latency"]
    base = next((r for r in latency if r["setup"] == "baseline"), None)
    l4 = next((r for r in latency if r["setup"] == "ambient-l4"), None)
    for row in latency:
        for p in ("p50_ms", "p90_ms", "p99_ms"):
            if base and row.get(p) is not None and base.get(p) is not None:
                row[f"added_{p}"] = row[p] - base[p]
            if l4 and row["setup"] == "ambient-l7" and row.get(p) is not None and l4.get(p) is not None:
                row[f"waypoint_added_{p}"] = row[p] - l4[p]
    print(table(latency, ["setup", "rps_achieved", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "added_p50_ms",
                          "added_p99_ms", "waypoint_added_p50_ms", "waypoint_added_p99_ms"],
                "HTTP/1.1 latency, cross-node (ms)"))
    print()
    print(table(latency, ["setup", "ztunnel_cpu_per_1000rps", "waypoint_cpu_per_1000rps", "ztunnel_rss_mb",
                          "waypoint_rss_mb"], "Cost (CPU seconds per 1000 requests, resident MiB)"))
    throughput = [r for r in run.results if r["case"] == "throughput"]
    if throughput:
        print()
        print(table(throughput, ["setup", "streams", "gbps", "gbps_min", "gbps_max"], "Throughput, 1 stream (Gbit/s)"))
    print(f"\nwrote {run.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
