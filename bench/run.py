"""`python -m bench run`: ambient against sidecars against no mesh, side by side in one run.

    python -m bench run [--quick] [--setups baseline,ambient-l4,ambient-l7,sidecar-haproxy,sidecar-haproxy-http,sidecar-shoal]
                        [--rps 1000] [--connections 4] [--repeats 3] [--duration 30] [--warmup 5]
                        [--iperf-seconds 5] [--pods 1,10,50,100] [--cluster bench] [--keep]

BENCHMARKS.md is the method. In order:

1. A 2-node local cluster, `--redirect iptables` by default, so that ambient
   and the sidecars capture traffic the same way.
2. Memory against pods per node: for ambient-l4 and each sidecar set-up, 1,
   10, 50 and 100 idle pods on node1, each with a service account of its own
   (so ambient cannot win by sharing one certificate); the resident memory of
   the mesh's processes on node1 once every pod is served, its certificate
   issued. Measured first, on processes that have carried no traffic yet.
3. Every set-up's namespace (`bench.setups`), and a request through each path
   (for ambient and sidecar-shoal, seen as mTLS in the proxy's access log;
   HAProxy's server side accepts nothing but mTLS).
4. Latency: per repeat, per placement (cross-node, same-node), every set-up
   in turn, the order rotated each repeat so that drift hits them all alike:
   `bench.loadgen` in the client pod, open loop; the mesh's CPU over the run
   and its memory after it.
5. Throughput: per repeat, iperf3 with 1 and 8 streams, cross-node, every
   set-up that carries TCP in turn (not sidecar-haproxy-http: HTTP only).
6. bench/results/<timestamp>-run/results.json, the PNG charts beside it
   (`bench.charts`), and the tables on the terminal.

Each figure is the median over the repeats, with `_min` and `_max`; added
latency is set-up minus baseline within the same repeat. `--quick` is one
repeat of short runs and 1 and 10 pods: a check that everything works, in
under 5 minutes, not a result to quote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shoal import log, netns
from shoal.errors import ShoalError
from shoal.contracts import ADMIN_PORT
from shoal.local import cluster as local_cluster
from shoal.local import observe
from shoal.local.layout import Layout

from bench import charts, summary
from bench.report import BenchError, Run, summarize
from bench.setups import (HTTP_PORT, IPERF_PORT, PLACEMENTS, SETUPS, WAYPOINT, SetUp, Sidecars, idle_container,
                          is_haproxy, latency_objects, mesh, namespace, node_mesh, pod, sidecar_filter, waypoint)
from bench.sidecar_shoal import HandoffAgents
from bench.usage import Selector, combine, cpu_by_part

MEMORY_SETUPS = ("ambient-l4", "sidecar-haproxy", "sidecar-shoal")
MEMORY_NODE = "node1"
READY_SECONDS = 120
LATENCY_PERCENTILES = ("p50_ms", "p90_ms", "p99_ms", "p999_ms")
RATE_TOLERANCE = 0.97     # below this share of the target rate, the row carries a warning

QUICK = {"repeats": 1, "duration": 5.0, "warmup": 1.0, "iperf_seconds": 2, "pods": "1,10"}
FULL = {"repeats": 3, "duration": 30.0, "warmup": 5.0, "iperf_seconds": 5, "pods": "1,10,50,100"}


def shoal(*args: str, input: str | None = None, timeout: float = 600, check: bool = True) -> str:
    result = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                            input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError(f"shoal {' '.join(args[:4])} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def objects_json(objects: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


def rotated(items: list, by: int) -> list:
    by %= max(len(items), 1)
    return items[by:] + items[:by]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.layout = Layout(args.cluster)
        self.c = ["--cluster", args.cluster]
        self.agents: HandoffAgents | None = None
        self.sidecars: Sidecars | None = None

    def open(self) -> None:
        """Ready to deploy set-ups on the (running) cluster: the sidecar ztunnels' hand-off is served."""
        self.agents = HandoffAgents(self.layout) if "sidecar-shoal" in self.setups else None
        self.sidecars = Sidecars(self.layout, self.agents)

    def close(self) -> None:
        if self.agents:
            self.agents.close()
            self.agents = None

    # --- the cluster ------------------------------------------------------------------

    def apply(self, objects: list[dict]) -> None:
        shoal("local", "apply", "-f", "-", *self.c, input=objects_json(objects))

    def delete(self, objects: list[dict]) -> None:
        shoal("local", "delete", "-f", "-", *self.c, input=objects_json(objects), check=False)
        store = self.layout.store()
        pods = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Pod"]
        deadline = time.monotonic() + READY_SECONDS
        while any(store.get("Pod", *key) is not None or self.layout.pod_cgroup(*key).exists() for key in pods):
            if time.monotonic() > deadline:
                raise BenchError(f"pods of {pods[0][0]} still there {READY_SECONDS}s after their delete")
            time.sleep(0.2)

    def wait_running(self, pods: list[dict], timeout: float = READY_SECONDS) -> None:
        """Until each pod has its address and a process (the CA signs for it, its netns exists)."""
        store = self.layout.store()
        pending = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
        deadline = time.monotonic() + timeout
        while pending:
            for key in list(pending):
                status = (store.get("Pod", *key) or {}).get("status") or {}
                if status.get("phase") == "Running" and status.get("podIP"):
                    pending.discard(key)
            if pending and time.monotonic() > deadline:
                raise BenchError(f"not running after {timeout:.0f}s: {sorted(pending)[:5]}")
            time.sleep(0.1)

    def deploy(self, kind: str | None, objects: list[dict], timeout: float = READY_SECONDS) -> list[dict]:
        """Applies the objects with the set-up's sidecar in every pod; returns once every pod is ready."""
        objects = self.sidecars.add_pods(kind, objects)
        self.apply(objects)
        pods = [o for o in objects if o["kind"] == "Pod"]
        self.wait_running(pods, timeout)
        self.sidecars.ready(kind, pods, timeout)
        local_cluster.wait_ready(self.layout, [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods],
                                 progress=lambda m: None, timeout=timeout)
        return objects

    def exec(self, namespace_name: str, pod_name: str, *argv: str, timeout: float = 600, check: bool = True) -> str:
        return shoal("local", "exec", "-n", namespace_name, pod_name, *self.c, "--", *argv, timeout=timeout,
                     check=check)

    def admin(self, netns_name: str, path: str):
        def get():
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}{path}", timeout=5) as response:
                return json.load(response)
        try:
            return netns.run_in(netns_name, get)
        except OSError:
            return None

    def valid_certificates(self, netns_name: str, namespace_name: str) -> int:
        certs = self.admin(netns_name, "/certs") or []
        return sum(1 for c in certs if c.get("state") == "valid" and f"/ns/{namespace_name}/" in c["identity"])

    # --- 2. memory against pods per node ----------------------------------------------

    def memory_series(self, run: Run) -> None:
        counts = [int(n) for n in self.args.pods.split(",") if n]
        for name in [s for s in MEMORY_SETUPS if s in self.setups]:
            setup = SETUPS[name]
            ns = f"mem-{name}"
            labels = setup.namespace_labels if setup.ambient else {}
            applied = [namespace(ns, labels)]
            self.apply(applied)
            have = 0
            for count in counts:
                started = time.monotonic()
                new = [pod(ns, f"pod-{i:03d}", MEMORY_NODE, [idle_container()], service_account=f"sa-{i:03d}")
                       for i in range(have, count)]
                applied += self.deploy(setup.sidecar, new, timeout=READY_SECONDS + 3 * count)
                have = count
                self.wait_served(setup, ns, count)
                rss = self.settled_rss(self.memory_selectors(setup, ns))
                print(f"  {name:16} {count:4} pods on {MEMORY_NODE}: {statistics.median(rss):8.1f} MiB "
                      f"({time.monotonic() - started:.0f}s)", flush=True)
                row = run.add(setup=name, case="memory", placement=MEMORY_NODE, pods=count, samples=len(rss),
                              **summarize(rss, "rss_mb"))
                row.update(summarize([v / count for v in rss], "rss_per_pod_mb"))
            self.delete(applied)
            if self.agents:
                self.agents.forget(ns)

    def memory_selectors(self, setup: SetUp, ns: str) -> list[Selector]:
        if setup.sidecar:
            cgroups = tuple(sorted((self.layout.cgroup_dir / "pods").glob(f"{ns}_pod-*")))
            return [Selector(cgroups, sidecar_filter(setup.sidecar))]
        return node_mesh(self.layout, [MEMORY_NODE])

    def wait_served(self, setup: SetUp, ns: str, count: int) -> None:
        """Until the mesh holds a valid certificate for each of the `count` pods."""
        if is_haproxy(setup.sidecar):
            return  # the bench issued them before HAProxy could start
        if setup.sidecar == "shoal":
            netnses = [self.layout.pod_netns(ns, f"pod-{i:03d}") for i in range(count)]
            done = lambda: all(self.valid_certificates(n, ns) >= 1 for n in netnses)  # noqa: E731
        else:
            node_netns = self.layout.node_netns(int(MEMORY_NODE[4:]))
            done = lambda: self.valid_certificates(node_netns, ns) >= count  # noqa: E731
        deadline = time.monotonic() + READY_SECONDS + count
        while not done():
            if time.monotonic() > deadline:
                raise BenchError(f"{setup.name}: certificates for {count} pods of {ns} not all issued")
            time.sleep(0.5)

    @staticmethod
    def settled_rss(selectors: list[Selector], samples: int = 5, interval: float = 0.5) -> list[float]:
        time.sleep(1.0)   # let a process that just started finish its start-up allocations
        values = []
        for _ in range(samples):
            values.append(combine(selectors).rss_mib)
            time.sleep(interval)
        return values

    # --- 3. the set-ups' namespaces ---------------------------------------------------

    def deploy_setups(self) -> None:
        for name in self.setups:
            setup = SETUPS[name]
            print(f"  deploying {name}", flush=True)
            self.deploy(setup.sidecar, latency_objects(setup, self.args.body_bytes))
            if setup.waypoint:
                shoal("waypoint", "apply", "-n", setup.namespace, "--name", WAYPOINT, *self.c)
        for name in self.setups:
            for placement in PLACEMENTS:
                self.check_path(SETUPS[name], placement)

    def status(self, setup: SetUp, client: str) -> str:
        """The HTTP status of one request from `client` ("000" when none came: a path still coming up)."""
        return self.exec(setup.namespace, client, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                         f"http://server.{setup.namespace}:{HTTP_PORT}/", timeout=30, check=False).strip() or "000"

    def check_path(self, setup: SetUp, placement: str) -> None:
        """A request answers through the set-up's path, and a mesh's is mTLS."""
        client, client_node = PLACEMENTS[placement]
        deadline = time.monotonic() + READY_SECONDS
        if setup.ambient:
            seen = observe.wait_for_mtls(self.layout, int(client_node[4:]), lambda: self.status(setup, client),
                                         source_namespace=setup.namespace, timeout=READY_SECONDS)
            if seen is None:
                raise BenchError(f"{setup.name}: no mTLS connection from {setup.namespace}/{client} in "
                                 f"ztunnel-{client_node}'s log after {READY_SECONDS}s")
        while (code := self.status(setup, client)) != "200":
            if time.monotonic() > deadline:
                raise BenchError(f"{setup.name} {placement}: the server answered {code}, not 200")
            time.sleep(0.5)
        if setup.sidecar == "shoal" and not sidecar_mtls_seen(self.layout, setup.namespace, client):
            raise BenchError(f"{setup.name} {placement}: the client's sidecar ztunnel logged no outbound mTLS "
                             "connection; check the control plane publishes the server as HBONE")

    # --- 4. latency --------------------------------------------------------------------

    def latency_once(self, setup: SetUp, placement: str) -> dict:
        client, _ = PLACEMENTS[placement]
        selectors = mesh(self.layout, setup, placement)
        before = [s.cpu() for s in selectors]
        a = self.args
        out = self.exec(setup.namespace, client, sys.executable, "-m", "bench.loadgen", "client",
                        "--url", f"http://server.{setup.namespace}:{HTTP_PORT}/", "--rps", str(a.rps),
                        "--connections", str(a.connections), "--duration", str(a.duration), "--warmup", str(a.warmup))
        by_part = cpu_by_part(selectors, before, [s.cpu() for s in selectors])
        result = json.loads(out)
        requests = max(a.rps * (a.duration + a.warmup), 1)
        result["cpu_per_1000rps"] = sum(by_part.values()) / requests * 1000 if selectors else None
        for part, cpu in by_part.items():
            result[summary.cpu_key(part)] = cpu / requests * 1000
        result["rss_mb"] = combine(selectors).rss_mib if selectors else None
        if setup.waypoint:
            result["waypoint_rss_mb"] = waypoint(self.layout, setup).usage().rss_mib
        return result

    def warm_up(self) -> None:
        """One unrecorded run per path: a proxy that just started (a waypoint's first seconds) is not measured."""
        seconds = max(self.args.warmup, 2.0)
        for placement in PLACEMENTS:
            for name in self.setups:
                client, _ = PLACEMENTS[placement]
                ns = SETUPS[name].namespace
                self.exec(ns, client, sys.executable, "-m", "bench.loadgen", "client",
                          "--url", f"http://server.{ns}:{HTTP_PORT}/", "--rps", str(self.args.rps),
                          "--connections", str(self.args.connections), "--duration", str(seconds), "--warmup", "0")

    def latency(self, run: Run) -> None:
        self.warm_up()
        samples: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(self.args.repeats):
            for placement in PLACEMENTS:
                for name in rotated(self.setups, repeat):
                    result = self.latency_once(SETUPS[name], placement)
                    samples.setdefault((name, placement), []).append(result)
                    print(f"  repeat {repeat + 1} {placement:10} {name:16} p50 {result.get('p50_ms', 0):.3f} "
                          f"p99 {result.get('p99_ms', 0):.3f} ms, {result['rps_achieved']:.0f} rps", flush=True)
        for (name, placement), results in samples.items():
            run.add(**latency_row(name, placement, results, samples.get(("baseline", placement)), self.args))

    # --- 5. throughput ------------------------------------------------------------------

    def throughput(self, run: Run) -> None:
        gbps: dict[tuple[str, int], list[float]] = {}
        client, _ = PLACEMENTS["cross-node"]
        carrying = [name for name in self.setups if SETUPS[name].carries_tcp]
        for repeat in range(self.args.repeats):
            for streams in (1, 8):
                for name in rotated(carrying, repeat):
                    ns = SETUPS[name].namespace
                    out = self.exec(ns, client, "iperf3", "-c", f"server.{ns}", "-p", str(IPERF_PORT),
                                    "-t", str(self.args.iperf_seconds), "-P", str(streams), "-J")
                    report = json.loads(out)
                    if "sum_received" not in report.get("end", {}):
                        raise BenchError(f"{name}: iperf3 measured nothing through the path: "
                                         f"{report.get('error', 'it gave no error either')}")
                    value = report["end"]["sum_received"]["bits_per_second"] / 1e9
                    gbps.setdefault((name, streams), []).append(value)
                    print(f"  repeat {repeat + 1} {streams} stream(s) {name:16} {value:.2f} Gbit/s", flush=True)
        for (name, streams), values in gbps.items():
            row = {"setup": name, "case": "throughput", "placement": "cross-node", "streams": streams,
                   "repeats": len(values), **summarize(values, "gbps")}
            base = gbps.get(("baseline", streams))
            if base and name != "baseline":
                row.update(summarize([v / b for v, b in zip(values, base)], "ratio_to_baseline"))
            run.add(**row)

    # --- the whole run --------------------------------------------------------------------

    @property
    def setups(self) -> list[str]:
        return self.args.setups

    def run(self) -> Path:
        a = self.args
        settings = {k: v for k, v in vars(a).items() if k not in ("keep", "out")}
        settings["haproxy"] = ("mode tcp (sidecar-haproxy), mode http with http-reuse always (sidecar-haproxy-http), "
                               "nbthread 1, TLS 1.3, ECDSA P-256 certificates from shoal's CA")
        run = Run("run", settings)
        log.setup(level="warning")   # the sidecars' hand-off servers run in this process; their news is not the run's
        print(f"bringing up cluster {a.cluster!r} (--redirect {a.redirect})", flush=True)
        local_cluster.up(self.layout, 2, a.redirect, progress=lambda m: None)
        self.open()
        try:
            if a.pods:
                print(f"memory against pods per node ({a.pods})", flush=True)
                self.memory_series(run)
            print("deploying the set-ups", flush=True)
            self.deploy_setups()
            print(f"latency: {a.repeats} x {a.duration:g}s at {a.rps:g} rps over {a.connections} connections",
                  flush=True)
            self.latency(run)
            print(f"throughput: {a.repeats} x iperf3 -t {a.iperf_seconds}, 1 and 8 streams", flush=True)
            self.throughput(run)
        finally:
            if not a.keep:
                local_cluster.down(self.layout, progress=lambda m: None)
            self.close()
        directory = Path(a.out) if a.out else None
        path = run.write(directory)
        drawn = charts.draw(json.loads(path.read_text()), path.parent)
        print()
        print(summary.tables(run.results))
        print(f"\nwrote {path}")
        for chart in drawn:
            print(f"wrote {chart}")
        return path


