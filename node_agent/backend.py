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

Why not python-iptables, even for legacy: libxtables keeps its extensions per
process, and a target both families share (REDIRECT, SNAT) is found for the
first family only once loaded ("can't find target REDIRECT"), or crashes the
process, so a process cannot write REDIRECT in iptables and ip6tables both.
"""

from __future__ import annotations

import shutil

from shoal import log
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
               first: tuple[str, ...] = (), stale: dict[str, tuple] | None = None, fresh: bool = False) -> None:
        """Each chain holds exactly its rules and is jumped to once from its built-in chain (first, for a
        chain named in `first`); then the `stale` chains are dropped (new rules in before old ones out).

        `fresh` (a pod this agent has not installed yet): first try `create`, one -restore and no -save."""
        if fresh and self.create(netns, chains, specs, ipv6=ipv6, first=first, stale=stale):
            return
        state = self._state(netns, ipv6)
        blocks: dict[str, list[str]] = {}
        for table, pairs in chains.items():
            saved = state.get(table, [])
            inserted: set[str] = set()  # built-in chains that get a jump at their head in this script
            # The chains to be first go last: a jump inserted after theirs would push them down.
            for chain, builtin in sorted(pairs, key=lambda pair: pair[0] in first):
                # Refilled even when it reads the same: the kernel binds `-m cgroup --path` to the cgroup
                # that has the path when the rule is written, and a cgroup made again under it is new.
                lines = blocks.setdefault(table, [])
                lines.append(f":{chain} - [0:0]")  # made, or emptied (--noflush)
                jumps = _jumps(saved, chain, builtin)
                if chain in first and (builtin in inserted or not _jumped_first(saved, chain, builtin)):
                    lines += [f"-D {builtin} -j {chain}"] * jumps
                    jumps = 0
                lines += [f"-D {builtin} -j {chain}"] * max(0, jumps - 1)
                if jumps == 0:
                    lines.append(f"-I {builtin} 1 -j {chain}")
                    inserted.add(builtin)
                lines += [f"-A {chain} {netfilter.rule_text(**spec)}" for spec in specs[chain]]
        self._restore(netns, _merged(blocks, _drops(state, stale or {})), ipv6)

    def create(self, netns: str | None, chains: dict[str, tuple], specs: dict[str, list[dict]], *, ipv6: bool,
               first: tuple[str, ...] = (), stale: dict[str, tuple] | None = None) -> bool:
        """Where none of these chains exists: makes them, each jumped to once, in one -restore without
        reading anything first. False, having changed nothing, where one exists.

        `-N` refuses a chain that exists, which aborts the whole table's block; a chain that does not
        exist has no jump to it, so one `-I` each is exactly one jump. A `stale` chain of a table written
        here is asserted absent the same way (`-N`, `-X`); one of another table is not looked for (that
        would make the table in the netns): a pod this agent has not installed holds none (removal drops
        every chain before it forgets the pod, and the ledger records a pod before its first install)."""
        blocks: dict[str, list[str]] = {}
        for table, pairs in chains.items():
            lines = blocks.setdefault(table, [])
            lines += [line for chain, _ in (stale or {}).get(table, ()) for line in (f"-N {chain}", f"-X {chain}")]
            # The chains to be first go last: each `-I 1` pushes the ones before it down.
            for chain, builtin in sorted(pairs, key=lambda pair: pair[0] in first):
                lines += [f"-N {chain}", f"-I {builtin} 1 -j {chain}",
                          *(f"-A {chain} {netfilter.rule_text(**spec)}" for spec in specs[chain])]
        try:
            self._restore(netns, blocks, ipv6)
        except RedirectError:
            return False
        return True

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
    done = run(netns, argv, stdin)
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
