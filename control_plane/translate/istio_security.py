"""Istio `AuthorizationPolicy` and `PeerAuthentication` (security.istio.io v1beta1, v1).

Scope: in a root namespace (`shoal-system` or `istio-system` unless the
Translator is given others) with no
selector, a policy applies to the whole mesh; elsewhere with no selector, to
its namespace; with `selector.matchLabels`, to those workloads of its
namespace; with `targetRef(s)`, to the waypoint of those Services/Gateways.

Conditions shoal cannot evaluate (`when`, `requestPrincipals`) fail closed,
as Istio's ztunnel does: an ALLOW rule that uses them is dropped (it allows
nothing), a DENY rule keeps its other fields (it denies more). Each such
case is a warning naming the field.
"""

from __future__ import annotations

import ipaddress

from shoal.model import (
    Action,
    Authorization,
    Operation,
    PeerAuthentication,
    PeerAuthMode,
    PolicyScope,
    Rule,
    Source,
    TargetRef,
    freeze_labels,
)

from control_plane.translate.common import Checker

GROUP = "security.istio.io"
VERSIONS = ("v1", "v1beta1")  # newest first: the order of preference
_SOURCE_FIELDS = ("principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
                  "remoteIpBlocks", "notRemoteIpBlocks")
_UNEVALUATED_SOURCE = ("requestPrincipals", "notRequestPrincipals")
_OPERATION_FIELDS = ("ports", "notPorts", "methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")


def _selector(c: Checker, spec: dict) -> tuple[tuple[str, str], ...]:
    selector = c.mapping(spec.get("selector"), "spec.selector")
    c.fields(selector, "spec.selector", ("matchLabels",))
    labels = c.mapping(selector.get("matchLabels"), "spec.selector.matchLabels")
    for k, v in labels.items():
        if not isinstance(v, str):
            c.error(f"spec.selector.matchLabels.{k}", f"must be a string, not {v!r}")
    return freeze_labels({k: v for k, v in labels.items() if isinstance(v, str)})


def _cidrs(c: Checker, value, path: str) -> tuple[str, ...]:
    out = []
    for i, text in enumerate(c.strings(value, path)):
        try:
            out.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            c.error(f"{path}[{i}]", f"{text!r} is not an IP address or CIDR block")
    return tuple(out)


def _ports(c: Checker, value, path: str) -> tuple[int, ...]:
    out = []
    for i, item in enumerate(c.sequence(value, path)):
        port = c.port(item, f"{path}[{i}]")
        if port is not None:
            out.append(port)
    return tuple(out)


def _source(c: Checker, value, path: str) -> tuple[Source, bool]:
    """(Source, uses fields shoal cannot evaluate)."""
    s = c.mapping(value, path, required=True)
    c.fields(s, path, _SOURCE_FIELDS + _UNEVALUATED_SOURCE)
    unevaluated = [f for f in _UNEVALUATED_SOURCE if f in s]
    for f in unevaluated:
        c.strings(s[f], f"{path}.{f}")
    return Source(
        principals=c.strings(s.get("principals"), f"{path}.principals"),
        not_principals=c.strings(s.get("notPrincipals"), f"{path}.notPrincipals"),
        namespaces=c.strings(s.get("namespaces"), f"{path}.namespaces"),
        not_namespaces=c.strings(s.get("notNamespaces"), f"{path}.notNamespaces"),
        ip_blocks=_cidrs(c, s.get("ipBlocks"), f"{path}.ipBlocks") + _cidrs(c, s.get("remoteIpBlocks"), f"{path}.remoteIpBlocks"),
        not_ip_blocks=_cidrs(c, s.get("notIpBlocks"), f"{path}.notIpBlocks")
        + _cidrs(c, s.get("notRemoteIpBlocks"), f"{path}.notRemoteIpBlocks"),
    ), bool(unevaluated)


def _operation(c: Checker, value, path: str) -> Operation:
    o = c.mapping(value, path, required=True)
    c.fields(o, path, _OPERATION_FIELDS)
    return Operation(
        ports=_ports(c, o.get("ports"), f"{path}.ports"),
        not_ports=_ports(c, o.get("notPorts"), f"{path}.notPorts"),
        methods=tuple(m.upper() for m in c.strings(o.get("methods"), f"{path}.methods")),
        not_methods=tuple(m.upper() for m in c.strings(o.get("notMethods"), f"{path}.notMethods")),
        paths=c.strings(o.get("paths"), f"{path}.paths"),
        not_paths=c.strings(o.get("notPaths"), f"{path}.notPaths"),
        hosts=c.strings(o.get("hosts"), f"{path}.hosts"),
        not_hosts=c.strings(o.get("notHosts"), f"{path}.notHosts"),
    )


