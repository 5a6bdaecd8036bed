"""Where the service graph's figures come from: the cluster's Prometheus when it runs one, else the proxies.

Both give the same thing, two samplings of the mesh's counters a window apart,
so `shoal.observe.graph` computes the same figures either way:
- `PrometheusSource` asks Prometheus for the counters' values now and a
  window ago (`/api/v1/query` with `time=`), and drops the labels the scrape
  added (job, instance, pod, ...), so several proxies' series of one pair add
  up as in a direct scrape;
- `ProxySource` scrapes every ztunnel and waypoint itself every few seconds
  and keeps the last two scrapes (what `shoal top` does, without a Prometheus).
The HTTP calls are passed in (`get`, `scrape`), so the parsing is tested on
planted answers.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable
from urllib.parse import quote

from shoal import traffic
from shoal.errors import ShoalError

Series = traffic.Series
Sampling = tuple[dict[Series, float], dict[Series, float], float]   # before, after, seconds between

COUNTERS = ("istio_requests_total", "istio_request_duration_milliseconds_bucket",
            "istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")
SCRAPE_LABELS = frozenset({"instance", "job", "pod", "node", "namespace", "app"})


class SourceError(ShoalError):
    """The figures could not be read (Prometheus or the proxies did not answer)."""


def series_of(answer: dict) -> dict[Series, float]:
    """A Prometheus instant-query answer (vector) as summed series, without the scrape's own labels."""
    if answer.get("status") != "success":
        raise SourceError(f"Prometheus refused the query: {answer.get('error', answer)}")
    out: dict[Series, float] = {}
    for row in answer["data"]["result"]:
        metric = dict(row["metric"])
        name = metric.pop("__name__", "")
        key = (name, tuple(sorted((k, v) for k, v in metric.items() if k not in SCRAPE_LABELS)))
        out[key] = out.get(key, 0.0) + float(row["value"][1])
    return out


class PrometheusSource:
    origin = "prometheus"

    def __init__(self, get: Callable[[str], bytes], window: float = 60.0, clock: Callable[[], float] = time.time):
        self.get, self.window, self.clock = get, window, clock

    def _at(self, moment: float) -> dict[Series, float]:
        query = quote("{__name__=~\"" + "|".join(COUNTERS) + "\"}")
        try:
            return series_of(json.loads(self.get(f"/api/v1/query?query={query}&time={moment:.3f}")))
        except (OSError, ValueError) as e:
            raise SourceError(f"Prometheus did not answer ({e}); is the cluster up with --addons prometheus?") from e

    def sample(self) -> Sampling:
        now = self.clock()
        return self._at(now - self.window), self._at(now), self.window


class ProxySource:
    """Scrapes in a thread of its own every `interval` seconds; `sample()` is the last two scrapes."""
    origin = "proxies"

    def __init__(self, scrape: Callable[[], dict[Series, float]], interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.scrape, self.interval, self.clock = scrape, interval, clock
        self._lock = threading.Lock()
        self._samples: list[tuple[float, dict[Series, float]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        samples = self.scrape()
        with self._lock:
            self._samples = [*self._samples[-1:], (self.clock(), samples)]

    def start(self) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    self.take()
                except OSError:
                    pass   # a proxy restarting: the next scrape has it
                self._stop.wait(self.interval)
        self._thread = threading.Thread(target=loop, name="proxy-scrapes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> Sampling:
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:
            raise SourceError(f"the first figures come after two scrapes of the proxies, {self.interval:g}s apart; "
                              "ask again shortly")
        (t0, before), (t1, after) = samples
        return before, after, max(t1 - t0, 1e-3)
