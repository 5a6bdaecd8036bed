"""python-iptables inside a chosen network namespace, and the shoal-owned chains.

libiptc keeps one handle per table per process (python-iptables caches Table
objects), and a handle belongs to the netns it was opened in. So every use
goes through `in_netns`: one lock, enter the netns, open fresh handles, make
every change of a table in one commit (atomic for the kernel), close them.

A shoal chain is owned whole: `ensure_chain` empties and refills it and makes
the built-in chain jump to it exactly once, which is what makes installing
idempotent; `drop_chain` removes the jumps and the chain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from typing import Callable, Iterable

from shoal import netns

from node_agent.errors import PrerequisiteMissing, RedirectError

_LOCK = threading.Lock()


def import_iptc():
    try:
        import iptc
    except Exception as e:  # python-iptables raises XTablesError/OSError when libxtables is missing
        raise PrerequisiteMissing("python-iptables", f"it does not import ({e})",
                                  "install iptables (apt install iptables) and the shoal package's dependencies") from None
    return iptc


def check_legacy() -> None:
    """python-iptables writes the legacy tables; iptables-legacy must be installed to inspect them."""
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        if not shutil.which(tool):
            raise PrerequisiteMissing("iptables-legacy", f"{tool} is not on PATH",
                                      "install it: apt install iptables (it ships the legacy tools)")


@contextmanager
def _tables(names: Iterable[str], ipv6: bool):
    iptc = import_iptc()
    tables = {}
    try:
        for name in names:
            table = (iptc.Table6 if ipv6 else iptc.Table)(name, autocommit=False)
            table.refresh()
            tables[name] = table
        yield iptc, tables
        for table in tables.values():
            table.commit()
    finally:
        for table in tables.values():
            table.close()


def in_netns(ns: str | int | None, table_names: Iterable[str], fn: Callable, *, ipv6: bool = False) -> object:
    """Runs fn(iptc, tables) with fresh handles of those tables inside `ns` (None: this netns), then commits.
    With ipv6, the tables are ip6tables' (fn then makes its rules with `rule(..., ipv6=True)`)."""
    def body():
        with _LOCK, _tables(table_names, ipv6) as (iptc, tables):
            return fn(iptc, tables)
    try:
        if ns is None:
            return body()
        return netns.run_in(ns, body)
    except netns.NetnsError as e:
        raise RedirectError(str(e)) from None
    except Exception as e:
        if type(e).__name__ == "IPTCError":
            raise RedirectError(f"iptables: {e}") from None
        raise


def rule(iptc, *, protocol=None, src=None, dst=None, in_interface=None, out_interface=None,
         matches: Iterable[tuple[str, dict]] = (), target: str, target_args: dict | None = None, ipv6: bool = False):
    r = iptc.Rule6() if ipv6 else iptc.Rule()
    if protocol:
        r.protocol = protocol
    if src:
        r.src = src
    if dst:
        r.dst = dst
    if in_interface:
        r.in_interface = in_interface
    if out_interface:
        r.out_interface = out_interface
    for name, args in matches:
        m = r.create_match(name)
        for key, value in args.items():
            setattr(m, key, value)
    t = r.create_target(target)
    for key, value in (target_args or {}).items():
        setattr(t, key, value)
    return r


_PROTOCOL_NAMES = {"icmpv6": "ipv6-icmp"}  # as iptables-save prints them


_PLAIN = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _saved_value(value: str) -> str:
    """A value as iptables-save writes it (libxtables' xtables_save_string): in double quotes, with a
    backslash before each double quote, single quote and backslash, unless it is made of letters, digits,
    `_` and `-` only (so a cgroup path, with its slashes, is quoted)."""
    if value and set(value) <= _PLAIN:
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


# The options whose values iptables-save writes with xtables_save_string (quoted when not plain); the
# others (ports, marks, addresses) are printed as they are.
_STRING_OPTIONS = {"path", "comment"}


def _options(args: dict) -> list[str]:
    """python-iptables' match or target parameters as iptables options (a value "!x" is a negation)."""
    words = []
    for key, value in args.items():
        option = f"--{key.replace('_', '-')}"
        negated = isinstance(value, str) and value.startswith("!")
        text = str(value)[1:] if negated else str(value)
        words += [*(["!"] if negated else []), option, _saved_value(text) if key in _STRING_OPTIONS else text]
    return words


