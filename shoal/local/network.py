"""The local cluster's network: underlay bridge, nodes, pod sandboxes, routes.

    underlay netns:  br0 ── n1 ══ eth0 (node1 netns, 198.18.0.1) ── vp… ══ eth0 (pod netns, 198.19.1.N/32)
                         └─ n2 ══ eth0 (node2 netns, 198.18.0.2) ── vp… ══ eth0 (pod netns, 198.19.2.N/32)

Nothing here touches the host's own namespace: every link is created inside a
cluster namespace, and the veth peers are moved between cluster namespaces
only. Pods reach everything through their node (a /32 address and a default
route via 169.254.1.1, which each node-side veth carries), so same-node,
cross-node and Service traffic all pass the node's routing and iptables.
Every function is idempotent: it checks before it creates.
"""

from __future__ import annotations

from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from shoal import netns
from shoal.local.layout import POD_GATEWAY, SERVICE_NETWORK, Layout, node_ip, pod_cidr

EEXIST = 17


def _sysctl(ns: str, key: str, value: str) -> None:
    def write():
        Path("/proc/sys", key.replace(".", "/")).write_text(value)

    netns.run_in(ns, write)


def _up(ip, ifname: str) -> int:
    index = ip.link_lookup(ifname=ifname)[0]
    ip.link("set", index=index, state="up")
    return index


def _add_addr(ip, index: int, address: str, prefixlen: int) -> None:
    try:
        ip.addr("add", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as e:
        if e.code != EEXIST:
            raise


def _add_route(ip, **route) -> None:
    try:
        ip.route("add", **route)
    except NetlinkError as e:
        if e.code != EEXIST:
            raise


def ensure_underlay(layout: Layout) -> None:
    ns = layout.underlay_netns
    netns.create(ns)
    with netns.ip(ns) as ip:
        if not ip.link_lookup(ifname="br0"):
            ip.link("add", ifname="br0", kind="bridge")
        _up(ip, "br0")


def ensure_node(layout: Layout, node: int, nodes: int) -> None:
    """The node's netns, its uplink to the underlay bridge, and routes to the other nodes' pods."""
    ns = layout.node_netns(node)
    netns.create(ns)
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


def ensure_pod_sandbox(layout: Layout, node: int, namespace: str, name: str, pod_ip: str) -> str:
    """The pod's netns wired to its node; returns the netns name."""
    ns = layout.pod_netns(namespace, name)
    node_ns = layout.node_netns(node)
    veth = layout.pod_veth(namespace, name)
    netns.create(ns)
    with netns.ip(node_ns) as ip:
        if not ip.link_lookup(ifname=veth):
            ip.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        index = _up(ip, veth)
        _add_addr(ip, index, POD_GATEWAY, 32)
        ip.route("replace", dst=f"{pod_ip}/32", oif=index, scope=253)
    with netns.ip(ns) as ip:
        index = _up(ip, "eth0")
        _add_addr(ip, index, pod_ip, 32)
        _add_route(ip, dst=f"{POD_GATEWAY}/32", oif=index, scope=253)
        _add_route(ip, dst="0.0.0.0/0", gateway=POD_GATEWAY, oif=index)
    return ns


def remove_pod_sandbox(layout: Layout, namespace: str, name: str) -> None:
    """Deleting the netns deletes its end of the veth, and with it the node's end and route."""
    netns.remove(layout.pod_netns(namespace, name))
