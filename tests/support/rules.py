"""Every iptables rule a netns holds, in every backend this machine has, for checks that the mesh left none.

`node_agent.netfilter.save` reads the legacy tables of one family only: a
leftover check built on it passes on a node whose agent chose the nft
backend (or on an IPv6 rule) however many rules were left. `every_backend`
reads legacy and nft, IPv4 and IPv6, whichever tools are on PATH; a tool that
is there but cannot read the netns fails the check instead of passing it.
"""

from __future__ import annotations

import shutil

from shoal import iptables_backend


def saved_by_tool(netns: str | None) -> dict[str, str]:
    """{save tool: its output} for every backend and family in the netns (a path or a name; None: this one)."""
    saved = {}
    for backend in iptables_backend.BACKENDS:
        for ipv6 in (False, True):
            save = iptables_backend.tool("save", ipv6, backend)
            if shutil.which(save) is None:
                continue  # this machine has no such backend: nothing of it can be left
            done = iptables_backend.run(netns, [save])
            if done.returncode != 0:
                raise AssertionError(f"{save} could not read {netns or 'this netns'} (so no rule can be ruled "
                                     f"out): {done.stderr.strip()}")
            saved[save] = done.stdout
    if not saved:
        raise AssertionError("no iptables-*-save tool is on PATH: install iptables (scripts/setup.sh does)")
    return saved


def every_backend(netns: str | None) -> str:
    """All of `saved_by_tool`, each tool's output after a `#### <tool>` line (so a failure shows where)."""
    return "\n".join(f"#### {save}\n{text}" for save, text in saved_by_tool(netns).items())


def shoal_rules(netns: str | None, chain: str = "SHOAL") -> list[str]:
    """The lines naming one of shoal's chains (those starting with `chain`), in any backend and family,
    each after its tool's name: [] when none is left."""
    return [f"{save}: {line}" for save, text in saved_by_tool(netns).items()
            for line in text.splitlines() if chain in line and not line.startswith("#")]
