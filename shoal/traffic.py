"""Traffic figures from the proxies' Prometheus counters: what `shoal stat` and `shoal top` print.

    before, after = parse(text_a), parse(text_b)     # two scrapes, `seconds` apart
    rows = by_workload(before, after, seconds)       # pure: one Figures per destination workload
    pairs = by_pair(before, after, seconds)          # one per (source workload, destination workload)

Counters only grow, so a window's traffic is the difference of two scrapes;
a series that restarted (its value fell) counts from zero. HTTP figures come
from the waypoints (`istio_requests_total`, reporter="waypoint", and the
`istio_request_duration_milliseconds` histogram), and from the ingress
gateway (reporter="source", as Istio's gateways report: it is the mesh's
client) for a destination no waypoint reported on in the window: a request
through the gateway and a waypoint is counted once, by the waypoint. TCP
figures come from the ztunnels' destination side (`istio_tcp_*`,
reporter="destination"), so each connection is counted once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Series = tuple[str, tuple[tuple[str, str], ...]]   # (sample name, sorted labels)

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_BYTES = ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")


def parse(text: str) -> dict[Series, float]:
    """Every sample of an exposition text; samples of the same series from several proxies add up."""
    out: dict[Series, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return dict(out)


def merge(scrapes) -> dict[Series, float]:
    """Several proxies' samples in one: a series several of them export adds up."""
    total: dict[Series, float] = defaultdict(float)
    for samples in scrapes:
        for series, value in samples.items():
            total[series] += value
    return dict(total)


def deltas(before: dict[Series, float], after: dict[Series, float]) -> dict[Series, float]:
    """What each series grew by; one that fell (its proxy restarted) counts from zero."""
    out = {}
    for key, value in after.items():
        old = before.get(key, 0.0)
        out[key] = value - old if value >= old else value
    return out


@dataclass
class Figures:
    """One row: requests by status class, latency histogram, TCP connections and bytes, over `seconds`."""
    seconds: float
    requests: float = 0.0
    failures: float = 0.0                       # 5xx, and requests with no response (code 0)
    buckets: dict[float, float] = field(default_factory=dict)   # le -> cumulative count
    connections: float = 0.0
    tcp_bytes: float = 0.0

    @property
    def success(self) -> float | None:
        return None if not self.requests else (self.requests - self.failures) / self.requests

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def latency(self, quantile: float) -> float | None:
        """The `quantile` of request duration in ms, interpolated inside its bucket (as Prometheus does)."""
        if not self.buckets:
            return None
        bounds = sorted(self.buckets)
        total = self.buckets[bounds[-1]]
        if total <= 0:
            return None
        rank = quantile * total
        lower, below = 0.0, 0.0
        for bound in bounds:
            count = self.buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    return lower    # beyond the last finite bucket: its bound is all that is known
                if count == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (count - below)
            lower, below = bound, count
        return lower

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "requests": self.requests, "rps": self.rps, "success": self.success,
                "latency_ms_p50": self.latency(0.5), "latency_ms_p95": self.latency(0.95),
                "latency_ms_p99": self.latency(0.99), "tcp_connections_per_second": self.connections / self.seconds,
                "tcp_bytes_per_second": self.tcp_bytes / self.seconds}


def _failed(code: str) -> bool:
    return code == "0" or code.startswith("5")


def _add(rows: dict, key, name: str, labels: dict[str, str], grew: float, seconds: float,
         http_reporter: str = "waypoint") -> None:
    row = rows.setdefault(key, Figures(seconds))
    if name == REQUESTS and labels.get("reporter") == http_reporter:
        row.requests += grew
        if _failed(labels.get("response_code", "")):
            row.failures += grew
    elif name == DURATION_BUCKET and labels.get("reporter") == http_reporter:
        le = float(labels["le"])
        row.buckets[le] = row.buckets.get(le, 0.0) + grew
    elif name == TCP_OPENED and labels.get("reporter") == "destination":
        row.connections += grew
    elif name in TCP_BYTES and labels.get("reporter") == "destination":
        row.tcp_bytes += grew


def _grouped(before, after, seconds: float, key_of) -> dict:
    rows: dict = {}
    grown = [(name, dict(labels), grew) for (name, labels), grew in deltas(before, after).items()
             if name in (REQUESTS, DURATION_BUCKET, TCP_OPENED, *TCP_BYTES)]
    # Destinations a waypoint reported HTTP for: the gateway's own (reporter="source") count is the same traffic.
    waypointed = {_workload(labels, "destination") for name, labels, grew in grown
                  if name == REQUESTS and labels.get("reporter") == "waypoint" and grew > 0}
    for name, labels, grew in grown:
        key = key_of(labels)
        if key is None:
            continue
        _add(rows, key, name, labels, grew, seconds)
        if name in (REQUESTS, DURATION_BUCKET) and _workload(labels, "destination") not in waypointed:
            _add(rows, key, name, labels, grew, seconds, http_reporter="source")
    return rows


Workload = tuple[str, str, str]   # (namespace, workload, version): versions of one workload are told apart


def _workload(labels: dict[str, str], side: str) -> Workload | None:
    name = labels.get(f"{side}_workload", "")
    if not name or name == "unknown":
        return None
    version = labels.get(f"{side}_version", "")
    return (labels.get(f"{side}_workload_namespace", ""), name, "" if version in ("unknown", "latest") else version)


def by_workload(before: dict[Series, float], after: dict[Series, float], seconds: float
                ) -> dict[Workload, Figures]:
    """(namespace, workload, version) -> what it received in the window."""
    return _grouped(before, after, seconds, lambda labels: _workload(labels, "destination"))


def by_pair(before: dict[Series, float], after: dict[Series, float], seconds: float
            ) -> dict[tuple[Workload, Workload], Figures]:
    """(source, destination) -> the traffic between them in the window."""
    def key(labels):
        source, destination = _workload(labels, "source"), _workload(labels, "destination")
        return (source or ("", "unknown", ""), destination) if destination else None
    return _grouped(before, after, seconds, key)
