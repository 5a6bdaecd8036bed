"""The iptables redirect mode: rules in the pod's netns, in shoal's own chains.

IPv4, where the mesh carries TCP:

    -t nat SHOAL_OUTPUT     (jumped to from OUTPUT)
      -o lo                       RETURN    loopback, the pod talking to itself
      -m mark --mark 0x539 -m cgroup ! --path <pod cgroup>
                                  RETURN    the ztunnel's own sockets
      -p tcp                      REDIRECT --to-ports 15001
    -t nat SHOAL_PREROUTING (jumped to from PREROUTING)
      -i lo                       RETURN
      -s 169.254.7.127            RETURN    kubelet probes (SNATed on the node, see probes.py)
      -p tcp --dport 15008        RETURN    HBONE goes to the ztunnel as it is
      -p tcp                      REDIRECT --to-ports 15006

IPv6, which the mesh does not carry yet (dual stack is a later issue): it is
refused, never passed around the mesh.

    ip6tables -t filter SHOAL_OUTPUT (jumped to from OUTPUT)
      -o lo                       RETURN    ::1 and the pod's own addresses
      -p ipv6-icmp                RETURN    neighbour discovery, errors
      -p tcp                      REJECT --reject-with tcp-reset   (connect() fails at once)
                                  REJECT --reject-with icmp6-adm-prohibited
    ip6tables -t filter SHOAL_INPUT  (jumped to from INPUT)
      -i lo                       RETURN
      -p ipv6-icmp                RETURN
                                  DROP

Refusing outbound (rather than dropping it) makes an app that tries IPv6
first fall back to IPv4 at once instead of waiting for a timeout. An
AF_INET6 socket connecting to a v4-mapped address (::ffff:a.b.c.d) sends
IPv4, which the nat rules above capture like any other.

The mark: the ztunnel's sockets inside the pod carry 0x539 so that capture
skips them, but a process of the pod with CAP_NET_ADMIN can set the same
mark. So the mark counts only on sockets made outside the pod's cgroup (the
ztunnel's): an app's socket is captured whatever its mark.

The backend: the rules are written in the node's iptables backend (backend.py), legacy with
python-iptables or nft with iptables-nft-restore, from one set of specs (`capture_specs`,
`ipv6_specs`); removal takes shoal's chains out of both.

The ztunnel reads where a connection was going with SO_ORIGINAL_DST (conntrack
keeps it for REDIRECT). Every chain is owned whole: installing refills it and
keeps exactly one jump, so a second install (or a restarted agent) makes no
duplicates. Removing deletes the jumps and the chains, in both families.

Kubelet probes and STRICT mTLS: the probe comes from the node, not from a mesh
peer, so the ztunnel would refuse it on 15006. Instead of teaching the ztunnel
about kubelets, the node SNATs the kubelet's TCP to an enrolled pod to the
link-local 169.254.7.127 (probes.py) and the pod lets that source through to
the app. Nothing else can carry that source: it is link-local and never routed
off the node, mesh peers arrive with their own pod IPs, and on the node only
the kubelet's cgroup is SNATed to it.
"""

from __future__ import annotations

import os

from shoal.contracts import HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK, OUTBOUND_PORT, PROBE_SOURCE

from node_agent import netfilter
from node_agent.errors import PrerequisiteMissing, RedirectError
from node_agent.hostmounts import hierarchy_path
from node_agent.model import PodTarget

OUTPUT_CHAIN = "SHOAL_OUTPUT"
PREROUTING_CHAIN = "SHOAL_PREROUTING"
INPUT_CHAIN = "SHOAL_INPUT"

# (chain, the built-in chain that jumps to it) per family and table
IPV4_CHAINS = {"nat": ((OUTPUT_CHAIN, "OUTPUT"), (PREROUTING_CHAIN, "PREROUTING"))}
IPV6_CHAINS = {"filter": ((OUTPUT_CHAIN, "OUTPUT"), (INPUT_CHAIN, "INPUT"))}


