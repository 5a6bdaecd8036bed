"""The node agent's domain types: what redirection needs to know about a pod, and the capture constants."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# The ztunnel's ports in a pod, and the SO_MARK of its own sockets (capture skips them).
from shoal.contracts import HBONE_PORT, INBOUND_PLAINTEXT_PORT as INBOUND_PORT, MARK, OUTBOUND_PORT

__all__ = ["HBONE_PORT", "INBOUND_PORT", "MARK", "METRICS_PORT", "OUTBOUND_PORT", "PROBE_SOURCE", "PodTarget"]

# Host-originated traffic to an enrolled pod (the kubelet's probes) is SNATed
# to this link-local address in the node's netns; the pod's capture lets it
# through to the app, so probes work even when mTLS is STRICT.
PROBE_SOURCE = "169.254.7.127"
METRICS_PORT = 15022  # the agent's own metrics and readiness (15020/15021 are the ztunnel's)


@dataclass(frozen=True)
class PodTarget:
    """One pod, as redirection sees it."""
    uid: str
    namespace: str
    name: str
    ip: str
    netns: str  # path of the pod's network namespace (/run/netns/..., /proc/PID/ns/net)
    cgroup: str | None = None  # cgroup v2 directory (needed by the eBPF mode)
    service_account: str = "default"

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.ip)  # raises ValueError naming the bad address

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name, "ip": self.ip,
                "netns": self.netns, "cgroup": self.cgroup, "service_account": self.service_account}

    @classmethod
    def from_json(cls, raw: dict) -> "PodTarget":
        return cls(raw["uid"], raw["namespace"], raw["name"], raw["ip"], raw["netns"], raw.get("cgroup"),
                   raw.get("service_account", "default"))
