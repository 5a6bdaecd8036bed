"""The node's iptables backend, as Istio detects it: one rule for every part that writes rules.

A node's rules live in one of two kernel backends: the legacy x_tables
(`iptables-legacy`), or nf_tables through the iptables-nft compatibility
layer (`iptables-nft`). kube-proxy, the CNI and the operator's tools all use
one, and the mesh uses the same, so that a node's rules read the same way
wherever they are and a node whose kernel or policy has only nf_tables works.
`detect`: legacy when the node holds legacy rules, in either family; nft when
it holds nft rules only (Istio's rule); with no rules in either, legacy if
the kernel takes it, else nft.

Two parts write rules in a pod: the node agent (its capture, node_agent/
backend.py, which also takes `--iptables-backend`) and the ztunnel (the
source-IP return path, shoal/transparent.py, which follows `this_node()`).
Both run in the node's netns (hostNetwork), so both see the same node.

Both write with one writer, `Tables`: shoal's chains in one backend, as
`{ip,ip6}tables-<backend>-restore --noflush` scripts (a block per table, each
atomic for the kernel, as a libiptc commit is), compared as `-save` prints
them. Chains are grouped as {table: ((chain, the built-in chain that jumps to
it), ...)}. A part gives its rules as iptables-save lines (the ztunnel) or
renders its own specs (`rule`, the node agent's netfilter.rule_text), and
names its own error class (`error`), so each package keeps its hierarchy.

Why not python-iptables, even for legacy: libxtables keeps its extensions per
process, and a target both families share (REDIRECT, SNAT) is found for the
first family only once loaded ("can't find target REDIRECT"), or crashes the
process, so a process cannot write REDIRECT in iptables and ip6tables both.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from shoal.errors import ShoalError

BACKENDS = ("legacy", "nft")


class IptablesError(ShoalError):
    """An iptables -save or -restore failed in a netns."""


def tool(name: str, ipv6: bool, backend: str) -> str:
    """`iptables-nft-save`, `ip6tables-legacy-restore`, ... (name: "", "save" or "restore")."""
    return f"{'ip6' if ipv6 else 'ip'}tables-{backend}" + (f"-{name}" if name else "")


def run(netns: str | int | None, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """Runs `argv` in a netns (a path, a name under /run/netns, an open fd; None: this one), capturing text.

    The child is started from a short-lived thread that entered the netns (setns is per thread, and a
    child starts in its parent thread's netns), not through `nsenter`: enrollment runs a few of these
    per pod, and nsenter's extra exec and setns cost about 4 ms each (1 ms this way)."""
    kwargs = dict(input=stdin, capture_output=True, text=True, check=False)
    from shoal import netns as named
    try:
        if netns is None:
            return subprocess.run(argv, **kwargs)
        return named.run_in(netns, subprocess.run, argv, **kwargs)
    except FileNotFoundError:  # a failed run, as nsenter's was: the callers read the return code
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} is not on PATH")
    except named.NetnsError as e:  # the netns is gone
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def has_rules(backend: str, netns: str | None = None) -> bool:
    """Does the netns (None: this one) hold any rule of that backend, in either family?"""
    for ipv6 in (False, True):
        save = tool("save", ipv6, backend)
        if not shutil.which(save):
            continue
        saved = run(netns, [save]).stdout
        if any(line.startswith("-A ") for line in saved.splitlines()):
            return True
    return False


def legacy_usable(netns: str | None = None) -> bool:
    """Can this kernel hold legacy tables (no ip_tables module, or a policy against it: no)?"""
    argv = ["iptables-legacy", "-w", "-t", "nat", "-S"]
    if shutil.which(argv[0]) is None:
        return False
    return run(netns, argv).returncode == 0


def nft_available() -> bool:
    return all(shutil.which(tool(name, ipv6, "nft")) for name in ("save", "restore") for ipv6 in (False, True))


def detect(netns: str | None = None) -> tuple[str, str]:
    """(backend, why) for the node whose netns this is (None: the caller's own, hostNetwork).

    Istio's order: legacy rules present, legacy; otherwise nft. A node with no rules in
    either (no kube-proxy, a bare test node) keeps legacy when its kernel takes legacy
    tables; one whose kernel does not gets nft."""
    if has_rules("legacy", netns):
        return "legacy", "the node holds iptables-legacy rules"
    if has_rules("nft", netns):
        return "nft", "the node holds iptables-nft rules and no legacy ones"
    if legacy_usable(netns) or not nft_available():
        return "legacy", "the node holds no rules in either backend, and its kernel takes legacy tables"
    return "nft", "the node holds no rules, and its kernel refuses legacy tables"


@functools.cache
def this_node() -> str:
    """The backend of the node this process runs on (in its netns), detected once per process."""
    return detect()[0]


# -- the writer -------------------------------------------------------------------------------


