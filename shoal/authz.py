"""Authorization: Istio AuthorizationPolicy semantics, for the ztunnel (L4) and the waypoint (L7).

`authorize(policies, facts)` is pure. DENY policies are evaluated first and
any match refuses; then, when at least one ALLOW policy applies, the request
must match a rule of one of them. With HTTP facts (the waypoint), methods,
paths and hosts are checked as written (with their `not_*`).

Where HTTP fields cannot be checked (`l4_only`: every ztunnel connection, and
TCP through a waypoint), Istio's conservative rule applies: an ALLOW operation
with HTTP fields matches nothing, a DENY operation with HTTP fields denies on
its other fields alone (fail closed).

A plaintext connection has no principal and no namespace: it matches no
`principals`/`namespaces` and every `not_*` of them.

Patterns take Istio's forms: exact, `*`, `prefix*`, `*suffix`. Paths are
compared without the query string; hosts case-insensitively, with or without
the port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from shoal.model import Action, Authorization, Operation, Rule, Source


@dataclass(frozen=True)
class RequestFacts:
    """What a policy can look at."""
    source_ip: str
    source_principal: str | None      # "td/ns/NS/sa/SA" from the client's certificate, None for plaintext
    source_namespace: str | None
    port: int                         # the port the request came on
    method: str = ""
    path: str = ""                    # without the query string
    host: str = ""                    # the Host header (authority)
    l4_only: bool = False             # no HTTP: HTTP fields cannot be checked (see above)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str = ""      # "namespace/name" of the deciding policy, "" when none decided
    reason: str = ""
    unmatched: str = ""   # the ALLOW policies that applied when none of them matched

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def named(self) -> str:
        """The policy to name in a refusal: the deciding one, else the ALLOW policies that did not match."""
        return self.policy or self.unmatched


def authorize(policies: Iterable[Authorization], facts: RequestFacts) -> Verdict:
    allows = []
    for policy in policies:
        if policy.action is Action.DENY:
            if any(_rule_matches(rule, facts, deny=True) for rule in policy.rules):
                return Verdict(False, policy.key, f"denied by DENY policy {policy.key}")
        else:
            allows.append(policy)
    if not allows:
        return Verdict(True, "", "no authorization policy applies")
    for policy in allows:
        if any(_rule_matches(rule, facts, deny=False) for rule in policy.rules):
            return Verdict(True, policy.key, f"allowed by {policy.key}")
    names = ", ".join(sorted(p.key for p in allows))
    return Verdict(False, "", f"no rule of the ALLOW policies ({names}) matches; check principals, namespaces, "
                              "ports and, for HTTP, methods, paths and hosts", unmatched=names)


def _rule_matches(rule: Rule, facts: RequestFacts, deny: bool) -> bool:
    if rule.sources and not any(_source_matches(s, facts) for s in rule.sources):
        return False
    return not rule.operations or any(_operation_matches(op, facts, deny) for op in rule.operations)


def _source_matches(src: Source, f: RequestFacts) -> bool:
    if src.principals and not (f.source_principal is not None and _any(src.principals, f.source_principal)):
        return False
    if src.not_principals and f.source_principal is not None and _any(src.not_principals, f.source_principal):
        return False
    if src.namespaces and not (f.source_namespace is not None and _any(src.namespaces, f.source_namespace)):
        return False
    if src.not_namespaces and f.source_namespace is not None and _any(src.not_namespaces, f.source_namespace):
        return False
    if src.ip_blocks and not _in_blocks(f.source_ip, src.ip_blocks):
        return False
    if src.not_ip_blocks and _in_blocks(f.source_ip, src.not_ip_blocks):
        return False
    return True


def _operation_matches(op: Operation, f: RequestFacts, deny: bool) -> bool:
    if f.l4_only and op.has_l7:
        if not deny:
            return False
        op = Operation(ports=op.ports, not_ports=op.not_ports)
    if op.ports and f.port not in op.ports:
        return False
    if op.not_ports and f.port in op.not_ports:
        return False
    if op.methods and f.method not in op.methods and "*" not in op.methods:
        return False
    if op.not_methods and f.method in op.not_methods:
        return False
    if op.paths and not _any(op.paths, f.path):
        return False
    if op.not_paths and _any(op.not_paths, f.path):
        return False
    if op.hosts and not _host_matches(op.hosts, f.host):
        return False
    if op.not_hosts and _host_matches(op.not_hosts, f.host):
        return False
    return True


def pattern_matches(pattern: str, value: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return any(pattern_matches(p, value) for p in patterns)


def _host_matches(patterns: tuple[str, ...], host: str) -> bool:
    host = host.lower()
    bare = host.rsplit(":", 1)[0] if ":" in host else host
    return any(pattern_matches(p.lower(), host) or pattern_matches(p.lower(), bare) for p in patterns)


@lru_cache(maxsize=1024)
def _network(block: str):
    return ipaddress.ip_network(block, strict=False)


def _in_blocks(ip: str, blocks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in _network(b) for b in blocks)
