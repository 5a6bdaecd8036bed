"""The iptables redirect mode: rules in the pod's netns, in shoal's own chains, per family.

A family (IPv4, IPv6) in which the pod has an address is captured; one in
which it has none is refused, never passed around the mesh (a pod of a
dual-stack node whose podIPs lack IPv6 must not talk IPv6 in plaintext).
The same chains, marks and exemptions in `iptables` and `ip6tables`:

Captured (the mesh carries TCP; other protocols pass, as they do for IPv4):

    -t nat SHOAL_OUTPUT     (jumped to from OUTPUT)
      -o lo                       RETURN    loopback, the pod talking to itself
      -m mark --mark 0x539 -m cgroup ! --path <pod cgroup>
                                  RETURN    the ztunnel's own sockets
      -p tcp                      REDIRECT --to-ports 15001
    -t nat SHOAL_PREROUTING (jumped to from PREROUTING)
      -i lo                       RETURN
      -s 169.254.7.127/32         RETURN    kubelet probes (SNATed on the node, see probes.py);
                                            IPv6: -s fd73:686f:616c:ffff::7:127/128
      -p tcp --dport 15008        RETURN    HBONE goes to the ztunnel as it is
      -p tcp                      REDIRECT --to-ports 15006

Refused:

    -t filter SHOAL_OUTPUT (jumped to from OUTPUT)
      -o lo                       RETURN    127.0.0.1, ::1 and the pod's own addresses
      -p icmp / -p ipv6-icmp      RETURN    errors; neighbour discovery for IPv6
      -p tcp                      REJECT --reject-with tcp-reset   (connect() fails at once)
                                  REJECT --reject-with icmp-admin-prohibited / icmp6-adm-prohibited
    -t filter SHOAL_INPUT  (jumped to from INPUT)
      -i lo                       RETURN
      -p icmp / -p ipv6-icmp      RETURN
                                  DROP

Refusing outbound (rather than dropping it) makes an app that tries IPv6
first fall back to IPv4 at once instead of waiting for a timeout. An
AF_INET6 socket connecting to a v4-mapped address (::ffff:a.b.c.d) sends
IPv4, which the IPv4 rules handle like any other. REDIRECT sends outbound
to the loopback address of its family (127.0.0.1 or ::1) and inbound to the
pod's own address; the ztunnel reads where a connection was going with
SO_ORIGINAL_DST or IP6T_SO_ORIGINAL_DST (conntrack keeps it for REDIRECT).

The mark: the ztunnel's sockets inside the pod carry 0x539 so that capture
skips them, but a process of the pod with CAP_NET_ADMIN can set the same
mark. So the mark counts only on sockets made outside the pod's cgroup (the
ztunnel's): an app's socket is captured whatever its mark.

The backend: the rules are written in the node's iptables backend (backend.py, legacy or nft,
each with its own -restore and -save) from one set of specs (`capture_specs`, `refuse_specs`);
removal takes shoal's chains out of both backends and both families.

Every chain is owned whole: installing refills it and keeps exactly one jump,
so a second install (or a restarted agent) makes no duplicates; a family that
changes policy (the pod got an IPv6 address) gets its new chains before the
old ones go. Removing deletes the jumps and the chains, in both families.

Kubelet probes and STRICT mTLS: the probe comes from the node, not from a mesh
peer, so the ztunnel would refuse it on 15006. Instead of teaching the ztunnel
about kubelets, the node SNATs the kubelet's TCP to an enrolled pod to the
probe source of the family (probes.py) and the pod lets that source through
to the app. Nothing else can carry that source: it is never routed off the
node, mesh peers arrive with their own pod IPs, and on the node only the
kubelet's cgroup is SNATed to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from shoal.contracts import HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK, OUTBOUND_PORT, PROBE_SOURCE, PROBE_SOURCE6

from node_agent.errors import PrerequisiteMissing, RedirectError
from node_agent.hostmounts import hierarchy_path
from node_agent.model import PodTarget

OUTPUT_CHAIN = "SHOAL_OUTPUT"
PREROUTING_CHAIN = "SHOAL_PREROUTING"
INPUT_CHAIN = "SHOAL_INPUT"

# {table: ((chain, the built-in chain that jumps to it), ...)}, the same in both families
CAPTURE_CHAINS = {"nat": ((OUTPUT_CHAIN, "OUTPUT"), (PREROUTING_CHAIN, "PREROUTING"))}
REFUSE_CHAINS = {"filter": ((OUTPUT_CHAIN, "OUTPUT"), (INPUT_CHAIN, "INPUT"))}
# DNS capture's chain (dns_capture.py writes it); named here so that a change of backend
# (`drop_backend`) finds every chain shoal owns in a pod.
DNS_CHAIN = "SHOAL_DNS"
DNS_CHAINS = {"nat": ((DNS_CHAIN, "OUTPUT"),)}


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


# The rules as specs (netfilter.rule_text's keywords), which the backend writes and compares as
# iptables-save lines.

def capture_specs(pod: PodTarget, ipv6: bool = False) -> dict[str, list[dict]]:
    probe = f"{PROBE_SOURCE6}/128" if ipv6 else f"{PROBE_SOURCE}/32"
    return {
        OUTPUT_CHAIN: [
            dict(out_interface="lo", target="RETURN"),
            ztunnel_exemption_spec(pod),
            dict(protocol="tcp", target="REDIRECT", target_args={"to_ports": str(OUTBOUND_PORT)}),
        ],
        PREROUTING_CHAIN: [
            dict(in_interface="lo", target="RETURN"),
            dict(src=probe, target="RETURN"),
            dict(protocol="tcp", matches=[("tcp", {"dport": str(HBONE_PORT)})], target="RETURN"),
            dict(protocol="tcp", target="REDIRECT", target_args={"to_ports": str(INBOUND_PLAINTEXT_PORT)}),
        ],
    }


def refuse_specs(ipv6: bool = True) -> dict[str, list[dict]]:
    icmp = "icmpv6" if ipv6 else "icmp"
    prohibited = "icmp6-adm-prohibited" if ipv6 else "icmp-admin-prohibited"
    return {
        OUTPUT_CHAIN: [
            dict(out_interface="lo", target="RETURN"),
            dict(protocol=icmp, target="RETURN"),
            dict(protocol="tcp", target="REJECT", target_args={"reject_with": "tcp-reset"}),
            dict(target="REJECT", target_args={"reject_with": prohibited}),
        ],
        INPUT_CHAIN: [
            dict(in_interface="lo", target="RETURN"),
            dict(protocol=icmp, target="RETURN"),
            dict(target="DROP"),
        ],
    }


def kernel_has_ipv6() -> bool:
    """False on a kernel booted with ipv6.disable=1: no IPv6 can flow, and ip6tables cannot load."""
    return os.path.exists("/proc/sys/net/ipv6")


@dataclass(frozen=True)
class FamilyRules:
    """What one family of a pod gets: `chains` with `specs` (those in `first` jumped to first), and
    `stale`, chains that must not be there (the other policy's), out."""
    ipv6: bool
    captured: bool
    chains: dict
    specs: dict
    stale: dict
    first: tuple = ()

    def joined(self, more: "FamilyRules") -> "FamilyRules":
        """These rules and `more` (the pod's DNS capture) as one, written in one -restore."""
        return FamilyRules(self.ipv6, self.captured, _joined(self.chains, more.chains), {**self.specs, **more.specs},
                           _joined(self.stale, more.stale), self.first + more.first)


def family_rules(pod: PodTarget, has_ipv6: bool | None = None) -> list[FamilyRules]:
    """Per family, refused ones first: installing in this order leaves no moment when one family is
    captured and another still open."""
    out = []
    for ipv6 in (families() if has_ipv6 is None else [True, False] if has_ipv6 else [False]):
        if pod.addresses(6 if ipv6 else 4):
            out.append(FamilyRules(ipv6, True, CAPTURE_CHAINS, capture_specs(pod, ipv6), REFUSE_CHAINS))
        else:
            out.append(FamilyRules(ipv6, False, REFUSE_CHAINS, refuse_specs(ipv6), CAPTURE_CHAINS))
    return sorted(out, key=lambda family: family.captured)


def _with(families: list[FamilyRules], also: Callable[[bool], FamilyRules] | None) -> list[FamilyRules]:
    return [family.joined(also(family.ipv6)) if also else family for family in families]


def families() -> list[bool]:
    """ipv6? for every family this kernel has (IPv6 first)."""
    return [True, False] if kernel_has_ipv6() else [False]


def _joined(*groups: dict[str, tuple]) -> dict[str, tuple]:
    """Chain groups as one {table: pairs} (one -save and one -restore for all of them)."""
    out: dict[str, tuple] = {}
    for group in groups:
        for table, pairs in group.items():
            out[table] = out.get(table, ()) + tuple(pairs)
    return out


def drop_in_backend(pod: PodTarget, other: str) -> None:
    """Takes shoal's chains (capture, refusal and DNS capture) out of the pod in backend `other`: when the
    backend changed since the last run, the rules of the old one would apply beside the new ones."""
    from node_agent import backend
    if not os.path.exists(pod.netns):
        return
    if other == "nft" and not backend.nft_available():
        return
    tables = backend.writer(other)
    chains = _joined(CAPTURE_CHAINS, REFUSE_CHAINS, DNS_CHAINS)
    for ipv6 in families():
        try:
            there = tables.present(pod.netns, chains, ipv6=ipv6)
        except (RedirectError, PrerequisiteMissing):
            continue  # no tables of that backend here: nothing of them to remove
        if there:  # a failure to drop them is raised: they would go on capturing the pod, unrecorded
            tables.drop(pod.netns, chains, ipv6=ipv6)


class IptablesRedirector:
    """The rules, written with the node's iptables backend (backend.py, legacy or nft).
    `backend="auto"` detects it when loaded."""

    mode = "iptables"

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend

    @property
    def tables(self):
        from node_agent import backend
        return backend.writer(self.backend)

    def load(self) -> None:
        from node_agent import backend
        self.backend = backend.resolve(self.backend)

    def use_backend(self, wanted: str) -> None:
        """--iptables-backend: `wanted` (auto, legacy, nft) instead of what `load` chose."""
        from node_agent import backend
        self.backend = backend.resolve(wanted)

    def drop_backend(self, pod: PodTarget, other: str) -> None:
        drop_in_backend(pod, other)

    # `also(ipv6)`: more rules of the pod in that family (its DNS capture, dns_capture.family_rules), written
    # and checked with the capture: one -save and one -restore per family and pod is what enrollment waits for.

    def install(self, pod: PodTarget, also: Callable[[bool], FamilyRules] | None = None, *,
                fresh: bool = False) -> None:
        """`fresh`: the agent has not installed this pod before (backend.Tables.create: no -save)."""
        tables = self.tables
        for family in _with(family_rules(pod), also):
            tables.ensure(pod.netns, family.chains, family.specs, ipv6=family.ipv6, first=family.first,
                          stale=family.stale, fresh=fresh)

    def remove(self, pod: PodTarget) -> None:
        """Takes shoal's chains out of the pod, the DNS capture's too, in both backends and families."""
        if not os.path.exists(pod.netns):
            return  # the rules went with the netns
        from node_agent import backend
        self.drop_backend(pod, backend.other(self.backend))
        for ipv6 in families():
            self.tables.drop(pod.netns, _joined(CAPTURE_CHAINS, REFUSE_CHAINS, DNS_CHAINS), ipv6=ipv6)

    def installed(self, pod: PodTarget, also: Callable[[bool], FamilyRules] | None = None) -> bool:
        tables = self.tables
        return all(tables.holds(pod.netns, family.chains, family.specs, ipv6=family.ipv6, first=family.first,
                                absent=family.stale)
                   for family in _with(family_rules(pod), also))

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
