"""Latency and throughput through the local cluster: no mesh, the ambient mesh, and its waypoint.

    python -m bench.latency [--setups baseline,ambient-l4,ambient-l7] [--rps 1000] [--duration 30] [--repeats 3]

Each set-up (BENCHMARKS.md names) gets its own namespace with a client pod on
node1 and a server pod on node2 behind a Service:
- `baseline`: no mesh;
- `ambient-l4`: the namespace enrolled: ztunnel, HBONE, ztunnel;
- `ambient-l7`: enrolled and bound to a waypoint (`shoal waypoint apply`):
  ztunnel, HBONE to the waypoint, HTTP parsed and routed, HBONE onwards.
The client runs `bench.loadgen` (open loop, HTTP/1.1, 1 KiB responses, timed
as BENCHMARKS.md says) and iperf3 (1 and 8 streams). The mesh's cost is the
CPU time and resident memory of the ztunnels, and of the waypoint for
`ambient-l7` (read from their cgroups) over the latency run, and the memory
of every shoal-system pod.

It prints a table and writes bench/results/<timestamp>-latency/results.json.
The cluster it makes (`--cluster bench`) is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.report import Run, summarize, table
from shoal.local import cluster as local_cluster
from shoal.local import observe
from shoal.local.layout import Layout

SETUPS = {
    # name: namespace labels
    "baseline": {},
    "ambient-l4": {"shoal.io/dataplane-mode": "ambient"},
    "ambient-l7": {"shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"},
}
READY_SECONDS = 90


def manifest(namespace: str, labels: dict, body_bytes: int) -> str:
    python = sys.executable
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server", "namespace": namespace,
                                                         "labels": {"app": "server"}},
         "spec": {"nodeName": "node2", "containers": [
             {"name": "http", "command": [python, "-m", "bench.loadgen", "server", "--port", "8080",
                                          "--body-bytes", str(body_bytes)],
              "readinessProbe": {"tcpSocket": {"port": 8080}}},
             {"name": "iperf", "command": ["iperf3", "-s", "-p", "5201"]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": namespace},
         "spec": {"selector": {"app": "server"},
                  "ports": [{"name": "http", "port": 8080}, {"name": "iperf", "port": 5201}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": namespace},
         "spec": {"nodeName": "node1", "containers": [{"name": "sh", "command": ["sleep", "infinity"]}]}},
    ]})


def shoal(*args: str, input: str | None = None, timeout: float = 600) -> str:
    result = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                            input=input, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"shoal {' '.join(args[:3])} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def mesh_usage(layout: Layout, component: str = "") -> tuple[float, float]:
    """CPU seconds and resident MiB of the shoal-system pods (whose name starts with `component`)."""
    return pod_usage(layout, "shoal-system", component)


def pod_usage(layout: Layout, namespace: str, prefix: str) -> tuple[float, float]:
    """CPU seconds and resident MiB of the pods of `namespace` whose name starts with `prefix`."""
    cpu, rss = 0.0, 0.0
    for cgroup in (layout.cgroup_dir / "pods").glob(f"{namespace}_{prefix}*"):
        for line in (cgroup / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec"):
                cpu += int(line.split()[1]) / 1e6
        for pid in (cgroup / "cgroup.procs").read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            rss += next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS")), 0) / 1024
    return cpu, rss


def run_setup(args, layout: Layout, run: Run, setup: str) -> list[dict]:
    c = ["--cluster", args.cluster]
    namespace = f"bench-{setup}"
    labels = SETUPS[setup]
    shoal("local", "apply", "-f", "-", *c, input=manifest(namespace, labels, args.body_bytes))
    if "shoal.io/use-waypoint" in labels:
        shoal("waypoint", "apply", "-n", namespace, "--name", labels["shoal.io/use-waypoint"], *c)
    local_cluster.wait_ready(layout, [(namespace, "server"), (namespace, "client")], progress=lambda m: None,
                             timeout=60)
    url = f"http://server.{namespace}:8080/"

    def status() -> str:
        return shoal("local", "exec", "-n", namespace, "client", *c, "--", "curl", "-sS", "-m", "5", "-o",
                     "/dev/null", "-w", "%{http_code}", url).strip()

    if labels:  # an enrolled set-up: wait for its first mTLS connection, not for a guess
        if observe.wait_for_mtls(layout, 1, status, source_namespace=namespace, timeout=READY_SECONDS) is None:
            raise SystemExit(f"{setup}: no mTLS connection from {namespace} in ztunnel-node1's log "
                             f"after {READY_SECONDS}s")
    deadline = time.monotonic() + READY_SECONDS
    while status() != "200":  # the whole path answers (a new waypoint needs its config and certificate)
        if time.monotonic() > deadline:
            raise SystemExit(f"{setup}: {url} did not answer 200 within {READY_SECONDS}s")
        time.sleep(0.5)
    rows = []
    latency_runs, cpu_per_1000, rss, mesh_rss, waypoint_cpu, waypoint_rss = [], [], [], [], [], []
    for _ in range(args.repeats):
        cpu0, _ = mesh_usage(layout, "ztunnel")
        wcpu0, _ = pod_usage(layout, namespace, "waypoint")
        out = shoal("local", "exec", "-n", namespace, "client", *c, "--", sys.executable, "-m", "bench.loadgen",
                    "client", "--url", url, "--rps", str(args.rps), "--connections", str(args.connections),
                    "--duration", str(args.duration), "--warmup", str(args.warmup))
        cpu1, rss_now = mesh_usage(layout, "ztunnel")
        wcpu1, wrss_now = pod_usage(layout, namespace, "waypoint")
        result = json.loads(out)
        latency_runs.append(result)
        requests = max(result["rps_achieved"] * (args.duration + args.warmup), 1)
        cpu_per_1000.append((cpu1 - cpu0) / requests * 1000)
        waypoint_cpu.append((wcpu1 - wcpu0) / requests * 1000)
        rss.append(rss_now)
        waypoint_rss.append(wrss_now)
        mesh_rss.append(mesh_usage(layout)[1])
    row = {"setup": setup, "case": "http-latency", "placement": "cross-node", "rps_target": args.rps,
           "connections": args.connections, "repeats": args.repeats}
    for key in ("rps_achieved", "p50_ms", "p90_ms", "p99_ms", "p999_ms"):
        row.update(summarize([r[key] for r in latency_runs if key in r], key))
    row.update(summarize(cpu_per_1000, "cpu_per_1000rps"))
    row.update(summarize(rss, "rss_mb"))  # the ztunnels, which carry the data path
    row.update(summarize(waypoint_cpu, "waypoint_cpu_per_1000rps"))
    row.update(summarize(waypoint_rss, "waypoint_rss_mb"))
    row.update(summarize(mesh_rss, "mesh_rss_mb"))  # every shoal-system pod (control plane, agents too)
    rows.append(run.add(**row))
    for streams in (1, 8):
        gbps = []
        for _ in range(args.repeats):
            out = shoal("local", "exec", "-n", namespace, "client", *c, "--", "iperf3", "-c", f"server.{namespace}",
                        "-p", "5201", "-t", str(args.iperf_seconds), "-P", str(streams), "-J")
            gbps.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
        rows.append(run.add(setup=setup, case="throughput", placement="cross-node", streams=streams,
                            repeats=args.repeats, **summarize(gbps, "gbps")))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    parser.add_argument("--setups", default="baseline,ambient-l4,ambient-l7")
    parser.add_argument("--cluster", default="bench")
    parser.add_argument("--redirect", default="auto")
    parser.add_argument("--rps", type=float, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--iperf-seconds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args(argv)
    setups = args.setups.split(",")
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown set-up {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    layout = Layout(args.cluster)
    run = Run("latency", {k: v for k, v in vars(args).items() if k != "keep"})
    print(f"bringing up cluster {args.cluster!r}", flush=True)
    local_cluster.up(layout, 2, args.redirect, progress=lambda m: print(f"  {m}", flush=True))
    try:
        for setup in setups:
            print(f"measuring {setup} ({args.repeats} x {args.duration:.0f}s at {args.rps:.0f} rps)", flush=True)
            run_setup(args, layout, run, setup)
    finally:
        if not args.keep:
            local_cluster.down(layout, progress=lambda m: None)
    base = next((r for r in run.results if r["setup"] == "baseline" and r["case"] == "http-latency"), None)
    for row in run.results:
        if base and row["case"] == "http-latency":
            for p in ("p50_ms", "p90_ms", "p99_ms"):
                if row.get(p) is not None and base.get(p) is not None:
                    row[f"added_{p}"] = row[p] - base[p]
    latency = [r for r in run.results if r["case"] == "http-latency"]
    print(table(latency, ["setup", "rps_achieved", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "added_p50_ms",
                          "added_p99_ms", "cpu_per_1000rps", "rss_mb", "waypoint_cpu_per_1000rps",
                          "waypoint_rss_mb", "mesh_rss_mb"], "HTTP/1.1 latency, cross-node (ms)"))
    print()
    print(table([r for r in run.results if r["case"] == "throughput"], ["setup", "streams", "gbps", "gbps_min",
                                                                         "gbps_max"], "Throughput (Gbit/s)"))
    print(f"\nwrote {run.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
