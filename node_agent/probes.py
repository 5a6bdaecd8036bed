"""Kubelet probes under STRICT mTLS: SNAT the kubelet's TCP to enrolled pods, in the node's netns.

    -t nat SHOAL_POSTROUTING (jumped to from POSTROUTING)
      -d <pod IP>/32 -p tcp -m cgroup --path <kubelet cgroup> -j SNAT --to-source 169.254.7.127

The pod's capture (both modes) lets the source 169.254.7.127 through to the
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

One rule per enrolled pod; the chain is rebuilt from the full set each time,
so it never holds a duplicate or a stale pod.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from shoal.contracts import PROBE_SOURCE

from node_agent import netfilter
from node_agent.errors import RedirectError
from node_agent.hostmounts import cgroup2_root, hierarchy_path

CHAIN = "SHOAL_POSTROUTING"
DEFAULT_KUBELET_CGROUP = "system.slice/kubelet.service"


def _rules(iptc, pod_ips: Iterable[str], kubelet: str) -> list:
    return [netfilter.rule(iptc, protocol="tcp", dst=f"{ip}/32", matches=[("cgroup", {"path": kubelet})],
                           target="SNAT", target_args={"to_source": PROBE_SOURCE})
            for ip in sorted(set(pod_ips))]


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

    def __init__(self, kubelet_cgroup: str = DEFAULT_KUBELET_CGROUP, node_netns: str | None = None) -> None:
        self.kubelet = hierarchy_path(kubelet_cgroup)
        if not self.kubelet:
            raise RedirectError("the kubelet's cgroup cannot be the root cgroup: every process of the node "
                                "would pass as the kubelet; set --kubelet-cgroup to the kubelet's own cgroup")
        self.node_netns = node_netns
        self._written_for: int | None = None  # the kubelet cgroup id the rules were last written for

    def sync(self, pod_ips: Iterable[str]) -> None:
        """Makes the SNAT cover exactly these pod IPs (none: the chain is removed)."""
        pod_ips = list(pod_ips)
        cgroup_id = kubelet_cgroup_id(self.kubelet) if pod_ips else None

        def apply(iptc, tables):
            if pod_ips:
                netfilter.ensure_chain(iptc, tables["nat"], CHAIN, "POSTROUTING", _rules(iptc, pod_ips, self.kubelet))
            else:
                netfilter.drop_chain(iptc, tables["nat"], CHAIN, "POSTROUTING")
        netfilter.in_netns(self.node_netns, ["nat"], apply)
        self._written_for = cgroup_id

    def stale(self) -> bool:
        """Do the rules need writing again: never written by this process, or the kubelet's cgroup is a new one?"""
        try:
            return self._written_for is None or self._written_for != kubelet_cgroup_id(self.kubelet)
        except RedirectError:
            return True

    def covered(self) -> set[str]:
        """The pod IPs the node's SNAT covers now, for this kubelet cgroup."""
        return covered(self.node_netns, self.kubelet)


def covered(node_netns: str | None = None, kubelet: str | None = None) -> set[str]:
    """The pod IPs the node's SNAT covers now (only by rules that match `kubelet`, if given)."""
    def read(iptc, tables):
        nat = tables["nat"]
        if not nat.is_chain(CHAIN):
            return set()
        return {r.dst.split("/")[0] for r in iptc.Chain(nat, CHAIN).rules
                if kubelet is None or any(m.name == "cgroup" and (m.path or "").strip("/") == kubelet
                                          for m in r.matches)}
    return netfilter.in_netns(node_netns, ["nat"], read)


def remove(node_netns: str | None = None) -> None:
    """Removes the node's probe SNAT whatever it matches (cleanup, when the kubelet's cgroup is not known)."""
    netfilter.in_netns(node_netns, ["nat"], lambda iptc, tables: netfilter.drop_chain(iptc, tables["nat"], CHAIN,
                                                                                       "POSTROUTING"))