def pod_cgroup(pod: PodTarget) -> str:
    """The pod's cgroup as `-m cgroup --path` names it; the iptables mode needs it to tell the app's marks."""
    path = hierarchy_path(pod.cgroup) if pod.cgroup else ""
    if not path:
        raise RedirectError(f"pod {pod.key} has no cgroup of its own ({pod.cgroup!r}); capture tells the "
                            f"ztunnel's marked sockets from the app's by the pod's cgroup")
    return path


def ztunnel_exemption_spec(pod: PodTarget) -> dict:
    """The RETURN for the ztunnel's marked sockets: marked and made outside the pod's cgroup.

    A pod announced by shoal-cni is captured before its sandbox process runs, when its
    cgroup does not exist yet (`-m cgroup --path` needs it to exist). Until the cgroup is
    known the mark alone exempts: nothing of the pod runs yet that could set it. The rule
    is rewritten with the cgroup as soon as the pod's cgroup is reported (a new target)."""
    marked = ("mark", {"mark": hex(MARK)})
    if not pod.cgroup:
        return dict(matches=[marked], target="RETURN")
    return dict(matches=[marked, ("cgroup", {"path": f"!{pod_cgroup(pod)}"})], target="RETURN")


def ztunnel_exemption(iptc, pod: PodTarget):
    return netfilter.rule(iptc, **ztunnel_exemption_spec(pod))


# The rules as specs (netfilter.rule's keywords): python-iptables builds them for the legacy
# backend, netfilter.rule_text writes them as iptables-save lines for the nft one.

def capture_specs(pod: PodTarget) -> dict[str, list[dict]]:
    return {
        OUTPUT_CHAIN: [
            dict(out_interface="lo", target="RETURN"),
            ztunnel_exemption_spec(pod),
            dict(protocol="tcp", target="REDIRECT", target_args={"to_ports": str(OUTBOUND_PORT)}),
        ],
        PREROUTING_CHAIN: [
            dict(in_interface="lo", target="RETURN"),
            dict(src=f"{PROBE_SOURCE}/32", target="RETURN"),
            dict(protocol="tcp", matches=[("tcp", {"dport": str(HBONE_PORT)})], target="RETURN"),
            dict(protocol="tcp", target="REDIRECT", target_args={"to_ports": str(INBOUND_PLAINTEXT_PORT)}),
        ],
    }


def ipv6_specs() -> dict[str, list[dict]]:
    return {
        OUTPUT_CHAIN: [
            dict(out_interface="lo", target="RETURN"),
            dict(protocol="icmpv6", target="RETURN"),
            dict(protocol="tcp", target="REJECT", target_args={"reject_with": "tcp-reset"}),
            dict(target="REJECT", target_args={"reject_with": "icmp6-adm-prohibited"}),
        ],
        INPUT_CHAIN: [
            dict(in_interface="lo", target="RETURN"),
            dict(protocol="icmpv6", target="RETURN"),
            dict(target="DROP"),
        ],
    }


def _built(iptc, specs: dict[str, list[dict]], ipv6: bool = False) -> dict[str, list]:
    return {chain: [netfilter.rule(iptc, ipv6=ipv6, **spec) for spec in chain_specs]
            for chain, chain_specs in specs.items()}


def capture_rules(iptc, pod: PodTarget) -> dict[str, list]:
    return _built(iptc, capture_specs(pod))


def ipv6_rules(iptc) -> dict[str, list]:
    return _built(iptc, ipv6_specs(), ipv6=True)


def kernel_has_ipv6() -> bool:
    """False on a kernel booted with ipv6.disable=1: no IPv6 can flow, and ip6tables cannot load."""
    return os.path.exists("/proc/sys/net/ipv6")


def _families(pod: PodTarget):
    """(ipv6?, {table: ((chain, built-in), ...)}, {chain: specs}) per family, IPv6 first: installing in
    this order leaves no moment when IPv4 is captured and IPv6 still open."""
    if kernel_has_ipv6():
        yield True, IPV6_CHAINS, ipv6_specs()
    yield False, IPV4_CHAINS, capture_specs(pod)


