"""Which iptables backend the node agent's rules use: the node's, or the one named.

The node's is detected by shoal.iptables_backend (Istio's rule: legacy rules
present, legacy; nft rules only, nft; none, legacy where the kernel takes it);
`--iptables-backend legacy|nft` overrides it.

Every rule the node agent writes goes through `writer(backend)`, in both
families: the pod's capture (iptables.py), its DNS capture (dns_capture.py)
and the node's probe SNAT (probes.py). Rules are specs (`netfilter.rule_text`'s
keywords) grouped as {table: ((chain, the built-in chain that jumps to it), ...)}.
Each change of a table is one `{ip,ip6}tables-<backend>-restore --noflush`
script run in the netns (atomic for the kernel, as a libiptc commit is), and
rules are compared as `{ip,ip6}tables-<backend>-save` prints them. A chain
named in `first` must be jumped to by the first rule of its built-in chain
(DNS capture goes ahead of the mode's capture).

Why not python-iptables, even for legacy: libxtables keeps its extensions per
process, and a target both families share (REDIRECT, SNAT) is found for the
first family only once loaded ("can't find target REDIRECT"), or crashes the
process, so a process cannot write REDIRECT in iptables and ip6tables both.
"""

from __future__ import annotations

import shutil
import subprocess

from shoal import log
# detect, has_rules, legacy_usable and nft_available are asked of this module by the agent's other parts.
from shoal.iptables_backend import detect, has_rules, legacy_usable, nft_available, nsenter, tool  # noqa: F401

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


# -- the writers -------------------------------------------------------------------------------


def _jump_line(chain: str, builtin: str) -> str:
    return f"-A {builtin} -j {chain}"


class Tables:
    """Shoal's chains in one backend, written as `iptables-<backend>-restore --noflush` scripts in the
    netns (None: this one) and compared as `iptables-<backend>-save` prints them.

    Each call reads the family's tables once (one -save) and writes at most once (one -restore, one
    block per table, each atomic for the kernel)."""

    def __init__(self, backend: str) -> None:
        self.name = backend

    def _state(self, netns: str | None, ipv6: bool) -> dict[str, list[str]]:
        """{table: its lines}, from one -save of every table of the family."""
        state: dict[str, list[str]] = {}
        lines = None
        for line in _run(netns, [tool("save", ipv6, self.name)]).splitlines():
            if line.startswith("*"):
                lines = state.setdefault(line[1:], [])
            elif lines is not None and not line.startswith("#") and line != "COMMIT":
                lines.append(line)
        return state

    def _restore(self, netns: str | None, blocks: dict[str, list[str]], ipv6: bool) -> None:
        script = [line for table, lines in blocks.items() if lines for line in (f"*{table}", *lines, "COMMIT")]
        if not script:
            return
        wait = ["-w"] if self.name == "legacy" else []  # the legacy tables' lock, as other writers take it
        _run(netns, [tool("restore", ipv6, self.name), *wait, "--noflush"], "\n".join([*script, ""]))

    def ensure(self, netns: str | None, chains: dict[str, tuple], specs: dict[str, list[dict]], *, ipv6: bool,
               first: tuple[str, ...] = (), stale: dict[str, tuple] | None = None) -> None:
        """Each chain holds exactly its rules and is jumped to once from its built-in chain (first, for a
        chain named in `first`); then the `stale` chains are dropped (new rules in before old ones out)."""
        state = self._state(netns, ipv6)
        blocks: dict[str, list[str]] = {}
        for table, pairs in chains.items():
            saved = state.get(table, [])
            for chain, builtin in pairs:
                # Refilled even when it reads the same: the kernel binds `-m cgroup --path` to the cgroup
                # that has the path when the rule is written, and a cgroup made again under it is new.
                lines = blocks.setdefault(table, [])
                lines.append(f":{chain} - [0:0]")  # made, or emptied (--noflush)
                jumps = _jumps(saved, chain, builtin)
                if chain in first and not _jumped_first(saved, chain, builtin):
                    lines += [f"-D {builtin} -j {chain}"] * jumps
                    jumps = 0
                lines += [f"-D {builtin} -j {chain}"] * max(0, jumps - 1)
                if jumps == 0:
                    lines.append(f"-I {builtin} 1 -j {chain}")
                lines += [f"-A {chain} {netfilter.rule_text(**spec)}" for spec in specs[chain]]
        self._restore(netns, _merged(blocks, _drops(state, stale or {})), ipv6)

    def drop(self, netns: str | None, chains: dict[str, tuple], *, ipv6: bool) -> None:
        state = self._state(netns, ipv6)
        self._restore(netns, _drops(state, chains), ipv6)

    def holds(self, netns: str | None, chains: dict[str, tuple], specs: dict[str, list[dict]], *, ipv6: bool,
              first: tuple[str, ...] = (), absent: dict[str, tuple] | None = None) -> bool:
        """Are the chains exactly these rules, each jumped to once (an older agent's rules do not count),
        and none of the `absent` chains there?"""
        state = self._state(netns, ipv6)
        return (all(_holds(state.get(table, []), chain, builtin, specs[chain], chain in first)
                    for table, pairs in chains.items() for chain, builtin in pairs)
                and not _drops(state, absent or {}))

    def present(self, netns: str | None, chains: dict[str, tuple], *, ipv6: bool) -> bool:
        """Is any of these chains there?"""
        return bool(_drops(self._state(netns, ipv6), chains))

    def rules(self, netns: str | None, table: str, chain: str, *, ipv6: bool) -> list[str]:
        """The chain's rules as iptables-save prints them (after `-A CHAIN `)."""
        return _rules_of(self._state(netns, ipv6).get(table, []), chain)


