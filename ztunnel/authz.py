"""L4 authorization: Istio AuthorizationPolicy semantics at the connection level.

`authorize(policies, connection)` is pure: DENY policies are evaluated first
and any match refuses; then, if at least one ALLOW policy applies to the
workload, the connection must match one of their rules. A rule that needs
HTTP (methods, paths, hosts) cannot be checked at L4: in an ALLOW it matches
nothing, in a DENY its L7 fields are ignored so that it denies (fail closed),
as Istio's ztunnel does.

Principals are `<trust-domain>/ns/<ns>/sa/<sa>`; patterns take Istio's forms:
exact, `*`, `prefix*`, `*suffix`. A plaintext connection has no principal and
no namespace: it matches no `principals`/`namespaces` and every `not_*` of them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from shoal.model import Action, Authorization, Operation, Rule, Source


@dataclass(frozen=True)
class Connection:
    """What an L4 enforcer knows about one connection to a workload."""

    source_ip: str
    destination_port: int                 # the port on the workload (the target port)
    source_principal: str | None = None   # from the verified client certificate, None for plaintext
    source_namespace: str | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str = ""    # "namespace/name" of the deciding policy, "" when none decided
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED_NO_POLICY = Verdict(True, "", "no authorization policy applies")


def authorize(policies: Iterable[Authorization], conn: Connection) -> Verdict:
    allows = []
    for policy in policies:
        if policy.action is Action.DENY:
            if any(_rule_matches(rule, conn, deny=True) for rule in policy.rules):
                return Verdict(False, policy.key, f"denied by DENY policy {policy.key}")
        elif policy.action is Action.ALLOW:
            allows.append(policy)
    if not allows:
        return ALLOWED_NO_POLICY
    for policy in allows:
        if any(_rule_matches(rule, conn, deny=False) for rule in policy.rules):
            return Verdict(True, policy.key, f"allowed by {policy.key}")
    names = ", ".join(sorted(p.key for p in allows))
    return Verdict(False, "", f"no ALLOW policy matches (policies: {names}); check principals, namespaces and ports")


def _rule_matches(rule: Rule, conn: Connection, *, deny: bool) -> bool:
    sources_ok = not rule.sources or any(_source_matches(s, conn) for s in rule.sources)
    if not sources_ok:
        return False
    return not rule.operations or any(_operation_matches(op, conn, deny=deny) for op in rule.operations)


def _source_matches(src: Source, conn: Connection) -> bool:
    principal, namespace = conn.source_principal, conn.source_namespace
    if src.principals and not (principal is not None and _any_pattern(src.principals, principal)):
        return False
    if src.not_principals and principal is not None and _any_pattern(src.not_principals, principal):
        return False
    if src.namespaces and not (namespace is not None and _any_pattern(src.namespaces, namespace)):
        return False
    if src.not_namespaces and namespace is not None and _any_pattern(src.not_namespaces, namespace):
        return False
    if src.ip_blocks and not _in_blocks(conn.source_ip, src.ip_blocks):
        return False
    if src.not_ip_blocks and _in_blocks(conn.source_ip, src.not_ip_blocks):
        return False
    return True


def _operation_matches(op: Operation, conn: Connection, *, deny: bool) -> bool:
    if op.has_l7 and not deny:
        return False  # an L4 enforcer cannot prove an HTTP condition holds
    if op.ports and conn.destination_port not in op.ports:
        return False
    if op.not_ports and conn.destination_port in op.not_ports:
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


def _any_pattern(patterns: tuple[str, ...], value: str) -> bool:
    return any(pattern_matches(p, value) for p in patterns)


@lru_cache(maxsize=1024)
def _network(block: str):
    return ipaddress.ip_network(block, strict=False)


def _in_blocks(ip: str, blocks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in _network(b) for b in blocks)