def latency_row(name: str, placement: str, results: list[dict], baseline: list[dict] | None,
                args: argparse.Namespace) -> dict:
    row = {"setup": name, "case": "http-latency", "placement": placement, "rps_target": args.rps,
           "connections": args.connections, "repeats": len(results)}
    for key in ("rps_achieved", *LATENCY_PERCENTILES, "max_ms", "errors"):
        row.update(summarize([r[key] for r in results if r.get(key) is not None], key))
    if baseline and name != "baseline":
        for key in LATENCY_PERCENTILES:
            pairs = [(r.get(key), b.get(key)) for r, b in zip(results, baseline)]
            row.update(summarize([r - b for r, b in pairs if r is not None and b is not None], f"added_{key}"))
    for key in ("cpu_per_1000rps", *(summary.cpu_key(part) for part in summary.CPU_PARTS), "rss_mb"):
        if key in ("cpu_per_1000rps", "rss_mb") or any(r.get(key) is not None for r in results):
            row.update(summarize([r[key] for r in results if r.get(key) is not None], key))
    if any(r.get("waypoint_rss_mb") is not None for r in results):
        row.update(summarize([r["waypoint_rss_mb"] for r in results if r.get("waypoint_rss_mb") is not None],
                             "waypoint_rss_mb"))
    if row["rps_achieved_min"] is not None and row["rps_achieved_min"] < RATE_TOLERANCE * args.rps:
        row["warning"] = (f"the load generator reached {row['rps_achieved_min']:.0f} of {args.rps:g} rps in one "
                          "repeat: the client could not keep the rate (or the path could not carry it)")
        print(f"warning: {name} {placement}: {row['warning']}", file=sys.stderr, flush=True)
    return row


