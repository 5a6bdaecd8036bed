"""The waypoint's settings: one frozen object, defaults named once, built from flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shoal import contracts, identity, sockets
from waypoint.tracing import otlp_url


@dataclass(frozen=True)
class Config:
    namespace: str
    name: str                              # the Gateway's name
    service_account: str = ""              # default: the Gateway's name (Istio's convention)
    cluster: str = "default"
    control_plane: str = f"198.18.0.1:{contracts.CONTROL_PLANE_GRPC_PORT}"
    ca_bundle: Path | None = None          # default: the local cluster's /run/shoal/<c>/ca/bundle.pem
    token_file: Path | None = None         # a service-account token (Kubernetes); default: minted locally
    trust_domain: str = "cluster.local"
    listen: str = sockets.ALL_ADDRESSES    # HBONE, metrics, readiness: dual-stack (0.0.0.0 without IPv6)
    hbone_port: int = contracts.HBONE_PORT
    metrics_port: int = contracts.METRICS_PORT
    readiness_port: int = contracts.READINESS_PORT
    admin_port: int = contracts.ADMIN_PORT   # config dump, on 127.0.0.1
    connect_timeout: float = 5.0
    drain_seconds: float = 5.0
    tracing_endpoint: str = ""             # an OTLP/HTTP collector (http://host:4318); empty: no spans are recorded
    tracing_sampling: float = 1.0          # percent of new traces recorded (Istio's default); a caller's decision wins

    def __post_init__(self) -> None:
        if not self.service_account:
            object.__setattr__(self, "service_account", self.name)
        try:
            identity.format_spiffe_id(self.trust_domain, self.namespace, self.service_account)
        except identity.InvalidSpiffeId:
            raise ValueError(f"--namespace {self.namespace!r} / --name {self.name!r} / --trust-domain "
                             f"{self.trust_domain!r}: must be lower-case DNS names") from None
        if ":" not in self.control_plane:
            raise ValueError(f"--control-plane {self.control_plane!r} must be host:port")
        if self.tracing_endpoint:
            otlp_url(self.tracing_endpoint)   # a ValueError that says what to give
        if not 0 <= self.tracing_sampling <= 100:
            raise ValueError(f"--tracing-sampling {self.tracing_sampling:g}: a percentage, 0 to 100")
        if self.connect_timeout <= 0 or self.drain_seconds < 0:
            raise ValueError("--connect-timeout must be positive and --drain-seconds not negative")

    @property
    def identity(self) -> identity.SpiffeId:
        return identity.format_spiffe_id(self.trust_domain, self.namespace, self.service_account)
