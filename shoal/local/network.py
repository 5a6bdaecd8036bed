"""The local cluster's network: underlay bridge, nodes, pod sandboxes, routes.

    underlay netns:  br0 ── n1 ══ eth0 (node1 netns, 198.18.0.1) ── vp… ══ eth0 (pod netns, 198.19.1.N/32)
                         └─ n2 ══ eth0 (node2 netns, 198.18.0.2) ── vp… ══ eth0 (pod netns, 198.19.2.N/32)

Nothing here touches the host's own namespace: every link is created inside a
cluster namespace, and the veth peers are moved between cluster namespaces
only. Pods reach everything through their node (a /32 address and a default
route via 169.254.1.1, which each node-side veth carries), so same-node,
cross-node and Service traffic all pass the node's routing and iptables.
Every function is idempotent: it checks before it creates.

IPv6 (`--ip-family dual|ipv6`) is wired the same way: the node's address
on the underlay, a /128 per pod routed by its node, and the pods' default
route via fe80::1, which each node-side veth carries. Addresses are added
`nodad` and every netns made here has DAD off, so they are usable at once;
the IPv6 sysctls are set in each netns made here (a new netns starts from
kernel defaults for IPv6), never in the host's.
"""

from __future__ import annotations

from pathlib import Path

import ipaddress

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from shoal import netns
from shoal.local.layout import (IPV6, POD_GATEWAY, POD_GATEWAY_V6, SERVICE_NETWORK, SERVICE_NETWORK_V6, Layout,
                                families, node_ip, node_ip_v6, pod_cidr, pod_cidr_v6)

EEXIST = 17
AF_INET6 = 10


def _sysctl(ns: str, key: str, value: str) -> None:
    def write():
        Path("/proc/sys", key.replace(".", "/")).write_text(value)

    netns.run_in(ns, write)


def _up(ip, ifname: str) -> int:
    index = ip.link_lookup(ifname=ifname)[0]
    ip.link("set", index=index, state="up")
    return index


def _add_addr(ip, index: int, address: str, prefixlen: int) -> None:
    extra = {"flags": IFA_F_NODAD} if ipaddress.ip_address(address).version == 6 else {}
    try:
        ip.addr("add", index=index, address=address, prefixlen=prefixlen, **extra)
    except NetlinkError as e:
        if e.code != EEXIST:
            raise


def _ipv6_on(ns: str, *, forwarding: bool) -> None:
    """IPv6 usable at once in `ns`: enabled, no DAD on any interface (`all` and those made later), and
    forwarding where the netns routes for others (a node)."""
    for scope in ("all", "default"):
        _sysctl(ns, f"net.ipv6.conf.{scope}.disable_ipv6", "0")
        _sysctl(ns, f"net.ipv6.conf.{scope}.accept_dad", "0")
        if forwarding:
            _sysctl(ns, f"net.ipv6.conf.{scope}.forwarding", "1")


def _add_route(ip, **route) -> None:
    try:
        ip.route("add", **route)
    except NetlinkError as e:
        if e.code != EEXIST:
            raise


def ensure_underlay(layout: Layout, ip_family: str = "ipv4") -> None:
    ns = layout.underlay_netns
    netns.create(ns)
    if IPV6 in families(ip_family):
        _ipv6_on(ns, forwarding=False)
    with netns.ip(ns) as ip:
        if not ip.link_lookup(ifname="br0"):
            ip.link("add", ifname="br0", kind="bridge")
        _up(ip, "br0")


def ensure_node(layout: Layout, node: int, nodes: int, ip_family: str = "ipv4") -> None:
    """The node's netns, its uplink to the underlay bridge, and routes to the other nodes' pods."""
    ns = layout.node_netns(node)
    netns.create(ns)
    ipv6 = IPV6 in families(ip_family)
    if ipv6:  # before the uplink exists, so that it is made with DAD off
        _ipv6_on(ns, forwarding=True)
    uplink = f"n{node}"
    with netns.ip(layout.underlay_netns) as under:
        if not under.link_lookup(ifname=uplink):
            under.link("add", ifname=uplink, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        index = _up(under, uplink)
        bridge = under.link_lookup(ifname="br0")[0]
        under.link("set", index=index, master=bridge)
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    _sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
    _sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")
    with netns.ip(ns) as ip:
        index = _up(ip, "eth0")
        _add_addr(ip, index, node_ip(node), 24)
        for other in range(1, nodes + 1):
            if other != node:
                _add_route(ip, dst=str(pod_cidr(other)), gateway=node_ip(other), oif=index)
        # Locally originated traffic to a VIP needs a route before OUTPUT's DNAT rewrites it.
        _add_route(ip, dst=str(SERVICE_NETWORK), oif=index, scope=253)
        if ipv6:
            _add_addr(ip, index, node_ip_v6(node), 64)
            for other in range(1, nodes + 1):
                if other != node:
                    _add_route(ip, family=AF_INET6, dst=str(pod_cidr_v6(other)), gateway=node_ip_v6(other),
                               oif=index)
            _add_route(ip, family=AF_INET6, dst=str(SERVICE_NETWORK_V6), oif=index)


def ensure_pod_sandbox(layout: Layout, node: int, namespace: str, name: str, pod_ips: tuple[str, ...] | str) -> str:
    """The pod's netns wired to its node, with each of `pod_ips` (one per family, or one address);
    returns the netns name."""
    pod_ips = (pod_ips,) if isinstance(pod_ips, str) else pod_ips
    ns = layout.pod_netns(namespace, name)
    node_ns = layout.node_netns(node)
    veth = layout.pod_veth(namespace, name)
    by_version = {ipaddress.ip_address(a).version: a for a in pod_ips}
    netns.create(ns)
    if 6 in by_version:  # before the pod's end of the veth exists, so that it is made with DAD off
        _ipv6_on(ns, forwarding=False)
    with netns.ip(node_ns) as ip:
        if not ip.link_lookup(ifname=veth):
            ip.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        index = _up(ip, veth)
        if 4 in by_version:
            _add_addr(ip, index, POD_GATEWAY, 32)
            ip.route("replace", dst=f"{by_version[4]}/32", oif=index, scope=253)
        if 6 in by_version:
            _add_addr(ip, index, POD_GATEWAY_V6, 64)
            ip.route("replace", family=AF_INET6, dst=f"{by_version[6]}/128", oif=index)
    with netns.ip(ns) as ip:
        index = _up(ip, "eth0")
        if 4 in by_version:
            _add_addr(ip, index, by_version[4], 32)
            _add_route(ip, dst=f"{POD_GATEWAY}/32", oif=index, scope=253)
            _add_route(ip, dst="0.0.0.0/0", gateway=POD_GATEWAY, oif=index)
        if 6 in by_version:
            _add_addr(ip, index, by_version[6], 128)
            _add_route(ip, family=AF_INET6, dst="::/0", gateway=POD_GATEWAY_V6, oif=index)
    return ns


def remove_pod_sandbox(layout: Layout, namespace: str, name: str) -> None:
    """Deleting the netns deletes its end of the veth, and with it the node's end and route."""
    netns.remove(layout.pod_netns(namespace, name))
