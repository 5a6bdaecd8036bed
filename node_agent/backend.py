"""Which iptables backend the in-pod rules use: the node's, as Istio detects it, or the one named.

A node's rules live in one of two kernel backends: the legacy x_tables
(`iptables-legacy`), or nf_tables through the iptables-nft compatibility
layer (`iptables-nft`). kube-proxy, the CNI and the operator's tools all use
one, and the mesh uses the same, so that a node's rules read the same way
wherever they are and a node whose kernel or policy has only nf_tables works:
- `detect`: legacy when the node (the agent's netns, the host's) holds
  legacy rules, in either family; nft when it holds nft rules only (Istio's
  rule); with no rules in either, legacy if the kernel takes it, else nft;
- `--iptables-backend legacy|nft` overrides it.

With legacy, rules are written with python-iptables (netfilter.py). With nft,
each change of a table is one `iptables-nft-restore --noflush` script, run in
the pod's netns (atomic for the kernel, as a libiptc commit is), and rules are
compared as `iptables-nft-save` prints them; `netfilter.rule_text` writes the
rules in that form.
"""

from __future__ import annotations

import shutil
import subprocess
from shoal import log

from node_agent import netfilter
from node_agent.errors import PrerequisiteMissing, RedirectError

logger = log.get("node_agent.backend")

BACKENDS = ("auto", "legacy", "nft")


def _tool(name: str, ipv6: bool, backend: str) -> str:
    return f"{'ip6' if ipv6 else 'ip'}tables-{backend}-{name}"


def has_rules(backend: str, netns: str | None = None) -> bool:
    """Does the netns (None: this one) hold any rule of that backend, in either family?"""
    for ipv6 in (False, True):
        tool = _tool("save", ipv6, backend)
        if not shutil.which(tool):
            continue
        argv = [tool] if netns is None else ["nsenter", f"--net={netns}", tool]
        saved = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        if any(line.startswith("-A ") for line in saved.splitlines()):
            return True
    return False


def legacy_usable(netns: str | None = None) -> bool:
    """Can this kernel hold legacy tables (no ip_tables module, or a policy against it: no)?"""
    argv = ["iptables-legacy", "-w", "-t", "nat", "-S"]
    if shutil.which(argv[0]) is None:
        return False
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def detect(netns: str | None = None) -> tuple[str, str]:
    """(backend, why) for the node whose netns this is (None: the agent's own, hostNetwork).

    Istio's order: legacy rules present, legacy; otherwise nft. A node with no rules in
    either (no kube-proxy, a bare test node) keeps legacy when its kernel takes legacy
    tables, python-iptables being the mode's first writer; one whose kernel does not gets nft."""
    if has_rules("legacy", netns):
        return "legacy", "the node holds iptables-legacy rules"
    if has_rules("nft", netns):
        return "nft", "the node holds iptables-nft rules and no legacy ones"
    if legacy_usable(netns) or not nft_available():
        return "legacy", "the node holds no rules in either backend, and its kernel takes legacy tables"
    return "nft", "the node holds no rules, and its kernel refuses legacy tables"


def nft_available() -> bool:
    return all(shutil.which(_tool(name, ipv6, "nft")) for name in ("save", "restore") for ipv6 in (False, True))


def check(backend: str) -> None:
    """Raises PrerequisiteMissing when the tools of `backend` are not here."""
    if backend == "legacy":
        netfilter.import_iptc()
        netfilter.check_legacy()
        return
    for ipv6 in (False, True):
        for name in ("save", "restore"):
            if not shutil.which(_tool(name, ipv6, "nft")):
                raise PrerequisiteMissing("iptables-nft", f"{_tool(name, ipv6, 'nft')} is not on PATH",
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


# -- the nft backend: iptables-nft-restore scripts in the pod's netns ----------------------


def _run(netns: str, argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(["nsenter", f"--net={netns}", *argv], input=stdin, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RedirectError(f"{argv[0]} in {netns} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _saved(netns: str, table: str, ipv6: bool) -> list[str]:
    return _run(netns, [_tool("save", ipv6, "nft"), "-t", table]).splitlines()


def _restore(netns: str, lines: list[str], ipv6: bool) -> None:
    _run(netns, [_tool("restore", ipv6, "nft"), "--noflush"], "\n".join(lines) + "\n")


def _jumps(saved: list[str], chain: str, builtin: str) -> int:
    return saved.count(f"-A {builtin} -j {chain}")


def _rules_of(saved: list[str], chain: str) -> list[str]:
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in saved if line.startswith(prefix)]


def ensure_chains(netns: str, chains: dict[str, tuple], specs: dict[str, list[dict]], *, ipv6: bool) -> None:
    """Each chain holds exactly its rules and is jumped to once, first, from its built-in chain."""
    for table, pairs in chains.items():
        saved = _saved(netns, table, ipv6)
        script = [f"*{table}"]
        script += [f":{chain} - [0:0]" for chain, _ in pairs]  # made, or emptied (--noflush)
        for chain, builtin in pairs:
            jumps = _jumps(saved, chain, builtin)
            script += [f"-D {builtin} -j {chain}"] * max(0, jumps - 1)
            if jumps == 0:
                script.append(f"-I {builtin} 1 -j {chain}")
            script += [f"-A {chain} {netfilter.rule_text(**spec)}" for spec in specs[chain]]
        _restore(netns, script + ["COMMIT"], ipv6)


def drop_chains(netns: str, chains: dict[str, tuple], *, ipv6: bool) -> None:
    for table, pairs in chains.items():
        saved = _saved(netns, table, ipv6)
        script = [f"*{table}"]
        for chain, builtin in pairs:
            if not any(line.startswith(f":{chain} ") for line in saved):
                continue
            script += [f"-D {builtin} -j {chain}"] * _jumps(saved, chain, builtin)
            script += [f"-F {chain}", f"-X {chain}"]
        if len(script) > 1:
            _restore(netns, script + ["COMMIT"], ipv6)


def holds_chains(netns: str, chains: dict[str, tuple], specs: dict[str, list[dict]], *, ipv6: bool) -> bool:
    """Are the chains exactly these rules, each jumped to once (an older agent's rules do not count)?"""
    for table, pairs in chains.items():
        saved = _saved(netns, table, ipv6)
        for chain, builtin in pairs:
            if not any(line.startswith(f":{chain} ") for line in saved):
                return False
            if _rules_of(saved, chain) != [netfilter.rule_text(**spec) for spec in specs[chain]]:
                return False
            if _jumps(saved, chain, builtin) != 1:
                return False
    return True
