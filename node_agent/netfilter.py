"""Rules as iptables-save prints them, and reading a netns's legacy tables.

Shoal's rules are specs, the keywords of `rule_text`: protocol, src, dst,
in_interface, out_interface, matches [(name, {option: value})], target and
target_args (a value "!x" negates its option, "" is an option without a
value). `rule_text` writes a spec exactly as `iptables-save` (legacy or nft,
either family) prints the rule back, so that what a backend writes with
`-restore` compares equal, line by line, with what it reads back
(backend.py). `save` reads a netns's legacy tables (for logs and tests).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Iterable

from shoal import iptables_backend

from node_agent.errors import PrerequisiteMissing


def check_legacy() -> None:
    """The legacy backend writes and reads with the legacy tools of both families."""
    for tool in ("iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save",
                 "ip6tables-legacy-restore"):
        if not shutil.which(tool):
            raise PrerequisiteMissing("iptables-legacy", f"{tool} is not on PATH",
                                      "install it: apt install iptables (it ships the legacy tools), or use "
                                      "--iptables-backend nft")


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
    """A match's or target's options (a value "!x" is a negation, "" an option without a value)."""
    words = []
    for key, value in args.items():
        option = f"--{key.replace('_', '-')}"
        negated = isinstance(value, str) and value.startswith("!")
        text = str(value)[1:] if negated else str(value)
        words += [*(["!"] if negated else []), option]
        if text:
            words.append(_saved_value(text) if key in _STRING_OPTIONS else text)
    return words


def rule_text(*, protocol=None, src=None, dst=None, in_interface=None, out_interface=None,
              matches: Iterable[tuple[str, dict]] = (), target: str, target_args: dict | None = None) -> str:
    """The rule as iptables-save prints it (after `-A CHAIN`)."""
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


def save(ns: str | None = None, *, ipv6: bool = False) -> str:
    """`iptables-legacy-save` (or `ip6tables-legacy-save`) output in a netns (for logs and tests)."""
    done = iptables_backend.run(ns, [iptables_backend.tool("save", ipv6, "legacy")])
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout
