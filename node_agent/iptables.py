"""The iptables redirect mode: nat rules in the pod's netns, in shoal's own chains.

    -t nat SHOAL_OUTPUT     (jumped to from OUTPUT)
      -m mark --mark 0x539        RETURN    the ztunnel's own sockets
      -o lo                       RETURN    loopback, the pod talking to itself
      -p tcp                      REDIRECT --to-ports 15001
    -t nat SHOAL_PREROUTING (jumped to from PREROUTING)
      -i lo                       RETURN
      -s 169.254.7.127            RETURN    kubelet probes (SNATed on the node, see probes.py)
      -p tcp --dport 15008        RETURN    HBONE goes to the ztunnel as it is
      -p tcp                      REDIRECT --to-ports 15006

The ztunnel reads where a connection was going with SO_ORIGINAL_DST (conntrack
keeps it for REDIRECT). Both chains are owned whole: installing refills them
and keeps exactly one jump, so a second install (or a restarted agent) makes
no duplicates. Removing deletes the jumps and the chains.

Kubelet probes and STRICT mTLS: the probe comes from the node, not from a mesh
peer, so the ztunnel would refuse it on 15006. Instead of teaching the ztunnel
about kubelets, the node SNATs host-originated TCP to an enrolled pod to the
link-local 169.254.7.127 (probes.py) and the pod lets that source through to
the app. Nothing else can carry that source: it is link-local and never routed
off the node, and mesh peers arrive with their own pod IPs.
"""

from __future__ import annotations

import os

from shoal.contracts import HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK, OUTBOUND_PORT, PROBE_SOURCE

from node_agent import netfilter
from node_agent.model import PodTarget

OUTPUT_CHAIN = "SHOAL_OUTPUT"
PREROUTING_CHAIN = "SHOAL_PREROUTING"


def capture_rules(iptc) -> dict[str, list]:
    rule = netfilter.rule
    return {
        OUTPUT_CHAIN: [
            rule(iptc, matches=[("mark", {"mark": hex(MARK)})], target="RETURN"),
            rule(iptc, out_interface="lo", target="RETURN"),
            rule(iptc, protocol="tcp", target="REDIRECT", target_args={"to_ports": str(OUTBOUND_PORT)}),
        ],
        PREROUTING_CHAIN: [
            rule(iptc, in_interface="lo", target="RETURN"),
            rule(iptc, src=f"{PROBE_SOURCE}/32", target="RETURN"),
            rule(iptc, protocol="tcp", matches=[("tcp", {"dport": str(HBONE_PORT)})], target="RETURN"),
            rule(iptc, protocol="tcp", target="REDIRECT", target_args={"to_ports": str(INBOUND_PLAINTEXT_PORT)}),
        ],
    }


class IptablesRedirector:
    mode = "iptables"

    def load(self) -> None:
        netfilter.import_iptc()
        netfilter.check_legacy()

    def install(self, pod: PodTarget) -> None:
        def apply(iptc, tables):
            nat = tables["nat"]
            wanted = capture_rules(iptc)
            netfilter.ensure_chain(iptc, nat, OUTPUT_CHAIN, "OUTPUT", wanted[OUTPUT_CHAIN])
            netfilter.ensure_chain(iptc, nat, PREROUTING_CHAIN, "PREROUTING", wanted[PREROUTING_CHAIN])
        netfilter.in_netns(pod.netns, ["nat"], apply)

    def remove(self, pod: PodTarget) -> None:
        if not os.path.exists(pod.netns):
            return  # the rules went with the netns
        def drop(iptc, tables):
            netfilter.drop_chain(iptc, tables["nat"], OUTPUT_CHAIN, "OUTPUT")
            netfilter.drop_chain(iptc, tables["nat"], PREROUTING_CHAIN, "PREROUTING")
        netfilter.in_netns(pod.netns, ["nat"], drop)

    def installed(self, pod: PodTarget) -> bool:
        def check(iptc, tables):
            nat = tables["nat"]
            wanted = capture_rules(iptc)  # counted, so a rule added there is expected here too
            return (netfilter.chain_rules(iptc, nat, OUTPUT_CHAIN) == len(wanted[OUTPUT_CHAIN])
                    and netfilter.chain_rules(iptc, nat, PREROUTING_CHAIN) == len(wanted[PREROUTING_CHAIN])
                    and netfilter.jumps(iptc, nat, OUTPUT_CHAIN, "OUTPUT") == 1
                    and netfilter.jumps(iptc, nat, PREROUTING_CHAIN, "PREROUTING") == 1)
        return bool(netfilter.in_netns(pod.netns, ["nat"], check))

    # The eBPF mode's extras do not apply here: REDIRECT needs no listener hand-over.
    def set_inbound_listener(self, pod: PodTarget, listener_fd: int) -> None:
        return None

    def attach_ztunnel(self, cgroup) -> None:
        return None

    def detach_ztunnel(self, cgroup) -> None:
        return None

    def unload(self) -> None:
        return None

    def close(self) -> None:
        return None
