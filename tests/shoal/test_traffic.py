"""Traffic figures from two scrapes of the proxies' counters (shoal stat / top), on planted exposition text."""

from __future__ import annotations

import pytest

from shoal.traffic import by_pair, by_workload, deltas, merge, parse

BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000)


def requests(code: str, count: int, destination: str = "reviews-v1", source: str = "client",
             reporter: str = "waypoint") -> str:
    return (f'istio_requests_total{{reporter="{reporter}",source_workload="{source}",source_workload_namespace="shop",'
            f'destination_workload="{destination}",destination_workload_namespace="shop",response_code="{code}"}} '
            f"{count}\n")


def histogram(counts: dict[float, int], destination: str = "reviews-v1") -> str:
    """Cumulative buckets from {le: how many requests took at most le ms and more than the bound before}."""
    lines, running = [], 0
    for le in (*BUCKETS, float("inf")):
        running += counts.get(le, 0)
        bound = "+Inf" if le == float("inf") else f"{le}.0"
        lines.append(f'istio_request_duration_milliseconds_bucket{{reporter="waypoint",source_workload="client",'
                     f'source_workload_namespace="shop",destination_workload="{destination}",'
                     f'destination_workload_namespace="shop",response_code="200",le="{bound}"}} {running}\n')
    return "".join(lines)


def tcp(reporter: str, opened: int, sent: int, destination: str = "redis") -> str:
    labels = (f'reporter="{reporter}",source_workload="client",source_workload_namespace="shop",'
              f'destination_workload="{destination}",destination_workload_namespace="shop"')
    return (f"istio_tcp_connections_opened_total{{{labels}}} {opened}\n"
            f"istio_tcp_sent_bytes_total{{{labels}}} {sent}\n"
            f"istio_tcp_received_bytes_total{{{labels}}} {sent // 2}\n")


def test_request_rate_and_success_rate_count_only_the_window():
    before = parse(requests("200", 100) + requests("503", 10))
    after = parse(requests("200", 190) + requests("503", 20))
    (row,) = by_workload(before, after, 10.0).values()
    assert row.requests == 100 and row.rps == 10.0 and row.success == pytest.approx(0.9)


def test_a_counter_that_fell_counts_from_zero():
    grew = deltas(parse(requests("200", 500)), parse(requests("200", 7)))
    assert list(grew.values()) == [7]


def test_latency_quantiles_interpolate_inside_the_bucket():
    before = parse(histogram({}))
    after = parse(histogram({10: 50, 25: 40, 100: 10}))     # 100 requests
    (row,) = by_workload(before, after, 1.0).values()
    assert row.latency(0.5) == pytest.approx(10.0)            # exactly the 50th: the top of the 5-10 bucket
    assert row.latency(0.9) == pytest.approx(25.0)
    assert row.latency(0.95) == pytest.approx(50 + 50 * 0.5)  # halfway into the 50-100 bucket
    slow = by_workload(before, parse(histogram({float("inf"): 10})), 1.0)
    assert next(iter(slow.values())).latency(0.5) == 1000     # past the last bound: only that bound is known


def test_tcp_is_counted_once_from_the_receiving_side():
    before = parse(tcp("source", 0, 0) + tcp("destination", 0, 0))
    after = parse(tcp("source", 5, 1000) + tcp("destination", 5, 1000))
    (row,) = by_workload(before, after, 5.0).values()
    assert (row.connections, row.tcp_bytes) == (5, 1500)
    assert row.success is None and row.latency(0.5) is None


def test_pairs_and_workloads_group_by_who_talks_to_whom():
    after = parse(requests("200", 30, "reviews-v1", "client") + requests("200", 10, "reviews-v2", "client")
                  + requests("200", 5, "reviews-v1", "batch"))
    pairs = by_pair({}, after, 1.0)
    assert {(s[1], d[1]): f.requests for (s, d), f in pairs.items()} == {
        ("client", "reviews-v1"): 30, ("client", "reviews-v2"): 10, ("batch", "reviews-v1"): 5}
    assert {k[1]: f.requests for k, f in by_workload({}, after, 1.0).items()} == {"reviews-v1": 35, "reviews-v2": 10}


def test_samples_of_the_same_series_from_several_proxies_add_up():
    merged = merge([parse(requests("200", 3)), parse(requests("200", 4) + requests("500", 1))])
    assert sorted(merged.values()) == [1, 7]


def test_the_ingress_gateways_requests_count_where_no_waypoint_counted_them():
    # The gateway reports as Istio's gateways do (reporter="source"): to reviews-v1, which has a waypoint, the
    # waypoint's count is the same requests (not added again); to ratings, which has none, the gateway's is all.
    after = parse(requests("200", 30, "reviews-v1", "client") + requests("200", 30, "reviews-v1", "gateway", "source")
                  + requests("503", 8, "ratings", "gateway", "source") + requests("200", 12, "ratings", "gateway",
                                                                                  "source"))
    rows = {k[1]: f for k, f in by_workload({}, after, 1.0).items()}
    assert (rows["reviews-v1"].requests, rows["ratings"].requests) == (30, 20)
    assert rows["ratings"].success == pytest.approx(0.6)
    assert {(s[1], d[1]): f.requests for (s, d), f in by_pair({}, after, 1.0).items() if f.requests} == {
        ("client", "reviews-v1"): 30, ("gateway", "ratings"): 20}
