"""Reading what a process exports on /metrics (Prometheus text exposition).

    text = scrape(15020, netns=layout.node_netns(1))
    value(text, "istio_tcp_received_bytes_total", reporter="source")

`value` adds up every sample of that name whose labels include the ones given
(a counter is often split over labels a test does not care about) and is None
when there is no such sample, or nothing was scraped.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from support.net import http_get


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    return [Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: object) -> float | None:
    wanted = {k: str(v) for k, v in labels.items()}.items()
    found = [s.value for s in parse(text) if s.name == name and wanted <= s.labels.items()]
    return sum(found) if found else None


def scrape(port: int, netns: str | None = None, host: str = "127.0.0.1", path: str = "/metrics") -> str:
    """The exposition text at http://host:port/path (from inside `netns` if given); "" if it cannot be read."""
    status, body = http_get(f"http://{host}:{port}{path}", netns=netns)
    return body if status == 200 else ""
