"""The proxies' metrics: counters, gauges and histograms, and their Prometheus text (format 0.0.4).

The ztunnel, the waypoint and the ingress gateway count a handful of labelled
series and serve them on /metrics. prometheus_client would cost each of them
2.7 MiB resident (it brings `wsgiref`, `http.server`, `urllib.request` and
`email` for servers and pushers they do not use); this is the part they use,
written here, with the same names and calls:

    registry = CollectorRegistry()
    requests = Counter("istio_requests", "Requests", ("code",), registry=registry)
    requests.labels("200").inc()          # exposed as istio_requests_total{code="200"} 1.0
    ProcessCollector(registry=registry)   # process_cpu_seconds_total, process_resident_memory_bytes, ...
    render(registry)                      # the text, as prometheus_client's generate_latest writes it

The text is the one prometheus_client renders for the same series with
`_created` series off (shoal.exposition turns them off for the other
processes): the same HELP and TYPE lines, labels sorted, values as Go
prints floats, histogram buckets cumulative with `+Inf` last, then `_count`
and `_sum` (tests/shoal/test_metrics.py compares the two byte for byte).
`collect()` gives families whose `samples` have `name`, `labels` and `value`,
so prometheus_client's own `generate_latest` and parser read them too.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Iterable, NamedTuple

from shoal.errors import ShoalError

INF = float("inf")


class MetricsError(ShoalError, ValueError):
    """A metric used against its definition (wrong labels, a counter decreased); the message says how."""


class Sample(NamedTuple):
    name: str
    labels: dict
    value: float
    timestamp: float | None = None
    exemplar: object = None
    native_histogram: object = None


class Family:
    """One metric family as collected: name (counters without `_total`), type, help, samples."""

    def __init__(self, name: str, documentation: str, mtype: str, samples: list[Sample]) -> None:
        self.name, self.documentation, self.type, self.samples = name, documentation, mtype, samples


def go_float(value: float) -> str:
    """A float as Go's strconv prints it in Prometheus text (prometheus_client's floatToGoString)."""
    value = float(value)
    if value == INF:
        return "+Inf"
    if value == -INF:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:        # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


class CollectorRegistry:
    def __init__(self) -> None:
        self._collectors: list = []

    def register(self, collector) -> None:
        self._collectors.append(collector)

    def unregister(self, collector) -> None:
        self._collectors.remove(collector)

    def collect(self) -> Iterable[Family]:
        for collector in list(self._collectors):
            yield from collector.collect()

    def get_sample_value(self, name: str, labels: dict | None = None) -> float | None:
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return sample.value
        return None


class _Value:
    """One number, changed under a lock (the proxies' loops run in one thread; a collector may not)."""

    __slots__ = ("value", "lock")

    def __init__(self) -> None:
        self.value = 0.0
        self.lock = threading.Lock()

    def add(self, amount: float) -> None:
        with self.lock:
            self.value += amount

    def get(self) -> float:
        return self.value


class _Metric:
    mtype = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 registry: CollectorRegistry | None = None, **options) -> None:
        if self.mtype == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._options = options
        self._children: dict[tuple[str, ...], _Metric] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._setup()
        if registry is not None:
            registry.register(self)

    def _setup(self) -> None:
        raise NotImplementedError

    def labels(self, *values, **named) -> "_Metric":
        if not self.labelnames:
            raise MetricsError(f"{self.name} has no labels")
        if named:
            if values or set(named) != set(self.labelnames):
                raise MetricsError(f"{self.name} takes the labels {', '.join(self.labelnames)}")
            values = tuple(named[name] for name in self.labelnames)
        if len(values) != len(self.labelnames):
            raise MetricsError(f"{self.name} takes {len(self.labelnames)} label values, not {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = type(self).__new__(type(self))
                    child.name, child.labelnames, child._options = self.name, (), self._options
                    child._setup()
                    self._children[key] = child
        return child

    def remove(self, *values) -> None:
        with self._lock:
            self._children.pop(tuple(str(v) for v in values), None)

    def clear(self) -> None:
        with self._lock:
            self._children.clear()

    def _series(self) -> list[tuple[dict, "_Metric"]]:
        if not self.labelnames:
            return [({}, self)]
        with self._lock:
            children = list(self._children.items())
        return [(dict(zip(self.labelnames, key)), child) for key, child in children]

    def collect(self) -> list[Family]:
        samples = [Sample(self.name + suffix, {**labels, **extra}, value)
                   for labels, child in self._series() for suffix, extra, value in child._samples()]
        return [Family(self.name, self.documentation, self.mtype, samples)]


class Counter(_Metric):
    mtype = "counter"

    def _setup(self) -> None:
        self._value = _Value()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise MetricsError(f"{self.name}: a counter only goes up (inc by {amount})")
        self._value.add(amount)

    def _samples(self):
        return [("_total", {}, self._value.get())]


class Gauge(_Metric):
    mtype = "gauge"

    def _setup(self) -> None:
        self._value = _Value()

    def inc(self, amount: float = 1) -> None:
        self._value.add(amount)

    def dec(self, amount: float = 1) -> None:
        self._value.add(-amount)

    def set(self, value: float) -> None:
        with self._value.lock:
            self._value.value = float(value)

    def _samples(self):
        return [("", {}, self._value.get())]


DEFAULT_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0, INF)