def _rule(c: Checker, value, path: str, action: Action) -> Rule | None:
    r = c.mapping(value, path)
    c.fields(r, path, ("from", "to", "when"))
    sources, operations, unevaluated = [], [], []
    for i, item in enumerate(c.sequence(r.get("from"), f"{path}.from")):
        f = c.mapping(item, f"{path}.from[{i}]")
        c.fields(f, f"{path}.from[{i}]", ("source",))
        source, odd = _source(c, f.get("source"), f"{path}.from[{i}].source")
        sources.append(source)
        if odd:
            unevaluated.append(f"{path}.from[{i}].source (requestPrincipals)")
    for i, item in enumerate(c.sequence(r.get("to"), f"{path}.to")):
        t = c.mapping(item, f"{path}.to[{i}]")
        c.fields(t, f"{path}.to[{i}]", ("operation",))
        operations.append(_operation(c, t.get("operation"), f"{path}.to[{i}].operation"))
    for i, item in enumerate(c.sequence(r.get("when"), f"{path}.when")):
        cond = c.mapping(item, f"{path}.when[{i}]")
        c.fields(cond, f"{path}.when[{i}]", ("key", "values", "notValues"))
        c.string(cond.get("key"), f"{path}.when[{i}].key", required=True)
    if r.get("when"):
        unevaluated.append(f"{path}.when")
    if unevaluated:
        where = ", ".join(unevaluated)
        if action == Action.ALLOW:
            c.warn(path, f"uses conditions shoal cannot evaluate ({where}); this ALLOW rule is dropped (it allows nothing)")
            return None
        c.warn(path, f"uses conditions shoal cannot evaluate ({where}); this DENY rule applies without them")
    return Rule(tuple(sources), tuple(operations))


def _targets(c: Checker, spec: dict, namespace: str) -> tuple[TargetRef, ...]:
    refs = ([spec["targetRef"]] if "targetRef" in spec else []) + c.sequence(spec.get("targetRefs"), "spec.targetRefs")
    out = []
    for i, item in enumerate(refs):
        path = "spec.targetRef" if "targetRef" in spec and i == 0 else f"spec.targetRefs[{i - ('targetRef' in spec)}]"
        t = c.mapping(item, path)
        c.fields(t, path, ("group", "kind", "name", "namespace"))
        kind = c.string(t.get("kind"), f"{path}.kind", required=True)
        name = c.string(t.get("name"), f"{path}.name", required=True)
        if kind is not None and kind not in ("Service", "Gateway", "GatewayClass", "ServiceEntry"):
            c.error(f"{path}.kind", f"cannot target {kind!r}; use Service, Gateway or ServiceEntry")
        elif kind and name:
            out.append(TargetRef(kind, name, str(t.get("namespace") or namespace), str(t.get("group") or "")))
    return tuple(out)


def _scope(c: Checker, namespace: str, selector, targets) -> PolicyScope:
    if selector and targets:
        c.error("spec", "set either selector or targetRef(s), not both")
    if targets:
        return PolicyScope.TARGETS
    if selector:
        return PolicyScope.WORKLOAD
    return PolicyScope.MESH if namespace in c.root_namespaces else PolicyScope.NAMESPACE


def authorization_policy(obj: dict, c: Checker) -> Authorization | None:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = c.mapping(obj.get("spec"), "spec")
    c.fields(spec, "spec", ("selector", "targetRef", "targetRefs", "action", "rules", "provider"))
    action_text = spec.get("action", "ALLOW")
    if action_text in ("AUDIT", "CUSTOM"):
        c.error("spec.action", f"action {action_text} is not supported by shoal; use ALLOW or DENY")
        return None
    if action_text not in ("ALLOW", "DENY"):
        c.error("spec.action", f"unknown action {action_text!r}; use ALLOW or DENY")
        return None
    action = Action(action_text)
    selector = _selector(c, spec)
    targets = _targets(c, spec, namespace)
    rules = tuple(rule for i, item in enumerate(c.sequence(spec.get("rules"), "spec.rules"))
                  if (rule := _rule(c, item, f"spec.rules[{i}]", action)) is not None)
    if action == Action.DENY and not spec.get("rules"):
        c.warn("spec.rules", "a DENY policy with no rules denies nothing")
    return Authorization(name=str(meta.get("name", "")), namespace=namespace,
                         scope=_scope(c, namespace, selector, targets), action=action,
                         rules=rules, selector=selector, targets=targets)


def _mode(c: Checker, value, path: str) -> PeerAuthMode:
    m = c.mapping(value, path)
    c.fields(m, path, ("mode",))
    mode = m.get("mode", "UNSET")
    if mode not in PeerAuthMode.__members__:
        c.error(f"{path}.mode", f"unknown mode {mode!r}; use STRICT, PERMISSIVE, DISABLE or UNSET")
        return PeerAuthMode.UNSET
    return PeerAuthMode(mode)


def peer_authentication(obj: dict, c: Checker) -> PeerAuthentication:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = c.mapping(obj.get("spec"), "spec")
    c.fields(spec, "spec", ("selector", "mtls", "portLevelMtls"))
    selector = _selector(c, spec)
    mode = _mode(c, spec.get("mtls"), "spec.mtls")
    port_modes = []
    levels = c.mapping(spec.get("portLevelMtls"), "spec.portLevelMtls")
    if levels and not selector:
        c.error("spec.portLevelMtls", "needs a selector: port-level modes apply to selected workloads only")
    for port_text, value in levels.items():
        port = c.port(port_text, f"spec.portLevelMtls.{port_text}")
        if port is not None:
            port_modes.append((port, _mode(c, value, f"spec.portLevelMtls.{port_text}")))
    return PeerAuthentication(name=str(meta.get("name", "")), namespace=namespace,
                              scope=_scope(c, namespace, selector, ()), mode=mode,
                              selector=selector, port_modes=tuple(sorted(port_modes)))