def _owned(chains: dict[str, tuple]):
    """(table, chain, built-in) for every chain of one family."""
    for table, pairs in chains.items():
        for chain, builtin in pairs:
            yield table, chain, builtin


class IptablesRedirector:
    """The rules, written with the node's iptables backend (backend.py): python-iptables for
    legacy, iptables-nft-restore for nft. `backend="auto"` detects it when loaded."""

    mode = "iptables"

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend

    def load(self) -> None:
        from node_agent import backend
        self.backend = backend.resolve(self.backend)

    def use_backend(self, wanted: str) -> None:
        """--iptables-backend: `wanted` (auto, legacy, nft) instead of what `load` chose."""
        from node_agent import backend
        self.backend = backend.resolve(wanted)

    def _drop_other_backend(self, pod: PodTarget) -> None:
        """Removal leaves nothing in the other backend either (an agent that ran with it before)."""
        self.drop_backend(pod, "nft" if self.backend == "legacy" else "legacy")

    def drop_backend(self, pod: PodTarget, other: str) -> None:
        """Takes shoal's chains out of the pod in backend `other` (when the backend changed since the last run,
        the rules of the old one would apply beside the new ones)."""
        if not os.path.exists(pod.netns):
            return
        for ipv6, chains, _ in _families(pod):
            if other == "nft":
                from node_agent import backend
                if backend.nft_available():
                    backend.drop_chains(pod.netns, chains, ipv6=ipv6)
            else:
                def drop(iptc, tables, chains=chains):
                    for table, chain, builtin in _owned(chains):
                        netfilter.drop_chain(iptc, tables[table], chain, builtin)
                try:
                    netfilter.in_netns(pod.netns, chains, drop, ipv6=ipv6)
                except (RedirectError, PrerequisiteMissing):
                    pass  # no legacy tables here: nothing of them to remove

    def install(self, pod: PodTarget) -> None:
        for ipv6, chains, specs in _families(pod):
            if self.backend == "nft":
                from node_agent import backend
                backend.ensure_chains(pod.netns, chains, specs, ipv6=ipv6)
                continue

            def apply(iptc, tables, chains=chains, specs=specs, ipv6=ipv6):
                rules = _built(iptc, specs, ipv6)
                for table, chain, builtin in _owned(chains):
                    netfilter.ensure_chain(iptc, tables[table], chain, builtin, rules[chain])
            netfilter.in_netns(pod.netns, chains, apply, ipv6=ipv6)

    def remove(self, pod: PodTarget) -> None:
        if not os.path.exists(pod.netns):
            return  # the rules went with the netns
        self._drop_other_backend(pod)
        for ipv6, chains, _ in _families(pod):
            if self.backend == "nft":
                from node_agent import backend
                backend.drop_chains(pod.netns, chains, ipv6=ipv6)
                continue

            def drop(iptc, tables, chains=chains):
                for table, chain, builtin in _owned(chains):
                    netfilter.drop_chain(iptc, tables[table], chain, builtin)
            netfilter.in_netns(pod.netns, chains, drop, ipv6=ipv6)

    def installed(self, pod: PodTarget) -> bool:
        for ipv6, chains, specs in _families(pod):
            if self.backend == "nft":
                from node_agent import backend
                if not backend.holds_chains(pod.netns, chains, specs, ipv6=ipv6):
                    return False
                continue

            def check(iptc, tables, chains=chains, specs=specs, ipv6=ipv6):
                rules = _built(iptc, specs, ipv6)
                # compared whole, so an older agent's rules are installed again, not taken as these
                return all(netfilter.chain_is(iptc, tables[table], chain, rules[chain])
                           and netfilter.jumps(iptc, tables[table], chain, builtin) == 1
                           for table, chain, builtin in _owned(chains))
            if not netfilter.in_netns(pod.netns, chains, check, ipv6=ipv6):
                return False
        return True

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