class Histogram(_Metric):
    mtype = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 registry: CollectorRegistry | None = None, buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise MetricsError(f"{name}: buckets must be in increasing order")
        if not bounds or bounds[-1] != INF:
            bounds.append(INF)
        if len(bounds) < 2:
            raise MetricsError(f"{name}: a histogram needs at least one bucket besides +Inf")
        super().__init__(name, documentation, labelnames, registry=registry, bounds=tuple(bounds))

    def _setup(self) -> None:
        self._bounds = self._options["bounds"]
        self._counts = [0.0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for index, bound in enumerate(self._bounds):
                if value <= bound:
                    self._counts[index] += 1
                    break

    def _samples(self):
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, seen = [], 0.0
        for bound, count in zip(self._bounds, counts):
            seen += count
            out.append(("_bucket", {"le": go_float(bound)}, seen))
        out.append(("_count", {}, seen))
        if self._bounds[0] >= 0:
            out.append(("_sum", {}, total))
        return out


class ProcessCollector:
    """process_* series from /proc/self, as prometheus_client's process collector names them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        try:
            with open("/proc/stat", "rb") as stat:
                self._boot = next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))
        except (OSError, StopIteration):
            self._boot = 0.0
        if registry is not None:
            registry.register(self)

    def collect(self) -> list[Family]:
        if not self._boot:
            return []

        def one(name: str, documentation: str, mtype: str, value: float) -> Family:
            sample = name + ("_total" if mtype == "counter" else "")
            return Family(name, documentation, mtype, [Sample(sample, {}, value)])
        out = []
        try:
            with open("/proc/self/stat", "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            out += [one("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", float(parts[20])),
                    one("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
                        float(parts[21]) * self._page),
                    one("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                        "gauge", float(parts[19]) / self._ticks + self._boot),
                    one("process_cpu_seconds", "Total user and system CPU time spent in seconds.", "counter",
                        (float(parts[11]) + float(parts[12])) / self._ticks)]
        except OSError:
            pass
        try:
            with open("/proc/self/limits", "rb") as limits:
                max_fds = next(float(line.split()[3]) for line in limits if line.startswith(b"Max open file"))
            out += [one("process_open_fds", "Number of open file descriptors.", "gauge",
                        float(len(os.listdir("/proc/self/fd")))),
                    one("process_max_fds", "Maximum number of open file descriptors.", "gauge", max_fds)]
        except (OSError, StopIteration):
            pass
        return out


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (0.0.4)."""
    out: list[str] = []
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {documentation}\n# TYPE {name} {family.type}\n")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(sample.labels.items()))
                out.append(f"{sample.name}{{{labels}}} {go_float(sample.value)}\n")
            else:
                out.append(f"{sample.name} {go_float(sample.value)}\n")
    return "".join(out).encode()
