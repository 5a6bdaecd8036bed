"""Hosts outside the local cluster: a netns on the underlay that is not a node.

ServiceEntry and egress need a server the mesh did not make and does not
capture. `ensure_outside(layout, index)` makes netns `shoal-<cluster>-outside<index>`
with 198.18.48.<index> on the underlay bridge, routes it to every node and
to the nodes' pod networks, and gives every node a route back; each node
forwards its pods' traffic there as it does between nodes (no NAT). It is
idempotent, and `shoal local down` removes it with the cluster's other
namespaces (they share the prefix); `remove_outside` removes one sooner.
"""

from __future__ import annotations

import ipaddress
import re

from shoal import netns
from shoal.local.errors import LocalClusterError
from shoal.local.layout import NODE_NETWORK, Layout, node_ip, pod_cidr
from shoal.local.network import _add_addr, _add_route, _up

OUTSIDE_NETWORK = ipaddress.ip_network("198.18.48.0/24")
_NODE_NETNS = re.compile(r"node(\d+)$")


def outside_netns(layout: Layout, index: int) -> str:
    return f"{layout.prefix}outside{index}"


def outside_ip(index: int) -> str:
    if not 1 <= index <= 254:
        raise LocalClusterError(f"outside host index {index} is out of range; use 1 to 254 (198.18.48.<index>)")
    return str(OUTSIDE_NETWORK.network_address + index)


def nodes_of(layout: Layout) -> list[int]:
    """The node indexes whose netns exist (the cluster as it runs now)."""
    found = []
    for name in netns.names(layout.prefix):
        match = _NODE_NETNS.match(name[len(layout.prefix):])
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def ensure_outside(layout: Layout, index: int) -> tuple[str, str]:
    """(netns name, address) of outside host `index`, wired to the underlay and every node."""
    address = outside_ip(index)
    nodes = nodes_of(layout)
    if not netns.exists(layout.underlay_netns) or not nodes:
        raise LocalClusterError(f"cluster {layout.cluster} is not up (no underlay or nodes); "
                                f"run `shoal local up --cluster {layout.cluster}` first")
    name = outside_netns(layout, index)
    netns.create(name)
    uplink = f"o{index}"
    with netns.ip(layout.underlay_netns) as under:
        if not under.link_lookup(ifname=uplink):
            under.link("add", ifname=uplink, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
        link = _up(under, uplink)
        under.link("set", index=link, master=under.link_lookup(ifname="br0")[0])
    with netns.ip(name) as ip:
        _up(ip, "lo")
        eth0 = _up(ip, "eth0")
        _add_addr(ip, eth0, address, 32)
        _add_route(ip, dst=str(NODE_NETWORK), oif=eth0, scope=253)
        for node in nodes:
            _add_route(ip, dst=str(pod_cidr(node)), gateway=node_ip(node), oif=eth0)
    for node in nodes:
        with netns.ip(layout.node_netns(node)) as ip:
            eth0 = ip.link_lookup(ifname="eth0")[0]
            _add_route(ip, dst=f"{address}/32", oif=eth0, scope=253)
    return name, address


def remove_outside(layout: Layout, index: int) -> None:
    """The netns goes, and with it its veth; the nodes' routes to it go with their device's peer."""
    address = outside_ip(index)
    for node in nodes_of(layout):
        with netns.ip(layout.node_netns(node)) as ip:
            try:
                ip.route("del", dst=f"{address}/32")
            except Exception:  # noqa: BLE001 - already gone: removal is idempotent
                pass
    netns.remove(outside_netns(layout, index))
