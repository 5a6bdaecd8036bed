"""DNS capture: an enrolled pod's UDP and TCP port 53 to the ztunnel's DNS proxy (15053), in either mode.

For a pod whose namespace or whose own setting asks for it, or the mesh's
option (`shoal.contracts.dns_capture`), one nat chain of its own in the
pod's netns, jumped to first from OUTPUT so that it sees DNS before any
other capture:

    -t nat SHOAL_DNS      (jumped to from OUTPUT, at its head)
      -m mark --mark 0x539 -m cgroup ! --path <pod cgroup>
                            RETURN    the ztunnel forwarding to the pod's resolver
      -p udp --dport 53     REDIRECT --to-ports 15053
      -p tcp --dport 53     REDIRECT --to-ports 15053

Loopback is not spared: a pod's resolver is often 127.0.0.x. The eBPF mode
uses this chain too (its connect4 program leaves loopback destinations
alone, so TCP to a loopback resolver reaches the chain; TCP to another
resolver address is taken to 15001 first and passes through the ztunnel
to that resolver unanswered by the proxy). A pod without DNS capture has
no such chain; installing for it removes one left from before.
"""

from __future__ import annotations

import os

from shoal.contracts import DNS_PORT, DNS_PROXY_PORT

from node_agent import netfilter
from node_agent.iptables import ztunnel_exemption
from node_agent.model import PodTarget

CHAIN = "SHOAL_DNS"
CHAINS = {"nat": ((CHAIN, "OUTPUT"),)}


def rules(iptc, pod: PodTarget) -> list:
    rule = netfilter.rule
    redirect = {"to_ports": str(DNS_PROXY_PORT)}
    return [
        ztunnel_exemption(iptc, pod),
        rule(iptc, protocol="udp", matches=[("udp", {"dport": str(DNS_PORT)})], target="REDIRECT",
             target_args=redirect),
        rule(iptc, protocol="tcp", matches=[("tcp", {"dport": str(DNS_PORT)})], target="REDIRECT",
             target_args=redirect),
    ]


def _first(iptc, table) -> bool:
    output = iptc.Chain(table, "OUTPUT").rules
    return bool(output) and output[0].target.name == CHAIN


def sync(pod: PodTarget) -> None:
    """The chain as the pod wants it: present with exactly these rules, or absent."""
    def apply(iptc, tables):
        if pod.dns_capture:
            netfilter.ensure_chain(iptc, tables["nat"], CHAIN, "OUTPUT", rules(iptc, pod))
            if not _first(iptc, tables["nat"]):       # another chain's jump went in ahead of ours
                output = iptc.Chain(tables["nat"], "OUTPUT")
                for jump in [r for r in output.rules if r.target.name == CHAIN]:
                    output.delete_rule(jump)
                output.insert_rule(netfilter.rule(iptc, target=CHAIN))
        else:
            netfilter.drop_chain(iptc, tables["nat"], CHAIN, "OUTPUT")
    netfilter.in_netns(pod.netns, CHAINS, apply)


def remove(pod: PodTarget) -> None:
    if not os.path.exists(pod.netns):
        return  # the chain went with the netns
    netfilter.in_netns(pod.netns, CHAINS, lambda iptc, tables: netfilter.drop_chain(iptc, tables["nat"], CHAIN,
                                                                                    "OUTPUT"))


def installed(pod: PodTarget) -> bool:
    def check(iptc, tables):
        table = tables["nat"]
        if not pod.dns_capture:
            return not table.is_chain(CHAIN)
        return (netfilter.chain_is(iptc, table, CHAIN, rules(iptc, pod))
                and netfilter.jumps(iptc, table, CHAIN, "OUTPUT") == 1 and _first(iptc, table))
    return bool(netfilter.in_netns(pod.netns, CHAINS, check))