def _holds(saved: list[str], chain: str, builtin: str, specs: list[dict], first: bool) -> bool:
    return any(line.startswith(f":{chain} ") for line in saved) \
        and _rules_of(saved, chain) == [netfilter.rule_text(**spec) for spec in specs] \
        and _jumps(saved, chain, builtin) == 1 and (not first or _jumped_first(saved, chain, builtin))


def _drops(state: dict[str, list[str]], chains: dict[str, tuple]) -> dict[str, list[str]]:
    """{table: the lines that take these chains out}, for those that are there."""
    blocks: dict[str, list[str]] = {}
    for table, pairs in chains.items():
        saved = state.get(table, [])
        for chain, builtin in pairs:
            if any(line.startswith(f":{chain} ") for line in saved):
                blocks.setdefault(table, []).extend(
                    [*[f"-D {builtin} -j {chain}"] * _jumps(saved, chain, builtin), f"-F {chain}", f"-X {chain}"])
    return blocks


def _merged(first: dict[str, list[str]], then: dict[str, list[str]]) -> dict[str, list[str]]:
    out = {table: list(lines) for table, lines in first.items()}
    for table, lines in then.items():
        out.setdefault(table, []).extend(lines)
    return out


def writer(backend: str) -> Tables:
    """The writer of a resolved backend (legacy or nft)."""
    if backend not in ("legacy", "nft"):
        raise RedirectError(f"no iptables writer for backend {backend!r}; resolve it first (legacy or nft)")
    return Tables(backend)


def other(backend: str) -> str:
    return "nft" if backend == "legacy" else "legacy"


def _run(netns: str | None, argv: list[str], stdin: str | None = None) -> str:
    where = nsenter(netns)
    done = subprocess.run([*where, *argv], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RedirectError(f"{argv[0]} in {netns or 'the agent netns'} failed: "
                            f"{done.stderr.strip() or done.returncode}")
    return done.stdout


def _jumps(saved: list[str], chain: str, builtin: str) -> int:
    return saved.count(_jump_line(chain, builtin))


def _jumped_first(saved: list[str], chain: str, builtin: str) -> bool:
    rules = [line for line in saved if line.startswith(f"-A {builtin} ")]
    return bool(rules) and rules[0] == _jump_line(chain, builtin)


def _rules_of(saved: list[str], chain: str) -> list[str]:
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in saved if line.startswith(prefix)]
