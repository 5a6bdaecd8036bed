"""The node agent's domain type: what redirection needs to know about a pod.

The ports, the mark and the probe source that capture uses are in
shoal.contracts, where every part reads them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


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
    dns_capture: bool = False  # its UDP and TCP 53 go to the ztunnel's DNS proxy (dns_capture.py)

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.ip)  # raises ValueError naming the bad address

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name, "ip": self.ip,
                "netns": self.netns, "cgroup": self.cgroup, "service_account": self.service_account,
                "dns_capture": self.dns_capture}

    @classmethod
    def from_json(cls, raw: dict) -> "PodTarget":
        return cls(raw["uid"], raw["namespace"], raw["name"], raw["ip"], raw["netns"], raw.get("cgroup"),
                   raw.get("service_account", "default"), bool(raw.get("dns_capture", False)))
