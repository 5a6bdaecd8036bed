"""Kubelet probes under STRICT mTLS: SNAT the kubelet's TCP to enrolled pods, in the node's netns.

    -t nat SHOAL_POSTROUTING (jumped to from POSTROUTING), in each family
      -d <pod IP>/32 -p tcp -m cgroup --path <kubelet cgroup> -j SNAT --to-source 169.254.7.127
      -d <pod IPv6>/128 -p tcp -m cgroup --path <kubelet cgroup> -j SNAT --to-source fd73:686f:616c:ffff::7:127

The pod's capture (both modes) lets the probe source of the family through to the
app, so whatever gets that source bypasses the ztunnel. Only the kubelet may:
`-m cgroup --path` matches packets of sockets made by a process in the
kubelet's cgroup (or below it), so another host-network process connecting to
a pod keeps the node's address, is captured like any peer, and a STRICT pod
refuses it. (The rule used to match `-m owner --socket-exists`, which every
process of the node matches.) Forwarded traffic has no local socket, so a pod
can never match.

Which cgroup: the one the process that runs the probes sits in, as the
kernel names it in the v2 hierarchy (`/proc/<pid>/cgroup` shows it after
`0::`). `shoal node-agent --kubelet-cgroup` sets it; the default is
`system.slice/kubelet.service`, where kubeadm's and most distributions'
systemd units put the kubelet (k3s: `system.slice/k3s.service`). In a local
cluster the probes run in shoal's daemon (`python -m shoal.local.daemon`),
whose cgroup is `shoal/<cluster>/daemon`, and that is the default there.
The path resolves in the node agent's cgroup namespace: the agent must see
the host's (a DaemonSet with hostPID, the host's /sys/fs/cgroup, and no
private cgroup namespace).

The kernel resolves the path once, when the rule is written. A kubelet that
restarts under systemd gets a new cgroup of the same name, which the old
rule no longer matches; `Probes.stale()` notices (the directory's inode, the
cgroup's id, changed) and the agent writes the rule again on its next pass.

One rule per address of an enrolled pod; the chain of each family is rebuilt
from the full set each time, so it never holds a duplicate or a stale pod. The
rules are written with the node's iptables backend (backend.py); removal takes
them out of both backends.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Iterable

from shoal.contracts import PROBE_SOURCE, PROBE_SOURCE6

from node_agent import backend, netfilter
from node_agent.errors import PrerequisiteMissing, RedirectError
from node_agent.hostmounts import cgroup2_root, hierarchy_path
from node_agent.iptables import families

CHAIN = "SHOAL_POSTROUTING"
CHAINS = {"nat": ((CHAIN, "POSTROUTING"),)}
DEFAULT_KUBELET_CGROUP = "system.slice/kubelet.service"


def _spec(ip: str, kubelet: str) -> dict:
    ipv6 = ipaddress.ip_address(ip).version == 6
    return dict(protocol="tcp", dst=f"{ip}/{128 if ipv6 else 32}", matches=[("cgroup", {"path": kubelet})],
                target="SNAT", target_args={"to_source": PROBE_SOURCE6 if ipv6 else PROBE_SOURCE})


def _by_family(pod_ips: Iterable[str]) -> dict[bool, list[str]]:
    """{ipv6?: sorted addresses}, for every family this kernel has."""
    out: dict[bool, list[str]] = {ipv6: [] for ipv6 in families()}
    for ip in set(pod_ips):
        out.setdefault(ipaddress.ip_address(ip).version == 6, []).append(ip)
    return {ipv6: sorted(ips) for ipv6, ips in out.items()}


def kubelet_cgroup_id(kubelet: str, root: Path | None = None) -> int:
    """The id (inode) of the kubelet's cgroup now; raises RedirectError, naming the fix, if there is none."""
    root = root or cgroup2_root()
    if root is None:
        raise RedirectError("cgroup v2 is not mounted here; the probe exemption matches the kubelet by its cgroup")
    try:
        return os.stat(root / kubelet).st_ino
    except FileNotFoundError:
        raise RedirectError(f"the kubelet's cgroup {kubelet!r} does not exist under {root}; kubelet probes to "
                            f"enrolled pods would be refused. Set --kubelet-cgroup to the cgroup of the process "
                            f"that runs the probes (the path after 0:: in /proc/<kubelet pid>/cgroup)") from None


