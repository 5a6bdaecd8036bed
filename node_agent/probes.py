"""Kubelet probes under STRICT mTLS: SNAT host-originated TCP to enrolled pods, in the node's netns.

    -t nat SHOAL_POSTROUTING (jumped to from POSTROUTING)
      -d <pod IP>/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127

`--socket-exists` matches only packets that a local socket sent, i.e. the
node's own traffic (the kubelet), never traffic forwarded between pods. The
pod's capture (both modes) lets the source 169.254.7.127 through to the app.
One rule per enrolled pod; the chain is rebuilt from the full set each time,
so it never holds a duplicate or a stale pod.
"""

from __future__ import annotations

from typing import Iterable

from shoal.contracts import PROBE_SOURCE

from node_agent import netfilter

CHAIN = "SHOAL_POSTROUTING"


def _rules(iptc, pod_ips: Iterable[str]) -> list:
    return [netfilter.rule(iptc, protocol="tcp", dst=f"{ip}/32", matches=[("owner", {"socket_exists": ""})],
                           target="SNAT", target_args={"to_source": PROBE_SOURCE})
            for ip in sorted(set(pod_ips))]


def sync(pod_ips: Iterable[str], node_netns: str | None = None) -> None:
    """Makes the node's probe SNAT cover exactly these pod IPs (none: the chain is removed)."""
    pod_ips = list(pod_ips)

    def apply(iptc, tables):
        if pod_ips:
            netfilter.ensure_chain(iptc, tables["nat"], CHAIN, "POSTROUTING", _rules(iptc, pod_ips))
        else:
            netfilter.drop_chain(iptc, tables["nat"], CHAIN, "POSTROUTING")
    netfilter.in_netns(node_netns, ["nat"], apply)


def covered(node_netns: str | None = None) -> set[str]:
    """The pod IPs the node's SNAT covers now."""
    def read(iptc, tables):
        nat = tables["nat"]
        if not nat.is_chain(CHAIN):
            return set()
        return {r.dst.split("/")[0] for r in iptc.Chain(nat, CHAIN).rules}
    return netfilter.in_netns(node_netns, ["nat"], read)
