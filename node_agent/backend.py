"""Which iptables backend the node agent's rules use: the node's, or the one named.

The node's is detected by shoal.iptables_backend (Istio's rule: legacy rules
present, legacy; nft rules only, nft; none, legacy where the kernel takes it);
`--iptables-backend legacy|nft` overrides it.

Every rule the node agent writes goes through `writer(backend)`, in both
families: the pod's capture (iptables.py), its DNS capture (dns_capture.py)
and the node's probe SNAT (probes.py). Rules are specs (`netfilter.rule_text`'s
keywords) grouped as {table: ((chain, the built-in chain that jumps to it), ...)}.
Each change of a family is one `{ip,ip6}tables-<backend>-restore --noflush`
script run in the netns (a block per table, each atomic for the kernel, as a
libiptc commit is), and rules are compared as `{ip,ip6}tables-<backend>-save`
prints them; a pod the agent installs for the first time is written without
reading first (`Tables.create`). Enrollment waits for these processes: see
PERFORMANCE.md. A chain named in `first` must be jumped to by the first rule
of its built-in chain (DNS capture goes ahead of the mode's capture); in the
iptables mode the DNS capture is written in the capture's script.

The writer itself is shoal.iptables_backend.Tables, which the ztunnel's
return path (shoal/transparent.py) writes with too; `Tables` here gives it
the agent's specs and error class.
"""

from __future__ import annotations

import shutil

from shoal import iptables_backend, log
# detect, has_rules, legacy_usable and nft_available are asked of this module by the agent's other parts.
from shoal.iptables_backend import detect, has_rules, legacy_usable, nft_available, run, tool  # noqa: F401

from node_agent import netfilter
from node_agent.errors import PrerequisiteMissing, RedirectError

logger = log.get("node_agent.backend")

BACKENDS = ("auto", "legacy", "nft")


def check(backend: str) -> None:
    """Raises PrerequisiteMissing when the tools of `backend` are not here."""
    if backend == "legacy":
        netfilter.check_legacy()
        return
    for ipv6 in (False, True):
        for name in ("save", "restore"):
            if not shutil.which(tool(name, ipv6, "nft")):
                raise PrerequisiteMissing("iptables-nft", f"{tool(name, ipv6, 'nft')} is not on PATH",
                                          "install it: apt install iptables (it ships the nft tools), or use "
                                          "--iptables-backend legacy")


def resolve(wanted: str, netns: str | None = None) -> str:
    """The backend to use for `wanted` (auto, legacy, nft), its tools checked; logs the choice."""
    if wanted not in BACKENDS:
        raise RedirectError(f"unknown iptables backend {wanted!r}; choose one of {', '.join(BACKENDS)}")
    if wanted == "auto":
        chosen, why = detect(netns)
    else:
        chosen, why = wanted, "--iptables-backend says so"
    check(chosen)
    logger.info("iptables backend chosen", backend=chosen, why=why)
    return chosen


# -- the writer -------------------------------------------------------------------------------


class Tables(iptables_backend.Tables):
    """shoal.iptables_backend's writer with the node agent's rules as specs (`netfilter.rule_text`'s
    keywords) and its failures as RedirectError."""

    error = RedirectError
    hint = ("the agent needs CAP_NET_ADMIN in the node's and the pods' netns and the backend's iptables tools; "
            "--iptables-backend legacy|nft chooses the backend")

    @staticmethod
    def rule(spec: dict) -> str:
        return netfilter.rule_text(**spec)


def writer(backend: str) -> Tables:
    """The writer of a resolved backend (legacy or nft)."""
    if backend not in ("legacy", "nft"):
        raise RedirectError(f"no iptables writer for backend {backend!r}; resolve it first (legacy or nft)")
    return Tables(backend)


def other(backend: str) -> str:
    return "nft" if backend == "legacy" else "legacy"