def sidecar_mtls_seen(layout: Layout, ns: str, pod_name: str) -> bool:
    path = layout.pod_log(ns, pod_name, "ztunnel")
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        if line.startswith("{") and '"direction"' in line:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("direction") == "outbound" and record.get("mtls"):
                return True
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short repeat, 1 and 10 pods: under 5 minutes")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated; baseline is always measured")
    parser.add_argument("--rps", type=float, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--duration", type=float, help="seconds measured per latency run")
    parser.add_argument("--warmup", type=float, help="seconds sent before measuring")
    parser.add_argument("--iperf-seconds", type=int)
    parser.add_argument("--pods", help="pods per node for the memory series, comma-separated ('' to skip)")
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--cluster", default="bench")
    parser.add_argument("--redirect", default="iptables", choices=("iptables", "ebpf", "auto"))
    parser.add_argument("--out", help="directory for results.json and the charts (default bench/results/<time>-run)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown set-up {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    args.setups = ["baseline"] + [s for s in SETUPS if s in setups and s != "baseline"]
    if args.rps <= 0 or args.connections <= 0 or args.repeats <= 0 or args.duration <= 0:
        parser.error("--rps, --connections, --repeats and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        Bench(args).run()
    except (BenchError, ShoalError) as e:
        print(f"python -m bench run: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
