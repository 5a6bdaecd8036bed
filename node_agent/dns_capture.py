"""DNS capture: an enrolled pod's UDP and TCP port 53 to the ztunnel's DNS proxy (15053), in either mode.

For a pod whose namespace or whose own setting asks for it, or the mesh's
option (`shoal.contracts.dns_capture`), one nat chain of its own in the
pod's netns, in each family the pod has an address in (a resolver may be an
IPv6 address), jumped to first from OUTPUT so that it sees DNS before any
other capture:

    -t nat SHOAL_DNS      (jumped to from OUTPUT, at its head)
      -m mark --mark 0x539 -m cgroup ! --path <pod cgroup>
                            RETURN    the ztunnel forwarding to the pod's resolver
      -p udp --dport 53     REDIRECT --to-ports 15053
      -p tcp --dport 53     REDIRECT --to-ports 15053

Loopback is not spared: a pod's resolver is often 127.0.0.x. The eBPF mode
uses this chain too (its connect programs leave loopback destinations
alone, so TCP to a loopback resolver reaches the chain; TCP to another
resolver address is taken to 15001 first and passes through the ztunnel
to that resolver unanswered by the proxy). A pod without DNS capture has
no such chain, nor a family the pod has no address in (that family is
refused whole); installing removes one left from before. The rules are
written with the node's iptables backend (backend.py).
"""

from __future__ import annotations

import os

from shoal.contracts import DNS_PORT, DNS_PROXY_PORT

from node_agent.iptables import (DNS_CHAIN as CHAIN, DNS_CHAINS as CHAINS, FamilyRules, families,
                                 ztunnel_exemption_spec)
from node_agent.model import PodTarget


def specs(pod: PodTarget) -> dict[str, list[dict]]:
    redirect = {"to_ports": str(DNS_PROXY_PORT)}
    return {CHAIN: [
        ztunnel_exemption_spec(pod),
        dict(protocol="udp", matches=[("udp", {"dport": str(DNS_PORT)})], target="REDIRECT", target_args=redirect),
        dict(protocol="tcp", matches=[("tcp", {"dport": str(DNS_PORT)})], target="REDIRECT", target_args=redirect),
    ]}


def _families(pod: PodTarget):
    """(ipv6?, is the chain wanted in that family?)"""
    for ipv6 in families():
        yield ipv6, pod.dns_capture and bool(pod.addresses(6 if ipv6 else 4))


def family_rules(pod: PodTarget, ipv6: bool) -> FamilyRules:
    """The chain as the pod wants it in that family, for the iptables mode to write with its capture."""
    if pod.dns_capture and pod.addresses(6 if ipv6 else 4):
        return FamilyRules(ipv6, True, CHAINS, specs(pod), {}, first=(CHAIN,))
    return FamilyRules(ipv6, False, {}, {}, CHAINS)


def sync(pod: PodTarget, tables) -> None:
    """The chain as the pod wants it, in each family: present with exactly these rules, first, or absent."""
    for ipv6, wanted in _families(pod):
        if wanted:
            tables.ensure(pod.netns, CHAINS, specs(pod), ipv6=ipv6, first=(CHAIN,))
        else:
            tables.drop(pod.netns, CHAINS, ipv6=ipv6)


def remove(pod: PodTarget, tables) -> None:
    if not os.path.exists(pod.netns):
        return  # the chain went with the netns
    for ipv6, _ in _families(pod):
        tables.drop(pod.netns, CHAINS, ipv6=ipv6)


def installed(pod: PodTarget, tables) -> bool:
    for ipv6, wanted in _families(pod):
        if wanted and not tables.holds(pod.netns, CHAINS, specs(pod), ipv6=ipv6, first=(CHAIN,)):
            return False
        if not wanted and tables.present(pod.netns, CHAINS, ipv6=ipv6):
            return False
    return True
