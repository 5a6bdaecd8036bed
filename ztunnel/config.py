"""The ztunnel's settings: one frozen object, defaults named once, built from flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shoal import contracts


@dataclass(frozen=True)
class Config:
    cluster: str = "default"
    node: str = "node1"
    control_plane: str = f"198.18.0.1:{contracts.CONTROL_PLANE_GRPC_PORT}"
    socket_path: Path = Path("/var/run/shoal/ztunnel.sock")
    token_file: Path | None = None
    trust_domain: str = "cluster.local"
    listen: str = "0.0.0.0"                 # metrics and readiness: every address of the node's netns
    admin_address: str = "127.0.0.1"
    admin_port: int = contracts.ADMIN_PORT
    metrics_port: int = contracts.METRICS_PORT
    readiness_port: int = contracts.READINESS_PORT
    connect_timeout: float = 5.0
    drain_seconds: float = 10.0
    balancing: str = "round_robin"
    pool_max_streams: int = 100
    pool_idle_seconds: float = 60.0
    preserve_source_ip: bool = True
    # Our pod's name (the kubelet's POD_NAME, the downward API on Kubernetes): readiness answers
    # /healthz/ready/<pod_name> only for this process, so that a probe of a surge pod is not
    # answered by the old ztunnel on the same node port.
    pod_name: str = field(default_factory=lambda: os.environ.get("POD_NAME", ""))

    def __post_init__(self) -> None:
        if self.balancing not in ("round_robin", "least_connections"):
            raise ValueError(f"--balancing {self.balancing!r}: choose round_robin or least_connections")
        if ":" not in self.control_plane:
            raise ValueError(f"--control-plane {self.control_plane!r} must be host:port")
        if self.connect_timeout <= 0 or self.drain_seconds < 0:
            raise ValueError("--connect-timeout must be positive and --drain-seconds not negative")
