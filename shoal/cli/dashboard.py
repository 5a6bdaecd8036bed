"""shoal dashboard: the service graph of a local cluster, as a web page on 127.0.0.1.

Workloads are nodes, the traffic between them edges with request rate,
error rate and p99 latency, mTLS and waypoint shown on each; a click on a
workload shows its identity, policies and recent connections. The figures
come from the cluster's Prometheus when it runs one (`shoal local up
--addons prometheus`, last minute), else from the proxies' own metrics
(scraped every 5 s). The page refreshes itself every 5 s.
"""

from __future__ import annotations

import argparse
import threading

from shoal.cli import context
from shoal.cli.output import fail


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="the service graph of a local cluster, as a web page",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    context.add_option(p)
    p.add_argument("--port", type=int, default=20001, help="port on 127.0.0.1 to serve the page on")
    p.add_argument("--from", dest="origin", choices=("auto", "prometheus", "proxies"), default="auto",
                   help="where the figures come from: the cluster's Prometheus if it runs one (auto), or the "
                        "proxies' own metrics")
    p.set_defaults(func=cmd_dashboard)


def views_for(cluster: str, origin: str = "auto"):
    """The page's two views of a local cluster, and the source of figures they use (to stop it after)."""
    from shoal.cli.stat import scrape_all
    from shoal.contracts import GATEWAY_NAME_LABEL
    from shoal.local import addons
    from shoal.local.cluster import ClusterConfig
    from shoal.local.layout import Layout
    from shoal.local.observe import access_log, http_get
    from shoal.observe import details, graph, sources
    from shoal.observe.server import Views
    from shoal.workload_names import workload_name

    layout = Layout(cluster)
    store = layout.store()
    has_prometheus = store.get("Pod", "shoal-system", addons.PROMETHEUS_POD) is not None
    if origin == "prometheus" and not has_prometheus:
        raise sources.SourceError(f"cluster {cluster!r} runs no Prometheus: `shoal local up --cluster {cluster} "
                           "--addons prometheus` adds it, or use --from proxies")
    if has_prometheus and origin != "proxies":
        host, port = addons.prometheus_url(layout).removeprefix("http://").rsplit(":", 1)
        source = sources.PrometheusSource(lambda path: http_get(layout.node_netns(1), host, int(port), path))
    else:
        source = sources.ProxySource(lambda: scrape_all(cluster))
        source.start()

    def waypoints() -> set[str]:
        return {f"{p['metadata']['namespace']}/{workload_name(p)}" for p in store.list("Pod")[0]
                if GATEWAY_NAME_LABEL in (p["metadata"].get("labels") or {})}

    def graph_view() -> dict:
        before, after, seconds = source.sample()
        return graph.build(before, after, seconds, origin=source.origin, waypoints=waypoints()).to_json()

    def node_view(namespace: str, workload: str) -> dict:
        config = ClusterConfig.read(layout)
        records = [r for n in range(1, (config.nodes if config else 0) + 1) for r in access_log(layout, n)]
        records.sort(key=lambda r: r.get("timestamp", ""))
        policies = [obj for kind in details.POLICY_KINDS for obj in store.list(kind)[0]]
        return details.node_details(namespace, workload, store.list("Pod")[0], policies, records)

    return Views(graph_view, node_view), source


def cmd_dashboard(args) -> int:
    from shoal.local.layout import Layout
    from shoal.observe.server import serve

    cluster = context.resolve(args)
    if not Layout(cluster).store().exists():
        return fail(f"cluster {cluster!r} is not up; run `shoal local up --cluster {cluster}`")
    from shoal.observe.sources import SourceError

    try:
        views, source = views_for(cluster, args.origin)
    except SourceError as e:
        return fail(str(e))
    try:
        server = serve(views, args.port)
    except OSError as e:
        return fail(f"cannot serve on 127.0.0.1:{args.port} ({e.strerror}); choose another with --port")
    print(f"service graph of cluster {cluster!r} ({source.origin}): http://127.0.0.1:{args.port}/", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
