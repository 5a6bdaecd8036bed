"""The waypoint's metric series of deleted workloads are removed (issue 9, item 8)."""

import asyncio

from shoal.model import ResourceType
from shoal.proxy_state import ProxyState

from waypoint import main as waypoint_main
from waypoint.telemetry import Metrics, RequestRecord, live_workloads, tcp_labels

from support import metrics as exposition
from wp_model import CLIENT, NS, REVIEWS, V1A, V2, workload

GONE = workload("ratings", "198.19.1.30", "v1", app="ratings")


def _request(metrics: Metrics, source, destination, status=200) -> None:
    record = RequestRecord(("198.19.1.20", 40000), "GET", "/", "reviews", source_workload=source,
                           destination_workload=destination, service=REVIEWS, status=status)
    record.finish(metrics)


def _tcp(metrics: Metrics, source, destination) -> None:
    opened, closed, sent, received = metrics.tcp_children(tcp_labels(source, "", destination, "", REVIEWS, "-"))
    opened.inc()
    closed.inc()
    sent.inc(10)
    received.inc(20)


def _count(metrics: Metrics, name: str, **labels) -> float | None:
    return exposition.value(metrics.render().decode(), name, **labels)


def test_prune_removes_the_series_of_gone_workloads_and_keeps_the_rest():
    metrics = Metrics()
    _request(metrics, CLIENT, V1A)
    _request(metrics, GONE, V1A)          # a source that goes
    _request(metrics, CLIENT, GONE)       # a destination that goes
    _request(metrics, None, V2)           # a peer outside the mesh: "unknown" is never pruned
    _tcp(metrics, GONE, V1A)
    _tcp(metrics, CLIENT, V1A)
    assert _count(metrics, "istio_requests_total", source_workload="ratings") == 1
    assert _count(metrics, "istio_tcp_sent_bytes_total", source_workload="ratings") == 10

    live = live_workloads([CLIENT, V1A, V2])
    assert metrics.prune(live) == 3
    text = metrics.render().decode()
    assert 'source_workload="ratings"' not in text and 'destination_workload="ratings"' not in text
    assert _count(metrics, "istio_requests_total", source_workload="client", destination_workload="reviews-v1") == 1
    assert _count(metrics, "istio_request_duration_milliseconds_count", source_workload="client",
                  destination_workload="reviews-v1") == 1
    assert _count(metrics, "istio_requests_total", source_workload="unknown") == 1
    assert _count(metrics, "istio_tcp_sent_bytes_total", source_workload="client") == 10
    assert metrics.prune(live) == 0
    # A workload that comes back counts from zero in a fresh series.
    _request(metrics, GONE, V1A)
    assert _count(metrics, "istio_requests_total", source_workload="ratings") == 1


def test_the_waypoints_sweep_prunes_series_once_a_pod_is_deleted():
    class Idle:
        def sweep(self) -> None:
            pass

    class StandInProxy:
        http1_pool = Idle()

    async def main():
        state = ProxyState(waypoint=(NS, "waypoint"))
        for w in (CLIENT, V1A, GONE):
            state.upsert(w)
        metrics = Metrics()
        _request(metrics, GONE, V1A)
        _request(metrics, CLIENT, V1A)
        sweep = asyncio.create_task(waypoint_main._sweep(Idle(), StandInProxy(), state, metrics, every=0.01))
        try:
            await asyncio.sleep(0.1)
            assert _count(metrics, "istio_requests_total", source_workload="ratings") == 1   # still a pod
            state.remove(ResourceType.WORKLOAD, GONE.uid)
            for _ in range(500):
                if _count(metrics, "istio_requests_total", source_workload="ratings") is None:
                    break
                await asyncio.sleep(0.01)
            assert _count(metrics, "istio_requests_total", source_workload="ratings") is None
            assert _count(metrics, "istio_requests_total", source_workload="client") == 1
        finally:
            sweep.cancel()
    asyncio.run(main())


def test_a_replaced_workload_counts_under_its_new_labels_not_a_cached_series():
    """Series are found by what the labels are made of (issue 18): a workload the control plane replaced
    (same uid, new version label) must not count under the old object's series."""
    metrics = Metrics()
    _request(metrics, CLIENT, V1A)
    _request(metrics, CLIENT, V1A)
    moved = workload("reviews-v1-a", "198.19.1.11", "v9", deployment="reviews-v1")
    _request(metrics, CLIENT, moved)
    _request(metrics, CLIENT, V1A, status=503)
    assert _count(metrics, "istio_requests_total", destination_version="v1", response_code="200") == 2
    assert _count(metrics, "istio_requests_total", destination_version="v9", response_code="200") == 1
    assert _count(metrics, "istio_requests_total", destination_version="v1", response_code="503") == 1


def test_request_ids_are_distinct_version_4_uuids():
    import uuid

    from waypoint.telemetry import new_request_id
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
