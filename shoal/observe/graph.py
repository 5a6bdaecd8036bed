"""The service graph: workloads as nodes, the traffic between them as edges (issue 14, item 4).

Pure: two samplings of the mesh's counters a window apart in, a `Graph` out.
The figures are `shoal.traffic`'s (the same that `shoal top` prints): HTTP
from the waypoints, TCP from the receiving ztunnels. An edge carries its
request rate, error rate and p99 latency, its TCP byte rate, and what secured
and carried it: mTLS when any proxy on the way reported the pair as
`mutual_tls`, a waypoint when a waypoint reported its requests. The
waypoint's own legs (client to waypoint, waypoint to server) are not drawn
as edges of their own: the waypoint is shown on the edge it serves, as a
person thinks of the call.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from shoal import traffic

Series = traffic.Series


@dataclass(frozen=True)
class Node:
    id: str                 # namespace/workload
    namespace: str
    workload: str
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    protocol: str           # http (requests seen by a waypoint) or tcp
    rps: float
    error_rate: float | None
    p99_ms: float | None
    tcp_bytes_per_second: float
    mtls: bool
    waypoint: str           # namespace/name of the waypoint that carried it, "" when none


@dataclass(frozen=True)
class Graph:
    origin: str             # prometheus or proxies: where the figures come from
    window_seconds: float
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def to_json(self) -> dict:
        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value
        return {"origin": self.origin, "window_seconds": self.window_seconds,
                "nodes": [asdict(n) for n in self.nodes],
                "edges": [{k: clean(v) for k, v in asdict(e).items()} for e in self.edges]}


def _end(labels: dict[str, str], side: str) -> str | None:
    name = labels.get(f"{side}_workload", "")
    if not name or name == "unknown":
        return None
    return f"{labels.get(f'{side}_workload_namespace', '')}/{name}"


def build(before: dict[Series, float], after: dict[Series, float], seconds: float, *, origin: str,
          waypoints: set[str]) -> Graph:
    """`waypoints`: the namespace/workload ids that are waypoints (drawn on edges, not as nodes)."""
    pairs = traffic.by_pair(before, after, seconds)
    secured, carried = set(), set()
    versions: dict[str, set[str]] = {}
    for (name, labels), _ in after.items():
        labels = dict(labels)
        source, target = _end(labels, "source"), _end(labels, "destination")
        for node, side in ((source, "source"), (target, "destination")):
            if node and node not in waypoints:
                version = labels.get(f"{side}_version", "")
                versions.setdefault(node, set()).update({version} if version not in ("", "unknown") else set())
        # mTLS as the ztunnels saw the connections (a waypoint only ever accepts mTLS, so its own label
        # would say nothing about the leg it opened to the server).
        if name.startswith("istio_tcp_") and labels.get("reporter") != "waypoint" and source and target \
                and labels.get("connection_security_policy") == "mutual_tls":
            secured.add((source, target))
        if name in (traffic.REQUESTS, traffic.TCP_OPENED) and labels.get("reporter") == "waypoint" \
                and source and target:
            carried.add((source, target))
    # A call through a waypoint is secured when both of its legs are.
    for source, middle in list(secured):
        if middle in waypoints:
            secured |= {(source, target) for first, target in list(secured) if first == middle}
    merged: dict[tuple[str, str], traffic.Figures] = {}
    for (source, target), figures in pairs.items():
        src = f"{source[0]}/{source[1]}" if source[1] != "unknown" else None
        dst = f"{target[0]}/{target[1]}"
        if src is None or src in waypoints or dst in waypoints:
            continue
        row = merged.setdefault((src, dst), traffic.Figures(seconds))
        row.requests += figures.requests
        row.failures += figures.failures
        row.connections += figures.connections
        row.tcp_bytes += figures.tcp_bytes
        for le, count in figures.buckets.items():
            row.buckets[le] = row.buckets.get(le, 0.0) + count
    # Opaque TCP that a waypoint relayed: shoal.traffic counts TCP at the receiving ztunnel, which saw only
    # the waypoint's leg; the waypoint's own series name both ends.
    for (name, labels), grew in traffic.deltas(before, after).items():
        labels = dict(labels)
        if labels.get("reporter") != "waypoint" or name not in (traffic.TCP_OPENED, *traffic.TCP_BYTES):
            continue
        src, dst = _end(labels, "source"), _end(labels, "destination")
        if src and dst:
            row = merged.setdefault((src, dst), traffic.Figures(seconds))
            if name == traffic.TCP_OPENED:
                row.connections += grew
            else:
                row.tcp_bytes += grew
    edges = []
    for (src, dst), figures in sorted(merged.items()):
        if not figures.requests and not figures.connections and not figures.tcp_bytes:
            continue
        http = figures.requests > 0
        edges.append(Edge(src, dst, "http" if http else "tcp", figures.rps if http else figures.connections / seconds,
                          (1 - figures.success) if figures.success is not None else None,
                          figures.latency(0.99), figures.tcp_bytes / seconds, (src, dst) in secured,
                          _waypoint_of(src, dst, carried, waypoints)))
    ids = sorted({e.source for e in edges} | {e.target for e in edges})
    nodes = tuple(Node(i, *i.split("/", 1), tuple(sorted(versions.get(i, ())))) for i in ids)
    return Graph(origin, seconds, nodes, tuple(edges))


def _waypoint_of(src: str, dst: str, carried: set, waypoints: set[str]) -> str:
    """The waypoint that carried a call: the one of the destination's namespace (shoal deploys one each)."""
    if (src, dst) not in carried:
        return ""
    namespace = dst.split("/", 1)[0]
    named = sorted(w for w in waypoints if w.startswith(f"{namespace}/"))
    return named[0] if named else "waypoint"
