"""Metric labels and byte counting of connection records (no sockets)."""

from __future__ import annotations

from shoal.model import Protocol, Workload
from ztunnel.telemetry import ConnectionRecord, Metrics

from support import metrics as exposition


def value(metrics: Metrics, name: str, **labels) -> float:
    """The sample as a scrape of /metrics reads it."""
    return exposition.value(metrics.render().decode(), name, **labels) or 0.0


SRC = Workload("u1", "client-7d9", "shop", "client", "node1", ("198.19.1.2",), canonical_service="client",
               workload_name="client", protocol=Protocol.HBONE)
DST = Workload("u2", "server-5f2", "shop", "server", "node2", ("198.19.2.2",), protocol=Protocol.HBONE)


def test_open_connection_is_counted_periodically_and_never_twice():
    metrics = Metrics()
    moved = [0, 0]
    record = ConnectionRecord("outbound", ("198.19.1.2", 40000), ("198.18.16.10", 80), source_workload=SRC,
                              destination_workload=DST, source_principal="spiffe://cluster.local/ns/shop/sa/client",
                              destination_principal="spiffe://cluster.local/ns/shop/sa/server",
                              service="server.shop.svc.cluster.local", mtls=True, meter=lambda: tuple(moved))
    record.open(metrics)
    labels = record.labels()
    assert labels["reporter"] == "source" and labels["source_workload"] == "client"
    assert labels["source_canonical_service"] == "client" and labels["source_cluster"] == "Kubernetes"
    assert labels["destination_workload"] == "server-5f2" and labels["destination_service_namespace"] == "shop"
    assert labels["connection_security_policy"] == "mutual_tls"
    moved[:] = [1000, 10]
    record.report(metrics)
    assert value(metrics, "istio_tcp_received_bytes_total", **labels) == 1000
    moved[:] = [1500, 30]
    record.report(metrics)
    record.report(metrics)
    assert value(metrics, "istio_tcp_received_bytes_total", **labels) == 1500
    moved[:] = [2000, 40]
    record.close(metrics)
    record.close(metrics)
    record.report(metrics)
    assert value(metrics, "istio_tcp_received_bytes_total", **labels) == 2000
    assert value(metrics, "istio_tcp_sent_bytes_total", **labels) == 40
    assert value(metrics, "istio_tcp_connections_opened_total", **labels) == 1
    assert value(metrics, "istio_tcp_connections_closed_total", **labels) == 1


def test_failed_connection_carries_flags_and_counts_as_opened_and_closed():
    metrics = Metrics()
    record = ConnectionRecord("inbound_plaintext", ("198.19.3.2", 5000), ("198.19.2.2", 8080), destination_workload=DST)
    record.fail("UAEX", "plaintext refused: PeerAuthentication is STRICT")
    record.close(metrics)
    labels = record.labels()
    assert labels["reporter"] == "destination" and labels["response_flags"] == "UAEX"
    assert labels["source_workload"] == "unknown" and labels["connection_security_policy"] == "none"
    assert value(metrics, "istio_tcp_connections_opened_total", **labels) == 1
    assert value(metrics, "istio_tcp_connections_closed_total", **labels) == 1
    assert b"istio_tcp_connections_closed_total{" in metrics.render()


def test_series_of_workloads_that_are_gone_are_removed_unless_a_connection_still_counts_on_them():
    from ztunnel.connections import ConnectionTracker

    tracker = ConnectionTracker(Metrics())
    done = ConnectionRecord("outbound", ("198.19.1.2", 40000), ("198.19.2.2", 80), source_workload=SRC,
                            destination_workload=DST)
    tracker.begin(done)
    tracker.end(done)
    still_open = ConnectionRecord("inbound", ("198.19.1.2", 40001), ("198.19.2.2", 80), source_workload=SRC,
                                  destination_workload=DST)
    tracker.begin(still_open)
    both = {("shop", "client"), ("shop", "server-5f2")}
    tracker.report_once(lambda: both)
    assert value(tracker.metrics, "istio_tcp_connections_closed_total", **done.labels()) == 1
    tracker.report_once(lambda: {("shop", "client")})          # the server pod was deleted
    text = tracker.metrics.render().decode()
    assert 'reporter="source"' not in text                       # the finished connection's series went
    assert value(tracker.metrics, "istio_tcp_connections_opened_total", **still_open.labels()) == 1  # open: kept
    tracker.end(still_open)
    tracker.report_once(lambda: {("shop", "client")})
    assert "server-5f2" not in tracker.metrics.render().decode()


def test_labels_are_built_once_per_record_unless_what_they_are_made_of_changes(monkeypatch):
    metrics = Metrics()
    built = []
    real_labels = ConnectionRecord.labels
    monkeypatch.setattr(ConnectionRecord, "labels", lambda self: built.append(1) or real_labels(self))
    kept = ConnectionRecord("outbound", ("198.19.1.2", 40001), ("198.19.2.2", 8080), source_workload=SRC,
                            destination_workload=DST, mtls=True)
    kept.open(metrics)
    kept.report(metrics)
    kept.close(metrics)
    assert len(built) == 1

    built.clear()
    changed = ConnectionRecord("outbound", ("198.19.1.2", 40002), ("198.19.2.2", 8080), source_workload=SRC)
    changed.open(metrics)                                  # the destination not known yet
    changed.destination_workload = DST
    changed.fail("UF", "the upstream refused")
    changed.close(metrics)
    assert len(built) == 2
    monkeypatch.undo()
    closed_as = changed.labels()
    opened_as = ConnectionRecord("outbound", ("198.19.1.2", 40002), ("198.19.2.2", 8080),
                                 source_workload=SRC).labels()     # what it was made of when it opened
    assert opened_as != closed_as
    assert value(metrics, "istio_tcp_connections_opened_total", **opened_as) == 1
    assert value(metrics, "istio_tcp_connections_closed_total", **closed_as) == 1
    assert value(metrics, "istio_tcp_connections_opened_total", **closed_as) == 0