class Tables:
    """Shoal's chains in one backend, written as `iptables-<backend>-restore --noflush` scripts in the
    netns (None: this one; a path, a name, an open fd) and compared as `iptables-<backend>-save` prints them.

    Each call reads the family's tables once (one -save) and writes at most once (one -restore, one
    block per table, each atomic for the kernel)."""

    error: type[Exception] = IptablesError  # what a failed -save or -restore raises (a subclass names its own)
    hint = ""  # what to check, said after a failure's message

    def __init__(self, backend: str) -> None:
        self.name = backend

    @staticmethod
    def rule(rule) -> str:
        """A rule as iptables-save prints it after `-A CHAIN `: given so here; a subclass renders specs."""
        return rule

    def _run(self, netns, argv: list[str], stdin: str | None = None) -> str:
        done = run(netns, argv, stdin)
        if done.returncode != 0:
            where = "this netns" if netns is None else netns if isinstance(netns, str) else "the pod's netns"
            raise self.error(f"{argv[0]} in {where} failed: {done.stderr.strip() or done.returncode}"
                             + (f"; {self.hint}" if self.hint else ""))
        return done.stdout

    def _state(self, netns, ipv6: bool) -> dict[str, list[str]]:
        """{table: its lines}, from one -save of every table of the family."""
        state: dict[str, list[str]] = {}
        lines = None
        for line in self._run(netns, [tool("save", ipv6, self.name)]).splitlines():
            if line.startswith("*"):
                lines = state.setdefault(line[1:], [])
            elif lines is not None and not line.startswith("#") and line != "COMMIT":
                lines.append(line)
        return state

    def _restore(self, netns, blocks: dict[str, list[str]], ipv6: bool) -> None:
        script = [line for table, lines in blocks.items() if lines for line in (f"*{table}", *lines, "COMMIT")]
        if not script:
            return
        wait = ["-w"] if self.name == "legacy" else []  # the legacy tables' lock, as other writers take it
        self._run(netns, [tool("restore", ipv6, self.name), *wait, "--noflush"], "\n".join([*script, ""]))

    def ensure(self, netns, chains: dict[str, tuple], rules: dict[str, list], *, ipv6: bool,
               first: tuple[str, ...] = (), stale: dict[str, tuple] | None = None, fresh: bool = False) -> None:
        """Each chain holds exactly its rules and is jumped to once from its built-in chain (first, for a
        chain named in `first`); then the `stale` chains are dropped (new rules in before old ones out).

        `fresh` (nothing of these chains is expected there): first try `create`, one -restore and no -save."""
        if fresh and self.create(netns, chains, rules, ipv6=ipv6, first=first, stale=stale):
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
                lines += [f"-A {chain} {self.rule(rule)}" for rule in rules[chain]]
        self._restore(netns, _merged(blocks, _drops(state, stale or {})), ipv6)

    def create(self, netns, chains: dict[str, tuple], rules: dict[str, list], *, ipv6: bool,
               first: tuple[str, ...] = (), stale: dict[str, tuple] | None = None) -> bool:
        """Where none of these chains exists: makes them, each jumped to once, in one -restore without
        reading anything first. False where one exists, having changed nothing as long as `chains` names
        one table, as every caller's does: iptables-legacy's -restore commits each table's block on its
        own, so with several tables one written before the refused block would stay.

        `-N` refuses a chain that exists, which aborts the whole table's block; a chain that does not
        exist has no jump to it, so one `-I` each is exactly one jump. A `stale` chain of a table written
        here is asserted absent the same way (`-N`, `-X`); one of another table is not looked for (that
        would make the table in the netns): the caller knows none is there (the node agent: removal drops
        every chain before it forgets the pod, and the ledger records a pod before its first install)."""
        blocks: dict[str, list[str]] = {}
        for table, pairs in chains.items():
            lines = blocks.setdefault(table, [])
            lines += [line for chain, _ in (stale or {}).get(table, ()) for line in (f"-N {chain}", f"-X {chain}")]
            # The chains to be first go last: each `-I 1` pushes the ones before it down.
            for chain, builtin in sorted(pairs, key=lambda pair: pair[0] in first):
                lines += [f"-N {chain}", f"-I {builtin} 1 -j {chain}",
                          *(f"-A {chain} {self.rule(rule)}" for rule in rules[chain])]
        try:
            self._restore(netns, blocks, ipv6)
        except self.error:
            return False
        return True

    def drop(self, netns, chains: dict[str, tuple], *, ipv6: bool) -> None:
        state = self._state(netns, ipv6)
        self._restore(netns, _drops(state, chains), ipv6)

    def holds(self, netns, chains: dict[str, tuple], rules: dict[str, list], *, ipv6: bool,
              first: tuple[str, ...] = (), absent: dict[str, tuple] | None = None) -> bool:
        """Are the chains exactly these rules, each jumped to once (an older agent's rules do not count),
        and none of the `absent` chains there?"""
        state = self._state(netns, ipv6)
        return (all(_holds(state.get(table, []), chain, builtin, [self.rule(rule) for rule in rules[chain]],
                           chain in first)
                    for table, pairs in chains.items() for chain, builtin in pairs)
                and not _drops(state, absent or {}))

    def present(self, netns, chains: dict[str, tuple], *, ipv6: bool) -> bool:
        """Is any of these chains there?"""
        return bool(_drops(self._state(netns, ipv6), chains))

    def rules(self, netns, table: str, chain: str, *, ipv6: bool) -> list[str]:
        """The chain's rules as iptables-save prints them (after `-A CHAIN `)."""
        return _rules_of(self._state(netns, ipv6).get(table, []), chain)


def _holds(saved: list[str], chain: str, builtin: str, lines: list[str], first: bool) -> bool:
    return any(line.startswith(f":{chain} ") for line in saved) and _rules_of(saved, chain) == lines \
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


def _jump_line(chain: str, builtin: str) -> str:
    return f"-A {builtin} -j {chain}"


def _jumps(saved: list[str], chain: str, builtin: str) -> int:
    return saved.count(_jump_line(chain, builtin))


def _jumped_first(saved: list[str], chain: str, builtin: str) -> bool:
    rules = [line for line in saved if line.startswith(f"-A {builtin} ")]
    return bool(rules) and rules[0] == _jump_line(chain, builtin)


def _rules_of(saved: list[str], chain: str) -> list[str]:
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in saved if line.startswith(prefix)]
