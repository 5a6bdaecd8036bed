"""The node agent's domain type: what redirection needs to know about a pod.

The ports, the mark and the probe sources that capture uses are in
shoal.contracts, where every part reads them.

A pod has one address per family it is given (Kubernetes' `status.podIPs`,
primary first). Capture follows the addresses: a family the pod has an
address in is captured, a family it has none in is refused (iptables.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def canonical_addresses(addresses) -> tuple[str, ...]:
    """The addresses in one text form (compressed IPv6), duplicates dropped, order kept; raises ValueError
    naming a bad one (a v4-mapped IPv6 address is IPv4 on the wire, so it is no pod address)."""
    out = []
    for text in addresses:
        address = ipaddress.ip_address(str(text).strip())  # ValueError names the bad address
        if address.version == 6 and address.ipv4_mapped is not None:
            raise ValueError(f"{text!r} is a v4-mapped address; give the pod its IPv4 address {address.ipv4_mapped}")
        if str(address) not in out:
            out.append(str(address))
    return tuple(out)


@dataclass(frozen=True)
class PodTarget:
    """One pod, as redirection sees it."""
    uid: str
    namespace: str
    name: str
    ip: str  # the primary address (status.podIP), IPv4 or IPv6
    netns: str  # path of the pod's network namespace (/run/netns/..., /proc/PID/ns/net)
    cgroup: str | None = None  # cgroup v2 directory (needed by the eBPF mode)
    service_account: str = "default"
    dns_capture: bool = False  # its UDP and TCP 53 go to the ztunnel's DNS proxy (dns_capture.py)
    ips: tuple[str, ...] = ()  # every address (status.podIPs), the primary first; () means just `ip`

    def __post_init__(self) -> None:
        addresses = canonical_addresses((self.ip, *self.ips))
        object.__setattr__(self, "ip", addresses[0])
        object.__setattr__(self, "ips", addresses)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def addresses(self, version: int) -> tuple[str, ...]:
        """The pod's addresses of one family (4 or 6)."""
        return tuple(a for a in self.ips if ipaddress.ip_address(a).version == version)

    @property
    def ipv4(self) -> str | None:
        return next(iter(self.addresses(4)), None)

    @property
    def ipv6(self) -> str | None:
        return next(iter(self.addresses(6)), None)

    def to_json(self) -> dict:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name, "ip": self.ip,
                "ips": list(self.ips), "netns": self.netns, "cgroup": self.cgroup,
                "service_account": self.service_account, "dns_capture": self.dns_capture}

    @classmethod
    def from_json(cls, raw: dict) -> "PodTarget":
        return cls(raw["uid"], raw["namespace"], raw["name"], raw["ip"], raw["netns"], raw.get("cgroup"),
                   raw.get("service_account", "default"), bool(raw.get("dns_capture", False)),
                   tuple(raw.get("ips") or ()))
