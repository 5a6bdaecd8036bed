"""shoal.metrics renders what prometheus_client renders for the same series (with `_created` off, as
shoal.exposition sets it), byte for byte, and refuses misuse."""

from __future__ import annotations

import re

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import exposition, metrics  # noqa: F401 - exposition turns prometheus_client's _created off

BUCKETS = (0.5, 1, 5, 10, 25, 100, 250, 1000, 10000, 300000)


def build(lib, registry):
    requests = lib.Counter("istio_requests", "Requests handled\nby the waypoint", ("code", "source", "peer"),
                           registry=registry)
    duration = lib.Histogram("istio_request_duration_milliseconds", "Request duration (ms)", ("code",),
                             buckets=BUCKETS, registry=registry)
    active = lib.Gauge("shoal_waypoint_active_requests", "Requests in progress", registry=registry)
    plain = lib.Counter("shoal_plain_total", "A counter named with its suffix", registry=registry)
    unlabelled = lib.Histogram("shoal_sizes", "Sizes", registry=registry)
    requests.labels("200", 'a "quoted" \\ name', "x\ny").inc()
    requests.labels("503", "b", "c").inc(2.5)
    requests.labels(code="200", source="z", peer="q").inc(123456789)
    requests.labels("404", "gone", "soon").inc()
    requests.remove("404", "gone", "soon")
    for value in (0.2, 3, 3, 70, 1e6):
        duration.labels("200").observe(value)
    duration.labels("500")
    active.inc()
    active.inc()
    active.dec()
    active.set(7.25)
    plain.inc(1e-7)
    unlabelled.observe(0.03)
    return requests


def test_the_text_is_prometheus_clients():
    ours, theirs = metrics.CollectorRegistry(), prometheus_client.CollectorRegistry()
    build(metrics, ours)
    build(prometheus_client, theirs)
    text = metrics.render(ours)
    assert text == prometheus_client.generate_latest(theirs)
    assert text == prometheus_client.generate_latest(ours)          # prometheus_client reads our families too
    assert b'istio_requests_total{code="200",peer="x\\ny",source="a \\"quoted\\" \\\\ name"} 1.0' in text
    assert b'istio_requests_total{code="200",peer="q",source="z"} 1.23456789e+08' in text
    assert b"404" not in text
    assert b'istio_request_duration_milliseconds_bucket{code="200",le="+Inf"} 5.0' in text


def test_the_process_series_have_prometheus_clients_names_types_and_help():
    ours, theirs = metrics.CollectorRegistry(), prometheus_client.CollectorRegistry()
    metrics.ProcessCollector(registry=ours)
    prometheus_client.ProcessCollector(registry=theirs)

    def shape(text: bytes) -> list[str]:
        return [re.sub(r" [0-9.e+]+$", " N", line) for line in text.decode().splitlines()]
    assert shape(metrics.render(ours)) == shape(prometheus_client.generate_latest(theirs))
    read = {f.name: f.samples[0].value for f in text_string_to_metric_families(metrics.render(ours).decode())}
    assert read["process_resident_memory_bytes"] > 1024 * 1024 and read["process_open_fds"] >= 3


def test_collect_and_sample_values_read_as_prometheus_clients_do():
    ours = metrics.CollectorRegistry()
    requests = build(metrics, ours)
    assert sum(s.value for m in requests.collect() for s in m.samples) == 1 + 2.5 + 123456789
    assert ours.get_sample_value("istio_requests_total", {"code": "503", "source": "b", "peer": "c"}) == 2.5
    assert ours.get_sample_value("shoal_waypoint_active_requests") == 7.25
    assert ours.get_sample_value("shoal_plain_total") == 1e-7


def test_misuse_is_refused():
    counter = metrics.Counter("c", "c", ("a", "b"))
    with pytest.raises(metrics.MetricsError, match="takes 2 label values, not 1"):
        counter.labels("x")
    with pytest.raises(metrics.MetricsError, match="takes the labels a, b"):
        counter.labels(a="x", c="y")
    with pytest.raises(metrics.MetricsError, match="only goes up"):
        counter.labels("x", "y").inc(-1)
    with pytest.raises(metrics.MetricsError, match="has no labels"):
        metrics.Gauge("g", "g").labels("x")
    with pytest.raises(metrics.MetricsError, match="increasing order"):
        metrics.Histogram("h", "h", buckets=(5, 1))
