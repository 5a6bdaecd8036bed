"""The control plane's Prometheus metrics, in a registry of their own (one per
server, so tests can run several). Names follow Istio's pilot where one exists."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PUSH_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.pushes = Counter("shoal_xds_pushes", "Config.Watch responses sent, by resource type",
                              ["type"], registry=r)
        self.push_latency = Histogram(
            "shoal_xds_push_time_seconds",
            "Time from a config change to the response carrying it being written to a subscriber",
            ["type"], buckets=PUSH_BUCKETS, registry=r)
        self.connected = Gauge("shoal_xds_connected_proxies", "Config.Watch streams open, by kind",
                               ["kind"], registry=r)
        self.nacks = Counter("shoal_xds_nacks", "Responses a proxy refused (NACK), by resource type",
                             ["type"], registry=r)
        self.csr_signed = Counter("shoal_csr_signed", "Certificates signed", registry=r)
        self.csr_refused = Counter("shoal_csr_refused", "Certificate requests refused, by reason",
                                   ["reason"], registry=r)
        self.auth_failures = Counter("shoal_auth_failures", "Calls refused for a bad or missing credential",
                                     ["rpc"], registry=r)
        self.config_rejected = Counter("shoal_config_rejected",
                                       "Config objects the translator refused, by kind", ["kind"], registry=r)
        self.resources = Gauge("shoal_config_resources", "Resources in the current config, by type",
                               ["type"], registry=r)
