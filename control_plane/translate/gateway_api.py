"""Gateway API: `HTTPRoute` (mesh/GAMMA) and waypoint `Gateway`s.

HTTPRoute (gateway.networking.k8s.io v1, v1beta1, v1alpha2):
- A parentRef to a Service (`kind: Service`, group "") routes requests for
  that Service: one port when the parentRef names a `port` or a port name
  (`sectionName`), else every port.
- A parentRef to a waypoint Gateway routes the `hostnames` it lists (service
  names), or, with no hostnames, every Service bound to that waypoint.
- A parentRef to any other Gateway (an ingress) is not the mesh's: ignored with a warning.
- Rules are ordered as Gateway API orders matches, across every HTTPRoute
  attached to the same Service and port: an Exact path first, then the
  longest PathPrefix, then a RegularExpression path, then matches with a
  method, with more headers, with more query parameters; then the oldest
  HTTPRoute, then rule order. (A rule with several matches becomes one route
  per match, so each can take its own place.)
- Path `PathPrefix` keeps Gateway API's element-wise meaning (`/foo` matches
  `/foo` and `/foo/bar`, not `/foobar`): it becomes a regular expression
  unless it is `/`.
- Filters: RequestHeaderModifier, ResponseHeaderModifier and RequestMirror
  (`percent` or `fraction`) are applied; others are valid but ignored (warning).
- `timeouts.request` is the route timeout. `timeouts.backendRequest` is the
  per-try timeout when the rule retries, else the route timeout if shorter.
- `retry` (experimental, GEP-1731): `attempts` retries on the `codes` given
  (and on connection failures), `backoff` between tries.

Gateway: `gatewayClassName: shoal-waypoint` (or Istio's `istio-waypoint`)
declares a waypoint. Its identity is the service account named like the
Gateway; the label `istio.io/waypoint-for` (or `shoal.io/waypoint-for`) picks
the traffic it serves: service (default), workload, all or none.
"""

from __future__ import annotations

import re
from dataclasses import replace

from shoal.contracts import HBONE_PORT, WAYPOINT_CLASSES, WAYPOINT_FOR_KEYS
from shoal.model import (
    ANY_PORT,
    Destination,
    HeaderChanges,
    HeaderMatch,
    MatchKind,
    Mirror,
    RetryPolicy,
    Route,
    RouteMatch,
    StringMatch,
    Waypoint,
    WaypointRef,
)

from control_plane.translate.candidates import Dialect, RouteCandidate
from control_plane.translate.common import Checker, created_of, metadata_of, ref_of, resolve_host

GROUP = "gateway.networking.k8s.io"
HTTPROUTE_VERSIONS = ("v1", "v1beta1", "v1alpha2")
GATEWAY_VERSIONS = ("v1", "v1beta1")
TRAFFIC_TYPES = ("service", "workload", "all", "none")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_IGNORED_FILTERS = {
    "RequestRedirect": "redirects are not supported by shoal; the rule forwards instead",
    "URLRewrite": "URL rewrites are not supported by shoal; requests are forwarded unchanged",
    "ExtensionRef": "extension filters are not supported by shoal",
    "CORS": "CORS filters are not supported by shoal",
}


# -- Gateway ------------------------------------------------------------------

