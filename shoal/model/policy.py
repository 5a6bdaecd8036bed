"""Security policy: Authorization (Istio AuthorizationPolicy) and PeerAuthentication.

Authorization semantics (Istio's):
- A rule matches a request when ANY of its `sources` matches (no sources: any)
  and ANY of its `operations` matches (no operations: any).
- Within a Source or an Operation, every field that is set must match (AND);
  the values within one field are alternatives (OR); `not_*` fields exclude.
- A policy with action ALLOW and no rules allows nothing; with rules, it
  allows what some rule matches. DENY wins over ALLOW. When a workload has any
  ALLOW policy, requests matched by none of them are denied.
- `Operation.has_l7` tells whether a rule needs HTTP (methods, paths, hosts):
  an L4 enforcer (the ztunnel) cannot check it and must treat such a rule
  conservatively (an ALLOW rule with L7 fields matches nothing at L4; a DENY
  rule with L7 fields denies at L4). That is Istio ambient's behaviour too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shoal.model.labels import Labels


class Action(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class PolicyScope(StrEnum):
    MESH = "MESH"              # in the root namespace, no selector: every workload
    NAMESPACE = "NAMESPACE"    # no selector: every workload of `namespace`
    WORKLOAD = "WORKLOAD"      # `selector` picks workloads of `namespace`
    TARGETS = "TARGETS"        # `targets` (targetRefs): enforced by the waypoint of those services/gateways


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str                  # Service, Gateway, ServiceEntry
    name: str
    namespace: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] = ()       # "td/ns/NS/sa/SA", with Istio's * prefix/suffix wildcards
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()        # CIDRs, normalised ("10.0.0.1" -> "10.0.0.1/32")
    not_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()            # exact, "prefix*", "*suffix" or "*"
    not_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    @property
    def has_l7(self) -> bool:
        return bool(self.methods or self.not_methods or self.paths or self.not_paths
                    or self.hosts or self.not_hosts)


@dataclass(frozen=True, slots=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()

    @property
    def has_l7(self) -> bool:
        return any(op.has_l7 for op in self.operations)


@dataclass(frozen=True, slots=True)
class Authorization:
    name: str
    namespace: str
    scope: PolicyScope
    action: Action
    rules: tuple[Rule, ...] = ()
    selector: Labels = ()                  # for WORKLOAD scope
    targets: tuple[TargetRef, ...] = ()    # for TARGETS scope

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class PeerAuthMode(StrEnum):
    STRICT = "STRICT"            # only mTLS (HBONE) is accepted
    PERMISSIVE = "PERMISSIVE"    # plaintext is accepted too (the default)
    DISABLE = "DISABLE"          # plaintext expected
    UNSET = "UNSET"              # inherit from the wider scope


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """Most specific wins: WORKLOAD over NAMESPACE over MESH; UNSET inherits.

    `port_modes` (portLevelMtls) override `mode` for the listed workload ports
    and apply only with a WORKLOAD scope, as in Istio.
    """
    name: str
    namespace: str
    scope: PolicyScope
    mode: PeerAuthMode
    selector: Labels = ()
    port_modes: tuple[tuple[int, PeerAuthMode], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
