"""Names, addresses and paths of one local cluster, defined once.

Addresses stay inside 198.18.0.0/15, which is never wired to the host:
- node i (1-based) has 198.18.0.<i> on the underlay bridge;
- pods of node i get 198.19.<i>.2 to .254 (/32, routed by the node);
- Service VIPs come from 198.18.16.0/20.

With `--ip-family dual` or `ipv6`, IPv6 from shoal's unique local range
fd73:686f:616c::/48 ("shoal" in hex), never wired to the host either, with
the node's and the pod's numbers written as they read in IPv4:
- node i has fd73:686f:616c::<i> on the underlay;
- the pod that is 198.19.<i>.<n> (or would be) is fd73:686f:616c:<i>::<n> (/128);
- Service VIPs come from fd73:686f:616c:ff::/112 (`ff` is no node's: nodes stop at 200).
An `ipv6` cluster's nodes keep their IPv4 underlay address too, as the
machines of an IPv6-only Kubernetes cluster keep their own network: the
mesh's node-to-node control traffic (control plane, metrics) stays on it,
while pods, Services and the HBONE between them are IPv6 only.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from shoal import store

CGROUP_ROOT = Path(os.environ.get("SHOAL_CGROUP_ROOT", "/sys/fs/cgroup/unified"))
BPFFS = Path("/sys/fs/bpf")  # where the node agents pin (node_agent.bpffs mounts it if needed)
NODE_NETWORK = ipaddress.ip_network("198.18.0.0/24")
SERVICE_NETWORK = ipaddress.ip_network(store.SERVICE_NETWORK)  # the store allocates clusterIPs from it
POD_GATEWAY = "169.254.1.1"  # every node-side pod veth carries it, as Calico does
POD_GATEWAY_V6 = "fe80::1"   # and this link-local one, the pods' IPv6 default gateway
ULA_NETWORK = ipaddress.ip_network("fd73:686f:616c::/48")
NODE_NETWORK_V6 = ipaddress.ip_network("fd73:686f:616c::/64")
SERVICE_NETWORK_V6 = ipaddress.ip_network(store.SERVICE_NETWORK_V6)
MAX_NODES = 200
IP_FAMILIES = ("ipv4", "dual", "ipv6")   # `shoal local up --ip-family`; ipv4 is the default
IPV4, IPV6 = "IPv4", "IPv6"              # Kubernetes' names, as in a Service's ipFamilies


def families(ip_family: str) -> tuple[str, ...]:
    """The IP families of a cluster made with `--ip-family ip_family`, primary first (IPv4 first in dual,
    as a dual-stack Kubernetes cluster configured IPv4 first orders them)."""
    try:
        return {"ipv4": (IPV4,), "dual": (IPV4, IPV6), "ipv6": (IPV6,)}[ip_family]
    except KeyError:
        raise ValueError(f"--ip-family {ip_family!r} is not one of {', '.join(IP_FAMILIES)}") from None


def service_ranges(ip_family: str) -> tuple[str, ...]:
    """The Service VIP ranges of such a cluster, primary family first (what the store allocates from)."""
    ranges = {IPV4: str(SERVICE_NETWORK), IPV6: str(SERVICE_NETWORK_V6)}
    return tuple(ranges[f] for f in families(ip_family))


def _hextet(number: int) -> str:
    """A node's or pod's decimal number as an IPv6 group that reads the same (12 -> "12", i.e. 0x12)."""
    return str(number)


def pod_cidr_v6(node: int) -> ipaddress.IPv6Network:
    return ipaddress.ip_network(f"fd73:686f:616c:{_hextet(node)}::/64")


def node_ip_v6(node: int) -> str:
    return str(ipaddress.ip_address(f"fd73:686f:616c::{_hextet(node)}"))


def pod_ips(node: int, host: int, ip_family: str) -> tuple[str, ...]:
    """The addresses of the pod that is host `host` (2 to 254) of node `node`, primary family first."""
    by_family = {IPV4: str(pod_cidr(node).network_address + host),
                 IPV6: str(ipaddress.ip_address(f"fd73:686f:616c:{_hextet(node)}::{_hextet(host)}"))}
    return tuple(by_family[f] for f in families(ip_family))


def node_ips(node: int, ip_family: str) -> tuple[str, ...]:
    """The node's addresses in the cluster's families, primary first (its status.addresses, a hostNetwork
    pod's podIPs)."""
    by_family = {IPV4: node_ip(node), IPV6: node_ip_v6(node)}
    return tuple(by_family[f] for f in families(ip_family))


def pod_cidr(node: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"198.19.{node}.0/24")


def node_ip(node: int) -> str:
    return str(NODE_NETWORK.network_address + node)


def node_name(node: int) -> str:
    return f"node{node}"


def node_index(name: str) -> int:
    if not name.startswith("node") or not name[4:].isdigit():
        raise ValueError(f"{name!r} is not a local-cluster node name (node1, node2, ...)")
    return int(name[4:])


def cluster_name(text: str) -> str:
    """An argparse `type` for `--cluster`: refuses, before anything runs, a name that is not a cluster's."""
    try:
        return store.check_cluster_name(text)
    except store.ClusterNameInvalid as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass(frozen=True)
class Layout:
    """Every name and path of cluster `cluster`, which must match `store.CLUSTER_NAME`:
    the run directory, the cgroup and the netns prefix are all made from it."""

    cluster: str = "default"

    def __post_init__(self) -> None:
        store.check_cluster_name(self.cluster)

    @property
    def prefix(self) -> str:
        return f"shoal-{self.cluster}-"

    @property
    def run_dir(self) -> Path:
        return store.RUN_ROOT / self.cluster

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def cgroup_dir(self) -> Path:
        return CGROUP_ROOT / "shoal" / self.cluster

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}underlay"

    @property
    def daemon_pidfile(self) -> Path:
        return self.run_dir / "daemon.pid"

    def node_netns(self, node: int) -> str:
        return f"{self.prefix}node{node}"

    def node_dir(self, node: int) -> Path:
        """Per-node files: the agent's hand-off socket, the bootstrap token."""
        return self.run_dir / node_name(node)

    def ztunnel_socket(self, node: int) -> Path:
        return self.node_dir(node) / "ztunnel.sock"

    def node_token(self, node: int) -> Path:
        """The node's bootstrap token (its ztunnel's credential to the control plane)."""
        return self.node_dir(node) / "token"

    @property
    def bootstrap_tokens(self) -> Path:
        """`{token: "node<i>"}`, which the control plane reads to authorize ztunnels."""
        return self.run_dir / "bootstrap-tokens.json"

    @property
    def ca_bundle(self) -> Path:
        """The mesh trust bundle the control plane publishes."""
        return self.run_dir / "ca" / "bundle.pem"

    def node_agent_id(self, node: str) -> str:
        """The id a node's agent pins its eBPF objects under (`<bpffs>/shoal/<id>`)."""
        return f"{self.cluster}-{node}"

    def bpf_pins(self) -> list[Path]:
        """This cluster's agents' pin directories: `<cluster>-node<i>`, and not those of a cluster
        whose name only starts the same way (`a-node1-node2` is cluster a-node1's, not a's)."""
        shoal_dir = BPFFS / "shoal"
        if not shoal_dir.is_dir():
            return []
        pattern = re.compile(re.escape(self.cluster) + r"-node[0-9]+")
        return sorted(p for p in shoal_dir.iterdir() if pattern.fullmatch(p.name))

    def pod_netns(self, namespace: str, name: str) -> str:
        return f"{self.prefix}pod-{_short(namespace, name)}"

    def pod_veth(self, namespace: str, name: str) -> str:
        return "vp" + _short(namespace, name)[:12]  # IFNAMSIZ is 16

    def pod_cgroup(self, namespace: str, name: str) -> Path:
        return self.cgroup_dir / "pods" / f"{namespace}_{name}"

    def pod_log(self, namespace: str, name: str, container: str) -> Path:
        return self.logs_dir / f"{namespace}_{name}_{container}.log"

    def store(self) -> store.Store:
        return store.Store(self.cluster)


def _short(namespace: str, name: str) -> str:
    return hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:12]