def is_waypoint_gateway(obj: dict) -> bool:
    return (obj.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES


def gateway(obj: dict, c: Checker) -> Waypoint | None:
    """The Waypoint a Gateway declares, or None when it is not a waypoint Gateway."""
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    class_name = c.string(spec.get("gatewayClassName"), "spec.gatewayClassName", required=True)
    if class_name not in WAYPOINT_CLASSES:
        return None
    meta = metadata_of(obj)
    labels = c.mapping(meta.get("labels"), "metadata.labels")
    traffic = next((str(labels[k]) for k in WAYPOINT_FOR_KEYS if k in labels), "service")
    if traffic not in TRAFFIC_TYPES:
        c.error(f"metadata.labels.{next(k for k in WAYPOINT_FOR_KEYS if k in labels)}",
                f"unknown traffic type {traffic!r}; use one of {', '.join(TRAFFIC_TYPES)}")
        traffic = "service"
    ports = []
    for i, item in enumerate(c.sequence(spec.get("listeners"), "spec.listeners")):
        listener = c.mapping(item, f"spec.listeners[{i}]")
        port = c.port(listener.get("port"), f"spec.listeners[{i}].port", required=True)
        protocol = listener.get("protocol")
        if protocol not in (None, "HBONE"):
            c.warn(f"spec.listeners[{i}].protocol", f"a waypoint listens for HBONE; protocol {protocol!r} is ignored")
        if port is not None and protocol in (None, "HBONE"):
            ports.append(port)
    name = str(meta.get("name", ""))
    return Waypoint(name=name, namespace=str(meta.get("namespace") or "default"), service_account=name,
                    traffic_type=traffic, ports=tuple(ports) or (HBONE_PORT,))


# -- HTTPRoute ----------------------------------------------------------------

def _path_match(c: Checker, value, path: str) -> StringMatch | None:
    m = c.mapping(value, path)
    c.fields(m, path, ("type", "value"))
    kind = m.get("type", "PathPrefix")
    text = m.get("value", "/")
    if not isinstance(text, str) or (kind != "RegularExpression" and not text.startswith("/")):
        c.error(f"{path}.value", f"must be a path starting with '/', not {text!r}")
        return None
    if kind == "Exact":
        return StringMatch(MatchKind.EXACT, text)
    if kind == "PathPrefix":
        trimmed = text.rstrip("/")
        if not trimmed:
            return StringMatch(MatchKind.PREFIX, "/")
        return StringMatch(MatchKind.REGEX, re.escape(trimmed) + r"(/.*)?")
    if kind == "RegularExpression":
        return StringMatch(MatchKind.REGEX, text) if c.regex(text, f"{path}.value") else None
    c.error(f"{path}.type", f"unknown path match type {kind!r}; use Exact, PathPrefix or RegularExpression")
    return None


def _name_matches(c: Checker, value, path: str, *, lower: bool) -> tuple[HeaderMatch, ...]:
    out = []
    for i, item in enumerate(c.sequence(value, path)):
        p = f"{path}[{i}]"
        m = c.mapping(item, p)
        c.fields(m, p, ("type", "name", "value"))
        name = c.string(m.get("name"), f"{p}.name", required=True)
        text = m.get("value")
        if not isinstance(text, str):
            c.error(f"{p}.value", f"is required and must be a string, not {text!r}")
            continue
        kind = m.get("type", "Exact")
        if kind == "Exact":
            match = StringMatch(MatchKind.EXACT, text)
        elif kind == "RegularExpression":
            if c.regex(text, f"{p}.value") is None:
                continue
            match = StringMatch(MatchKind.REGEX, text)
        else:
            c.error(f"{p}.type", f"unknown match type {kind!r}; use Exact or RegularExpression")
            continue
        if name:
            out.append(HeaderMatch(name.lower() if lower else name, match))
    return tuple(out)


DEFAULT_SPECIFICITY = (1, -1, 1, 0, 0)   # PathPrefix "/", no method, headers or query parameters


def specificity(path_type: str, path_value: str, match: RouteMatch) -> tuple:
    """Gateway API's match precedence as a sort key: lower sorts first."""
    if path_type == "Exact":
        path_key = (0, -len(path_value))
    elif path_type == "RegularExpression":
        path_key = (2, 0)
    else:
        path_key = (1, -len(path_value.rstrip("/") or "/"))
    return (*path_key, 0 if match.method else 1, -len(match.headers), -len(match.query_params))


def _match(c: Checker, value, path: str) -> tuple[RouteMatch, tuple]:
    m = c.mapping(value, path)
    c.fields(m, path, ("path", "headers", "queryParams", "method"))
    method = m.get("method")
    if method is not None and method not in _METHODS:
        c.error(f"{path}.method", f"unknown method {method!r}; use one of {', '.join(_METHODS)}")
        method = None
    path_spec = m.get("path") or {}
    match = RouteMatch(
        path=_path_match(c, path_spec, f"{path}.path"),
        method=method,
        headers=_name_matches(c, m.get("headers"), f"{path}.headers", lower=True),
        query_params=_name_matches(c, m.get("queryParams"), f"{path}.queryParams", lower=False),
    )
    path_spec = path_spec if isinstance(path_spec, dict) else {}
    value_text = path_spec.get("value", "/")
    return match, specificity(str(path_spec.get("type", "PathPrefix")), value_text if isinstance(value_text, str) else "/",
                              match)


def _backend(c: Checker, value, path: str, namespace: str, *, weighted: bool) -> Destination | None:
    b = c.mapping(value, path)
    c.fields(b, path, ("group", "kind", "name", "namespace", "port", "weight", "filters"))
    if b.get("kind", "Service") != "Service" or b.get("group", "") not in ("", "core"):
        c.error(path, f"backend kind {b.get('group', '')}/{b.get('kind')} is not supported; use a Service")
        return None
    name = c.string(b.get("name"), f"{path}.name", required=True)
    port = c.port(b.get("port"), f"{path}.port", required=True)
    weight = c.integer(b.get("weight"), f"{path}.weight", minimum=0, maximum=1_000_000) if weighted else None
    if weighted and b.get("filters"):
        c.warn(f"{path}.filters", "per-backend filters are not supported by shoal; they are ignored")
    if name is None:
        return None
    target_namespace = c.string(b.get("namespace"), f"{path}.namespace") or namespace
    return Destination(host=resolve_host(f"{name}.{target_namespace}", namespace), port=port,
                       weight=1 if weight is None else weight)


def _header_modifier(c: Checker, value, path: str) -> HeaderChanges:
    m = c.mapping(value, path, required=True)
    c.fields(m, path, ("set", "add", "remove"))
    out = {}
    for op in ("set", "add"):
        pairs = []
        for i, item in enumerate(c.sequence(m.get(op), f"{path}.{op}")):
            h = c.mapping(item, f"{path}.{op}[{i}]")
            c.fields(h, f"{path}.{op}[{i}]", ("name", "value"))
            name = c.string(h.get("name"), f"{path}.{op}[{i}].name", required=True)
            val = h.get("value")
            if not isinstance(val, str):
                c.error(f"{path}.{op}[{i}].value", f"is required and must be a string, not {val!r}")
            elif name:
                pairs.append((name.lower(), val))
        out[op] = tuple(pairs)
    return HeaderChanges(out["set"], out["add"], tuple(s.lower() for s in c.strings(m.get("remove"), f"{path}.remove")))


def _mirror(c: Checker, value, path: str, namespace: str) -> Mirror | None:
    m = c.mapping(value, path, required=True)
    c.fields(m, path, ("backendRef", "percent", "fraction"))
    dest = _backend(c, m.get("backendRef"), f"{path}.backendRef", namespace, weighted=False)
    pct = 100.0
    if "percent" in m and "fraction" in m:
        c.error(path, "set percent or fraction, not both")
    elif "percent" in m:
        value = c.integer(m["percent"], f"{path}.percent", minimum=0, maximum=100)
        pct = None if value is None else float(value)
    elif "fraction" in m:
        f = c.mapping(m["fraction"], f"{path}.fraction")
        c.fields(f, f"{path}.fraction", ("numerator", "denominator"))
        numerator = c.integer(f.get("numerator"), f"{path}.fraction.numerator", required=True, minimum=0)
        denominator = c.integer(f.get("denominator", 100), f"{path}.fraction.denominator", minimum=1)
        if numerator is not None and denominator is not None:
            if numerator > denominator:
                c.error(f"{path}.fraction", f"numerator {numerator} is larger than denominator {denominator}")
                pct = None
            else:
                pct = 100.0 * numerator / denominator
        else:
            pct = None
    if dest is None or pct is None:
        return None
    return Mirror(Destination(dest.host, dest.port), pct)


def _rule(c: Checker, rule: dict, path: str, namespace: str) -> tuple[Route, tuple[tuple, ...]]:
    """The rule as one Route, and the precedence key of each of its matches."""
    c.fields(rule, path, ("name", "matches", "filters", "backendRefs", "timeouts", "retry"),
             ignored={"sessionPersistence": "session persistence is not supported by shoal"})
    parsed = [_match(c, m, f"{path}.matches[{j}]")
              for j, m in enumerate(c.sequence(rule.get("matches"), f"{path}.matches"))]
    matches = tuple(m for m, _ in parsed)
    keys = tuple(k for _, k in parsed)
    backends = [d for k, b in enumerate(c.sequence(rule.get("backendRefs"), f"{path}.backendRefs"))
                if (d := _backend(c, b, f"{path}.backendRefs[{k}]", namespace, weighted=True)) is not None]
    if len(backends) > 1 and all(d.weight == 0 for d in backends):
        c.warn(f"{path}.backendRefs", "every backend has weight 0: requests get a 500")
    request_headers, response_headers, mirrors = HeaderChanges(), HeaderChanges(), []
    for k, item in enumerate(c.sequence(rule.get("filters"), f"{path}.filters")):
        p = f"{path}.filters[{k}]"
        f = c.mapping(item, p)
        kind = c.string(f.get("type"), f"{p}.type", required=True)
        if kind is None:
            continue
        field = {"RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier": "responseHeaderModifier",
                 "RequestMirror": "requestMirror"}.get(kind)
        if kind in _IGNORED_FILTERS:
            c.warn(f"{p}.type", _IGNORED_FILTERS[kind])
            continue
        if field is None:
            c.error(f"{p}.type", f"unknown filter type {kind!r}")
            continue
        c.fields(f, p, ("type", field))
        if kind == "RequestHeaderModifier":
            request_headers = _header_modifier(c, f.get(field), f"{p}.{field}")
        elif kind == "ResponseHeaderModifier":
            response_headers = _header_modifier(c, f.get(field), f"{p}.{field}")
        elif (mirror := _mirror(c, f.get(field), f"{p}.{field}", namespace)) is not None:
            mirrors.append(mirror)
    timeouts = c.mapping(rule.get("timeouts"), f"{path}.timeouts")
    c.fields(timeouts, f"{path}.timeouts", ("request", "backendRequest"))
    request_timeout = c.duration(timeouts.get("request"), f"{path}.timeouts.request") or None
    backend_timeout = c.duration(timeouts.get("backendRequest"), f"{path}.timeouts.backendRequest") or None
    if request_timeout and backend_timeout and backend_timeout > request_timeout:
        c.error(f"{path}.timeouts.backendRequest", "must not be longer than timeouts.request")
    retry = None
    if "retry" in rule:
        r = c.mapping(rule["retry"], f"{path}.retry")
        c.fields(r, f"{path}.retry", ("codes", "attempts", "backoff"))
        codes = [code for i, code in enumerate(c.sequence(r.get("codes"), f"{path}.retry.codes"))
                 if c.integer(code, f"{path}.retry.codes[{i}]", minimum=400, maximum=599) is not None]
        attempts = c.integer(r.get("attempts"), f"{path}.retry.attempts", minimum=0)
        retry = RetryPolicy(attempts=1 if attempts is None else attempts, per_try_timeout=backend_timeout,
                            retry_on=("connect-failure", *(str(int(code)) for code in codes)),
                            backoff=c.duration(r.get("backoff"), f"{path}.retry.backoff"))
    timeout = request_timeout
    if retry is None and backend_timeout:
        timeout = min(t for t in (request_timeout, backend_timeout) if t)
    return Route(name=str(rule.get("name") or ""), matches=matches, destinations=tuple(backends),
                 timeout=timeout, retry=retry, mirrors=tuple(mirrors),
                 request_headers=request_headers, response_headers=response_headers), keys


def ordered_routes(rules: list[tuple[Route, tuple[tuple, ...]]]) -> tuple[tuple[Route, ...], tuple[tuple, ...]]:
    """One route per match, in Gateway API precedence order; with each route's sort key."""
    entries = []
    for i, (route, keys) in enumerate(rules):
        if not route.matches:
            entries.append(((DEFAULT_SPECIFICITY, i, 0), route))
            continue
        for j, (match, key) in enumerate(zip(route.matches, keys)):
            entries.append(((key, i, j), replace(route, matches=(match,))))
    entries.sort(key=lambda e: e[0])
    return tuple(r for _, r in entries), tuple(k for k, _ in entries)


def http_route(obj: dict, c: Checker) -> list[RouteCandidate]:
    """Route candidates of an HTTPRoute; problems go to `c`."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    c.fields(spec, "spec", ("parentRefs", "hostnames", "rules"))
    hostnames = c.strings(spec.get("hostnames"), "spec.hostnames")
    rules = c.sequence(spec.get("rules"), "spec.rules")
    routes, order = ordered_routes([_rule(c, c.mapping(r, f"spec.rules[{i}]"), f"spec.rules[{i}]", namespace)
                                    for i, r in enumerate(rules)])
    if not rules:
        routes, order = (Route(matches=(RouteMatch(path=StringMatch(MatchKind.PREFIX, "/")),)),), \
            ((DEFAULT_SPECIFICITY, 0, 0),)
        c.warn("spec.rules", "no rules: every request gets a 404")
    parents = c.sequence(spec.get("parentRefs"), "spec.parentRefs")
    if not parents:
        c.error("spec.parentRefs", "is required: name the Service (mesh) or waypoint Gateway the route attaches to")
    out = []
    for i, item in enumerate(parents):
        path = f"spec.parentRefs[{i}]"
        p = c.mapping(item, path)
        c.fields(p, path, ("group", "kind", "namespace", "name", "sectionName", "port"))
        name = c.string(p.get("name"), f"{path}.name", required=True)
        port = c.port(p.get("port"), f"{path}.port")
        parent_namespace = c.string(p.get("namespace"), f"{path}.namespace") or namespace
        kind, group = p.get("kind", "Gateway"), p.get("group", GROUP)
        if name is None:
            continue
        common = dict(namespace=namespace, origin=ref_of(obj), dialect=Dialect.HTTPROUTE,
                      created=created_of(obj), path=path, order=order)
        if kind == "Service" and group in ("", "core"):
            section = c.string(p.get("sectionName"), f"{path}.sectionName") or ""
            out.append(RouteCandidate(resolve_host(f"{name}.{parent_namespace}", namespace),
                                      port or ANY_PORT, routes, section=section, **common))
        elif kind == "Gateway" and group == GROUP:
            if hostnames:
                out.extend(RouteCandidate(resolve_host(h, namespace), port or ANY_PORT, routes,
                                          waypoint=WaypointRef(parent_namespace, name), **common)
                           for h in hostnames if "*" not in h)
            else:
                out.append(RouteCandidate(None, port or ANY_PORT, routes,
                                          waypoint=WaypointRef(parent_namespace, name), **common))
        else:
            c.error(f"{path}.kind", f"parent {group}/{kind} is not supported; use a Service or a waypoint Gateway")
    return out
