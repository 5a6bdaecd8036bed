"""`shoal stat` and `shoal top`: success rate, request rate, latency and TCP traffic per workload, from the
proxies' own metrics (as `linkerd viz stat` and `top` do, without a Prometheus).

    shoal stat [-n NS | -A] [--window 5] [-o table|json]
    shoal top  [-n NS | -A] [--interval 2] [--once]

Both scrape every ztunnel (its node's 15020), every waypoint (15020 in its
pod) and the ingress gateway (15090 in its node's netns), wait, scrape again
and show what happened in between: HTTP figures where a waypoint saw the
requests (the gateway's own, for a destination no waypoint reported on),
TCP figures from the ztunnel of the receiving side. `stat` has a row per receiving workload; `top` a row per
pair of workloads, busiest first, refreshed until Ctrl-C (`--once`: one view).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from shoal import traffic
from shoal.cli import context
from shoal.cli.output import fail, table
from shoal.contracts import GATEWAY_NAME_LABEL, INGRESS_METRICS_PORT, METRICS_PORT


def register(sub) -> None:
    for name, func, what in (("stat", cmd_stat, "success rate, rates and latencies per workload"),
                             ("top", cmd_top, "the busiest pairs of workloads, live")):
        p = sub.add_parser(name, help=f"{what}, from the proxies' metrics", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        context.add_option(p)
        p.add_argument("-n", "--namespace", help="only workloads of this namespace (default: default)")
        p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (default: off)")
        if name == "stat":
            p.add_argument("--window", type=float, default=5.0, help="seconds between the two scrapes")
            p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
        else:
            p.add_argument("--interval", type=float, default=2.0, help="seconds between views")
            p.add_argument("--once", action="store_true", help="print one view and end (default: refresh until Ctrl-C)")
            p.add_argument("--limit", type=int, default=20, help="how many pairs to show")
        p.set_defaults(func=func)


def scrape_all(cluster: str) -> dict:
    """Every ztunnel's and waypoint's samples, summed by series."""
    from shoal import netns
    from shoal.local.cluster import ClusterConfig
    from shoal.local.layout import Layout
    from shoal.local.observe import http_get

    layout = Layout(cluster)
    config = ClusterConfig.read(layout)
    nodes = [layout.node_netns(n) for n in range(1, (config.nodes if config else 0) + 1)]
    # The ztunnels, and the ingress gateway where it runs (in its node's netns, on its own port).
    places = [(node, METRICS_PORT) for node in nodes] + [(node, INGRESS_METRICS_PORT) for node in nodes]
    for pod in layout.store().list("Pod")[0]:
        where = ((pod.get("status") or {}).get("shoal") or {}).get("netns")
        if GATEWAY_NAME_LABEL in (pod["metadata"].get("labels") or {}) and where:
            places.append((where, METRICS_PORT))  # the netns path: /run/netns/NAME, or the CRI's on containerd
    scrapes = []
    for place, port in places:
        if not netns.exists(place):
            continue
        try:
            scrapes.append(traffic.parse(http_get(place, "127.0.0.1", port, "/metrics").decode()))
        except OSError:
            continue  # a proxy that is restarting: its traffic shows in the next window
    return traffic.merge(scrapes)


def _window(cluster: str, seconds: float) -> tuple[dict, dict, float]:
    before, started = scrape_all(cluster), time.monotonic()
    time.sleep(seconds)
    after = scrape_all(cluster)
    return before, after, time.monotonic() - started


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def _cells(f: traffic.Figures) -> list[str]:
    http = f.requests > 0
    return [_percent(f.success), f"{f.rps:.1f}" if http else "-", _ms(f.latency(0.5)), _ms(f.latency(0.95)),
            _ms(f.latency(0.99)), f"{f.connections / f.seconds:.1f}", f"{f.tcp_bytes / f.seconds:.0f}"]


HEADERS = ["SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN/S", "BYTES/S"]


def _wanted(args, namespace: str) -> bool:
    return args.all_namespaces or namespace == (args.namespace or "default")


def _name(workload: traffic.Workload, with_namespace: bool = True) -> str:
    namespace, name, version = workload
    text = f"{namespace}/{name}" if with_namespace and namespace else name
    return f"{text} ({version})" if version else text


def render_stat(rows: dict, args) -> str:
    chosen = sorted((k, f) for k, f in rows.items() if _wanted(args, k[0]))
    head = (["NAMESPACE"] if args.all_namespaces else []) + ["WORKLOAD"] + HEADERS
    return table(head, [([k[0]] if args.all_namespaces else []) + [_name(k, False)] + _cells(f) for k, f in chosen])


def render_top(pairs: dict, args) -> str:
    chosen = [(k, f) for k, f in pairs.items() if _wanted(args, k[1][0])]
    chosen.sort(key=lambda kf: (-kf[1].requests, -kf[1].connections, kf[0]))
    rows = [[_name(s), _name(d)] + _cells(f) for (s, d), f in chosen[:args.limit]]
    return table(["SOURCE", "DESTINATION"] + HEADERS, rows)


def _cluster_or_fail(args) -> str | None:
    from shoal.local.layout import Layout

    cluster = context.resolve(args)
    return cluster if Layout(cluster).store().exists() else None


def cmd_stat(args) -> int:
    cluster = _cluster_or_fail(args)
    if cluster is None:
        return fail(f"cluster {args.cluster!r} is not up; run `shoal local up --cluster {args.cluster}`")
    before, after, seconds = _window(cluster, args.window)
    rows = traffic.by_workload(before, after, seconds)
    if args.output == "json":
        print(json.dumps([{"namespace": ns, "workload": name, "version": version, **f.to_json()}
                          for (ns, name, version), f in sorted(rows.items()) if _wanted(args, ns)], indent=2))
    else:
        print(render_stat(rows, args))
    return 0


def cmd_top(args) -> int:
    cluster = _cluster_or_fail(args)
    if cluster is None:
        return fail(f"cluster {args.cluster!r} is not up; run `shoal local up --cluster {args.cluster}`")
    before = scrape_all(cluster)
    started = time.monotonic()
    while True:
        time.sleep(args.interval)
        after = scrape_all(cluster)
        now = time.monotonic()
        view = render_top(traffic.by_pair(before, after, now - started), args)
        if args.once:
            print(view)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + f"shoal top, cluster {cluster}, every {args.interval:g}s (Ctrl-C ends)\n\n"
                         + view + "\n")
        sys.stdout.flush()
        before, started = after, now