def rule_text(*, protocol=None, src=None, dst=None, in_interface=None, out_interface=None,
              matches: Iterable[tuple[str, dict]] = (), target: str, target_args: dict | None = None) -> str:
    """The rule `rule()` builds from the same keywords, as iptables-save prints it (after `-A CHAIN`), so that
    what is written with iptables-restore compares equal, line by line, with what is read back."""
    words = []
    for flag, value in (("-s", src), ("-d", dst), ("-i", in_interface), ("-o", out_interface)):
        if value:
            words += [flag, value]
    if protocol:
        words += ["-p", _PROTOCOL_NAMES.get(protocol, protocol)]
    for name, args in matches:
        words += ["-m", name, *_options(args)]
    words += ["-j", target, *_options(target_args or {})]
    return " ".join(words)


def ensure_chain(iptc, table, chain_name: str, builtin: str, rules: list) -> None:
    if table.is_chain(chain_name):
        table.flush_entries(chain_name)
        chain = iptc.Chain(table, chain_name)
    else:
        chain = table.create_chain(chain_name)
    for r in rules:
        chain.append_rule(r)
    parent = iptc.Chain(table, builtin)
    jumps = [r for r in parent.rules if r.target.name == chain_name]
    for r in jumps[1:]:
        parent.delete_rule(r)
    if not jumps:
        parent.insert_rule(rule(iptc, target=chain_name, ipv6=isinstance(table, iptc.Table6)))


def jumped_first(iptc, table, chain_name: str, builtin: str) -> bool:
    rules = iptc.Chain(table, builtin).rules
    return bool(rules) and rules[0].target.name == chain_name


def jump_first(iptc, table, chain_name: str, builtin: str) -> None:
    """The built-in chain jumps to the chain once, first (another chain's jump went in ahead of it)."""
    parent = iptc.Chain(table, builtin)
    for jump in [r for r in parent.rules if r.target.name == chain_name]:
        parent.delete_rule(jump)
    parent.insert_rule(rule(iptc, target=chain_name, ipv6=isinstance(table, iptc.Table6)))


def drop_chain(iptc, table, chain_name: str, builtin: str) -> bool:
    if not table.is_chain(chain_name):
        return False
    parent = iptc.Chain(table, builtin)
    for r in [r for r in parent.rules if r.target.name == chain_name]:
        parent.delete_rule(r)
    table.flush_entries(chain_name)
    table.delete_chain(chain_name)
    return True


def _signature(r) -> tuple:
    """A rule as iptables-save would print it, comparable (python-iptables' own == compares the raw target
    buffers, which the kernel fills in differently from a fresh rule for REDIRECT)."""
    def params(x):
        return sorted((k, tuple(v)) for k, v in x.get_all_parameters().items())
    return (r.src, r.dst, r.protocol, r.in_interface, r.out_interface,
            tuple((m.name, tuple(params(m))) for m in r.matches), r.target.name, tuple(params(r.target)))


def chain_is(iptc, table, chain_name: str, rules: list) -> bool:
    """Does the chain hold exactly these rules, in this order (an older agent's rules do not count)?"""
    if not table.is_chain(chain_name):
        return False
    return [_signature(r) for r in iptc.Chain(table, chain_name).rules] == [_signature(r) for r in rules]


def jumps(iptc, table, chain_name: str, builtin: str) -> int:
    return sum(1 for r in iptc.Chain(table, builtin).rules if r.target.name == chain_name)


def save(ns: str | None = None, *, ipv6: bool = False) -> str:
    """`iptables-legacy-save` (or `ip6tables-legacy-save`) output in a netns (for logs and tests)."""
    argv = ["ip6tables-legacy-save" if ipv6 else "iptables-legacy-save"]
    if ns is None:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    fd = netns.open_fd(ns)  # a name under /run/netns, or a path
    try:
        return subprocess.run(["nsenter", f"--net=/proc/self/fd/{fd}", *argv], capture_output=True, text=True,
                              check=True, pass_fds=(fd,)).stdout
    finally:
        os.close(fd)