class Probes:
    """The node's probe SNAT for one kubelet cgroup, in one netns (None: the agent's own)."""

    def __init__(self, kubelet_cgroup: str = DEFAULT_KUBELET_CGROUP, node_netns: str | None = None, *,
                 tables: backend.Tables) -> None:
        """`tables`: the backend the agent chose (backend.writer); required, so that no caller silently gets
        the other one, and the node's probes are SNATed in tables the node does not read."""
        self.kubelet = hierarchy_path(kubelet_cgroup)
        if not self.kubelet:
            raise RedirectError("the kubelet's cgroup cannot be the root cgroup: every process of the node "
                                "would pass as the kubelet; set --kubelet-cgroup to the kubelet's own cgroup")
        self.node_netns = node_netns
        self.tables = tables
        self._written_for: int | None = None  # the kubelet cgroup id the rules were last written for
        self._other_dropped = False  # the other backend's chain, which an agent that chose it left, is gone

    def sync(self, pod_ips: Iterable[str]) -> None:
        """Makes the SNAT cover exactly these pod IPs, of both families (none: the chains are removed)."""
        pod_ips = list(pod_ips)
        cgroup_id = kubelet_cgroup_id(self.kubelet) if pod_ips else None
        if not self._other_dropped:  # once per process: its SNAT would go on covering pods that left
            _drop_quietly(backend.Tables(backend.other(self.tables.name)), self.node_netns)
            self._other_dropped = True
        for ipv6, ips in _by_family(pod_ips).items():
            if ips:
                self.tables.ensure(self.node_netns, CHAINS, {CHAIN: [_spec(ip, self.kubelet) for ip in ips]},
                                   ipv6=ipv6)
            else:
                self.tables.drop(self.node_netns, CHAINS, ipv6=ipv6)
        self._written_for = cgroup_id

    def stale(self) -> bool:
        """Do the rules need writing again: never written by this process, or the kubelet's cgroup is a new one?"""
        try:
            return self._written_for is None or self._written_for != kubelet_cgroup_id(self.kubelet)
        except RedirectError:
            return True

    def covered(self) -> set[str]:
        """The pod IPs the node's SNAT covers now, for this kubelet cgroup."""
        return covered(self.node_netns, self.kubelet, tables=self.tables)


def covered(node_netns: str | None, kubelet: str | None, *, tables: backend.Tables) -> set[str]:
    """The pod IPs the node's SNAT covers now in `tables` (the agent's backend), only by rules exactly as
    written for `kubelet`, if given."""
    out = set()
    for ipv6 in families():
        for line in tables.rules(node_netns, "nat", CHAIN, ipv6=ipv6):
            words = line.split()
            if "-d" not in words:
                continue
            ip = words[words.index("-d") + 1].split("/")[0]
            if kubelet is None or line == netfilter.rule_text(**_spec(ip, kubelet)):
                out.add(ip)
    return out


def remove(node_netns: str | None = None) -> None:
    """Removes the node's probe SNAT whatever it matches, from both backends and both families (cleanup,
    when the kubelet's cgroup is not known)."""
    writers = [backend.Tables("legacy")] + ([backend.Tables("nft")] if backend.nft_available() else [])
    for tables in writers:
        for ipv6 in families():
            try:
                tables.drop(node_netns, CHAINS, ipv6=ipv6)
            except (RedirectError, PrerequisiteMissing):
                if tables.name == "legacy" and writers[1:]:
                    continue  # a node with only nftables has no legacy tables to clean
                raise


def _drop_quietly(tables, node_netns: str | None) -> None:
    """The chain out of a backend that may have no tables on this node (nothing of them to remove then)."""
    if tables.name == "nft" and not backend.nft_available():
        return
    for ipv6 in families():
        try:
            tables.drop(node_netns, CHAINS, ipv6=ipv6)
        except (RedirectError, PrerequisiteMissing):
            pass
