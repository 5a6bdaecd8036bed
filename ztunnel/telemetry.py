"""TCP telemetry: Istio's metric names and labels, and one access-log line per connection.

Each proxied connection has one `ConnectionRecord`. The proxy fills it in as
it learns things (plan, identities, bytes) and calls `open()` once and
`close()` once; `close()` updates the counters and writes the access-log
line. Byte directions follow Istio: *received* is what came from the
connection's client (the request direction), *sent* is what went back to it.
The outbound side reports as `source`, the inbound side as `destination`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from shoal import log
from shoal.metrics import CollectorRegistry, Counter, ProcessCollector, render
from shoal.model import Workload
from shoal.model.addresses import join_address
from shoal.series import gone_series
from shoal.workload_names import access_log_fields, service_labels, telemetry_labels

LABELS = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_canonical_service", "destination_canonical_revision",
    "destination_cluster", "destination_service", "destination_service_name", "destination_service_namespace",
    "request_protocol", "response_flags", "connection_security_policy",
)

access_log = log.get_access("ztunnel.access")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # prometheus_client adds the _total suffix to counters.
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened", LABELS, registry=self.registry)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed", LABELS, registry=self.registry)
        self.sent = Counter("istio_tcp_sent_bytes", "Bytes sent back to the client of a TCP connection",
                            LABELS, registry=self.registry)
        self.received = Counter("istio_tcp_received_bytes", "Bytes received from the client of a TCP connection",
                                LABELS, registry=self.registry)
        self._children: dict[tuple, tuple] = {}
        # process_cpu_seconds_total, process_resident_memory_bytes...: the performance dashboard's CPU and memory.
        ProcessCollector(registry=self.registry)

    def children(self, labels: dict[str, str]):
        """The four labelled counters for one label set, cached (labels() is not cheap)."""
        key = tuple(labels[name] for name in LABELS)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = tuple(c.labels(*key) for c in (self.opened, self.closed, self.sent, self.received))
        return found

    def render(self) -> bytes:
        return render(self.registry)

    def prune(self, live: set[tuple[str, str]], in_use: set[tuple]) -> int:
        """Removes the series of workloads that are gone: label sets whose source or destination
        (namespace, workload) is not in `live`, unless an open connection (`in_use`) still counts on
        them. Without this, every pod that ever talked through the ztunnel would stay a series for
        ever. Returns how many label sets went."""
        gone = gone_series(self._children, LABELS, live, in_use)
        for key in gone:
            for counter in (self.opened, self.closed, self.sent, self.received):
                counter.remove(*key)
            del self._children[key]
        return len(gone)


def client_address(address: tuple, workload: Workload | None) -> tuple[str, int]:
    """The app's end of an outbound connection as telemetry reports it. In eBPF mode the app's connect()
    is rewritten to 127.0.0.1:15001, so the accepted socket's peer is 127.0.0.1:<port>, which names no
    pod; the pod's own IP with the app's port is what iptables mode (and Istio) report."""
    host, port = address[0], address[1]
    if workload is not None and workload.ips and (host.removeprefix("::ffff:").startswith("127.") or host == "::1"):
        # the pod's address of the family the app used (its IPv6 one behind an eBPF connect6 to ::1)
        family = [ip for ip in workload.ips if (":" in ip) == (host == "::1")]
        return (family or workload.ips)[0], port
    return host, port


@dataclass(eq=False)  # identity, so records can sit in a set of active connections
class ConnectionRecord:
    direction: str                      # outbound, inbound (HBONE) or inbound_plaintext
    source: tuple[str, int]
    destination: tuple[str, int]
    source_workload: Workload | None = None
    destination_workload: Workload | None = None
    source_principal: str = ""
    destination_principal: str = ""
    service: str = ""                   # destination service hostname
    mtls: bool = False
    plan: str = ""                      # the outbound plan kind
    upstream: str = ""                  # where we connected (ip:port)
    bytes_received: int = 0
    bytes_sent: int = 0
    response_flags: str = "-"
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    # Reads (received, sent) from the live relay, so long connections show up before they close.
    meter: Callable[[], tuple[int, int]] | None = None
    _opened: bool = False
    _closed: bool = False
    _reported: tuple[int, int] = (0, 0)
    _counters_for: tuple | None = None   # (label inputs, metrics, its four counters), see _counters

    def _counters(self, metrics: Metrics) -> tuple:
        """The four counters of this record's label set. Building the labels is most of what a record costs
        per connection; they are built again only when something they are made of changed since the last
        time (a refusal's flags, a workload learnt late)."""
        inputs = (self.direction, self.source_workload, self.destination_workload, self.source_principal,
                  self.destination_principal, self.service, self.mtls, self.response_flags)
        cached = self._counters_for
        if cached is None or cached[1] is not metrics or cached[0] != inputs:
            cached = self._counters_for = (inputs, metrics, metrics.children(self.labels()))
        return cached[2]

    @property
    def reporter(self) -> str:
        return "source" if self.direction == "outbound" else "destination"

    def label_key(self) -> tuple:
        labels = self.labels()
        return tuple(labels[name] for name in LABELS)

    def labels(self) -> dict[str, str]:
        name, service_namespace = service_labels(self.service, self.destination_workload)
        out = {
            "reporter": self.reporter,
            "source_principal": self.source_principal or "unknown",
            "destination_principal": self.destination_principal or "unknown",
            "destination_service": self.service or "unknown",
            "destination_service_name": name,
            "destination_service_namespace": service_namespace,
            "request_protocol": "tcp",
            "response_flags": self.response_flags,
            "connection_security_policy": "mutual_tls" if self.mtls else "none",
        }
        out.update(telemetry_labels("source", self.source_workload))
        out.update(telemetry_labels("destination", self.destination_workload))
        return out

    def fail(self, flag: str, error: str) -> None:
        self.response_flags = flag
        self.error = error

    def open(self, metrics: Metrics) -> None:
        if not self._opened:
            self._opened = True
            self._counters(metrics)[0].inc()

    def _count_bytes(self, sent, received) -> None:
        if self.meter is not None:
            self.bytes_received, self.bytes_sent = self.meter()
        rx, tx = self._reported
        if self.bytes_received > rx:
            received.inc(self.bytes_received - rx)
        if self.bytes_sent > tx:
            sent.inc(self.bytes_sent - tx)
        self._reported = (max(rx, self.bytes_received), max(tx, self.bytes_sent))

    def report(self, metrics: Metrics) -> None:
        """Counts the bytes moved since the last report (for connections still open)."""
        if self._opened and not self._closed:
            _, _, sent, received = self._counters(metrics)
            self._count_bytes(sent, received)

    def close(self, metrics: Metrics) -> None:
        if self._closed:
            return
        opened, closed, sent, received = self._counters(metrics)
        self._closed = True
        if not self._opened:
            self._opened = True
            opened.inc()
        closed.inc()
        self._count_bytes(sent, received)
        access_log.info(
            "connection complete",
            direction=self.direction,
            src_addr=join_address(self.source),        # an IPv6 address bracketed: [fd73::5]:8080
            dst_addr=join_address(self.destination),
            **access_log_fields("src", self.source_workload),
            **access_log_fields("dst", self.destination_workload),
            src_identity=self.source_principal or None,
            dst_identity=self.destination_principal or None,
            dst_service=self.service or None,
            plan=self.plan or None,
            upstream=self.upstream or None,
            mtls=self.mtls,
            bytes_received=self.bytes_received,
            bytes_sent=self.bytes_sent,
            duration_ms=round((time.monotonic() - self.started) * 1000, 3),
            response_flags=self.response_flags,
            error=self.error or None,
        )
