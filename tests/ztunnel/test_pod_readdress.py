"""A pod the ztunnel holds, sent again by the node agent because it gained an address.

The ztunnel reads a pod's addresses when it is handed the pod: the inbound side serves those
(AppReach.addresses) and the return path covers IPv6 only where the pod has an IPv6 address.
The node agent sends a pod again when its addresses change (node_agent/reconcile.plan); here
the ztunnel's side: an IPv4-only pod gains an IPv6 address, is sent again, and the ztunnel
then knows the new address and has installed the IPv6 return path; removing the pod takes it
away. (Runs the ztunnel's PodRegistry in a netns of its own: no cluster.)
"""

from __future__ import annotations

import asyncio
import os

from shoal import handoff, iptables_backend, netns, transparent
from shoal.certs import CertManager
from shoal.contracts import ZTUNNEL_POD_PORTS
from shoal.proxy_state import ProxyState
from ztunnel.pods import PodRegistry

from support.ca import TestCA
from support.root import needs_root

POD = f"shoal-readdr{os.getpid()}"
IP4, IP6 = "198.19.203.2", "fd73:686f:616c:cb::2"


async def _ignore(pod, sock, address) -> None:
    sock.close()


def _mangle(ipv6: bool) -> str:
    save = iptables_backend.tool("save", ipv6, iptables_backend.this_node())  # the backend the ztunnel writes
    return netns.run(POD, [save, "-t", "mangle"], capture_output=True, text=True).stdout


@needs_root("a network namespace and the return path's rules")
def test_a_held_pod_sent_again_with_a_new_ipv6_address_is_served_there_with_its_return_path():
    netns.create(POD)
    try:
        for argv in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                     ["ip", "addr", "add", f"{IP4}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
            netns.run(POD, argv)
        workload = handoff.Workload("uid-readdr", "web", "demo")

        async def scenario():
            registry = PodRegistry(ProxyState(), CertManager(TestCA().sign), node="node1",
                                   trust_domain="cluster.local")
            registry.serve({port: _ignore for port in ZTUNNEL_POD_PORTS})
            try:
                first = await registry.add_workload(workload, netns.open_fd(POD))
                held = registry.pods["uid-readdr"]
                before = (held.reach.addresses, held.reach.transparent_ipv6)
                netns.run(POD, ["ip", "addr", "add", f"{IP6}/64", "dev", "eth0", "nodad"])
                again = await registry.add_workload(workload, netns.open_fd(POD))
                reach = registry.pods["uid-readdr"].reach
                after = (reach.addresses, reach.transparent_ipv6)
                same_listener = again is first
                mangle6 = _mangle(True)
                await registry.del_workload("uid-readdr")
                return before, after, same_listener, mangle6
            finally:
                await registry.close()

        before, after, same_listener, mangle6 = asyncio.run(scenario())
        assert before == ((IP4,), False)
        assert set(after[0]) == {IP4, IP6} and after[1] is True, after
        assert same_listener, "the pod is kept (its listeners too), not enrolled a second time"
        assert f"-A OUTPUT -j {transparent.CHAIN}" in mangle6, mangle6
        for ipv6 in (False, True):
            assert transparent.CHAIN not in _mangle(ipv6), "removal takes the return path of both families"
    finally:
        netns.remove(POD)
