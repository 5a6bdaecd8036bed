"""HTTP telemetry: Istio's request metrics with reporter="waypoint" (the ingress gateway's: "source", as
Istio's gateways report), and one access-log line per request.

`RequestRecord` is filled in while a request is handled and `finish()`ed
once: it counts `istio_requests_total`, observes
`istio_request_duration_milliseconds` (Istio's buckets), and writes the
access-log line. Labels follow Istio's standard metrics, so dashboards and
Kiali read them as they are.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from shoal import log
from shoal.metrics import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, render
from shoal.model import Workload
from shoal.model.addresses import join_address
from shoal.series import gone_series
from shoal.workload_names import (  # noqa: F401 - live_workloads
    access_log_fields, live_workloads, service_labels, telemetry_labels,
)
# is the waypoint's too (waypoint.main prunes with it)

_ENDS = tuple(f"{side}_{name}" for side in ("source", "destination")
              for name in ("workload", "workload_namespace", "principal", "app", "version", "canonical_service",
                           "canonical_revision", "cluster"))
# The same per-end labels as the ztunnel's (shoal.workload_names names both ends), then the request's.
LABELS = ("reporter", *_ENDS, "destination_service", "destination_service_name", "destination_service_namespace",
          "request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy")
TCP_LABELS = ("reporter", *_ENDS, "destination_service", "destination_service_name", "destination_service_namespace",
              "request_protocol", "response_flags", "connection_security_policy")
# Istio's default buckets for istio_request_duration_milliseconds.
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                    1800000, 3600000)

access_log = log.get_access("waypoint.access")

FAST_CHILDREN_MAX = 4096     # entries of Metrics._by_facts before it starts over (replaced workloads linger in it)
# x-request-id: a random (version 4) UUID, as Envoy makes it. Not a secret, so from a PRNG seeded once from
# the OS, not uuid.uuid4's getrandom call on every request.
_ids = random.Random()
_V4_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_V4_BITS = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> str:
    h = f"{_ids.getrandbits(128) & _V4_MASK | _V4_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Metrics:
    def __init__(self, reporter: str = "waypoint") -> None:
        # "waypoint" for a waypoint; "source" for the ingress gateway, as Istio's gateways report (it is the
        # mesh's client: it opens the connections into the mesh).
        self.reporter = reporter
        self.registry = CollectorRegistry()
        self.requests = Counter("istio_requests", "Requests handled by the waypoint", LABELS, registry=self.registry)
        self.duration = Histogram("istio_request_duration_milliseconds", "Request duration (ms)", LABELS,
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.retries = Counter("shoal_waypoint_retries", "Tries beyond the first", ("destination_service",),
                               registry=self.registry)
        self.mirrors = Counter("shoal_waypoint_mirrored_requests", "Mirrored copies sent",
                               ("destination_service", "outcome"), registry=self.registry)
        self.active = Gauge("shoal_waypoint_active_requests", "Requests in progress", registry=self.registry)
        # Opaque TCP through the waypoint (prometheus_client adds _total to counters).
        self.tcp_opened = Counter("istio_tcp_connections_opened", "TCP connections opened", TCP_LABELS,
                                  registry=self.registry)
        self.tcp_closed = Counter("istio_tcp_connections_closed", "TCP connections closed", TCP_LABELS,
                                  registry=self.registry)
        self.tcp_sent = Counter("istio_tcp_sent_bytes", "Bytes sent back to the client", TCP_LABELS,
                                registry=self.registry)
        self.tcp_received = Counter("istio_tcp_received_bytes", "Bytes received from the client", TCP_LABELS,
                                    registry=self.registry)
        self._tcp_counters = (self.tcp_opened, self.tcp_closed, self.tcp_sent, self.tcp_received)
        self._children: dict[tuple, tuple] = {}
        # What a request's labels are made of -> (source, destination, children): labels() builds a dict of 26
        # labels, so a finished request finds its series by these facts instead (request_children_of).
        self._by_facts: dict[tuple, tuple] = {}
        self._tcp_children: dict[tuple, tuple] = {}
        # process_cpu_seconds_total, process_resident_memory_bytes...: the performance dashboard's CPU and memory.
        ProcessCollector(registry=self.registry)

    def tcp_children(self, labels: dict[str, str]):
        """(opened, closed, sent, received) children for one opaque-TCP label set, cached as above."""
        key = tuple(self.reporter if name == "reporter" else labels[name] for name in TCP_LABELS)
        found = self._tcp_children.get(key)
        if found is None:
            found = self._tcp_children[key] = tuple(c.labels(*key) for c in self._tcp_counters)
        return found

    def prune(self, live: set[tuple[str, str]]) -> int:
        """Removes the series of workloads that are gone (`live`: (namespace, workload label) of those that
        are not), as the ztunnel does: without it every pod that ever sent a request through the waypoint
        stays a series for ever. Nothing in flight holds a series (they are counted when a request or
        connection ends). Returns how many label sets went."""
        self._by_facts.clear()   # (it holds removed series too; refilled as requests finish)
        gone = gone_series(list(self._children), LABELS, live)
        for key in gone:
            self.requests.remove(*key)
            self.duration.remove(*key)
            del self._children[key]
        gone_tcp = gone_series(list(self._tcp_children), TCP_LABELS, live)
        for key in gone_tcp:
            for counter in self._tcp_counters:
                counter.remove(*key)
            del self._tcp_children[key]
        return len(gone) + len(gone_tcp)

    def request_children(self, labels: dict[str, str]):
        """(counter, histogram) children for one label set, cached: labels() is not cheap."""
        key = tuple(self.reporter if name == "reporter" else labels[name] for name in LABELS)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (self.requests.labels(*key), self.duration.labels(*key))
        return found

    def request_children_of(self, record: "RequestRecord"):
        """request_children(record.labels()), found without building the labels when they were seen before.
        The workloads are keyed by identity and held by the entry, so an id is not reused while it is
        cached, and a workload replaced by the control plane (new labels, new object) gets an entry of its own."""
        src, dst = record.source_workload, record.destination_workload
        key = (id(src), id(dst), record.source_principal, record.destination_principal, record.service,
               record.grpc, record.status, record.grpc_status, record.response_flags)
        found = self._by_facts.get(key)
        if found is None or found[0] is not src or found[1] is not dst:
            if len(self._by_facts) >= FAST_CHILDREN_MAX:
                self._by_facts.clear()
            found = self._by_facts[key] = (src, dst, self.request_children(record.labels()))
        return found[2]

    def render(self) -> bytes:
        return render(self.registry)


@dataclass(eq=False, slots=True)
class RequestRecord:
    source_address: tuple[str, int]
    method: str
    path: str
    authority: str
    source_workload: Workload | None = None
    source_principal: str = ""
    destination_workload: Workload | None = None
    destination_principal: str = ""
    service: str = ""
    route: str = ""
    subset: str = ""
    upstream: str = ""
    status: int = 0
    response_flags: str = "-"
    policy: str = ""
    tries: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    error: str = ""
    request_id: str = ""
    trace_id: str = ""                  # the W3C trace id of the request's span, when it was traced
    grpc: bool = False                  # content-type application/grpc
    grpc_status: str = ""
    started: float = field(default_factory=time.monotonic)
    _finished: bool = False

    def flag(self, flag: str, error: str = "") -> None:
        self.response_flags = flag
        if error:
            self.error = error

    def labels(self) -> dict[str, str]:
        name, service_namespace = service_labels(self.service, self.destination_workload)
        out = {
            "reporter": "waypoint",
            "source_principal": self.source_principal or "unknown",
            "destination_principal": self.destination_principal or "unknown",
            "destination_service": self.service or "unknown",
            "destination_service_name": name,
            "destination_service_namespace": service_namespace,
            "request_protocol": "grpc" if self.grpc else "http",
            "response_code": str(self.status),
            "grpc_response_status": self.grpc_status,
            "response_flags": self.response_flags,
            "connection_security_policy": "mutual_tls",
        }
        out.update(telemetry_labels("source", self.source_workload))
        out.update(telemetry_labels("destination", self.destination_workload))
        return out

    def finish(self, metrics: Metrics) -> None:
        if self._finished:
            return
        self._finished = True
        duration_ms = (time.monotonic() - self.started) * 1000
        counter, histogram = metrics.request_children_of(self)
        counter.inc()
        histogram.observe(duration_ms)
        if not access_log.is_enabled_for(logging.INFO):
            return    # (the access log is off: none of its fields are made)
        access_log.info(
            "request complete",
            method=self.method, path=self.path, authority=self.authority, status=self.status,
            response_flags=self.response_flags, duration_ms=round(duration_ms, 3),
            src_addr=join_address(self.source_address),
            **access_log_fields("src", self.source_workload), src_identity=self.source_principal or None,
            dst_service=self.service or None, route=self.route or None, subset=self.subset or None,
            **access_log_fields("dst", self.destination_workload),
            dst_identity=self.destination_principal or None, upstream=self.upstream or None, tries=self.tries,
            policy=self.policy or None, bytes_received=self.bytes_received, bytes_sent=self.bytes_sent,
            request_id=self.request_id or None, trace_id=self.trace_id or None, error=self.error or None)


def tcp_labels(source: Workload | None, source_principal: str, destination: Workload | None,
               destination_principal: str, service: str, flags: str) -> dict[str, str]:
    name, service_namespace = service_labels(service, destination)
    out = {"reporter": "waypoint", "source_principal": source_principal or "unknown",
           "destination_principal": destination_principal or "unknown", "destination_service": service or "unknown",
           "destination_service_name": name, "destination_service_namespace": service_namespace,
           "request_protocol": "tcp", "response_flags": flags, "connection_security_policy": "mutual_tls"}
    out.update(telemetry_labels("source", source))
    out.update(telemetry_labels("destination", destination))
    return out
