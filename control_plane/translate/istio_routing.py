"""Istio `VirtualService` and `DestinationRule` (networking.istio.io v1alpha3, v1beta1, v1).

A VirtualService becomes route candidates for each of its `hosts` (short
names resolve in its namespace). Only HTTP routes are translated: `tcp` and
`tls` routes, `redirect`, `rewrite`, `directResponse`, `corsPolicy` and the
like are valid but ignored, with a warning. A VirtualService bound only to
ingress `gateways` (without `mesh`) makes no mesh routes.

Percentages: `mirrorPercentage.value` (0-100, fractional), or the older
integer `mirrorPercent` / `mirror_percent`; a mirror with neither mirrors
100%. Fault `percentage.value`, or the older integer `percent`.
"""

from __future__ import annotations

from shoal.model import (
    ANY_PORT,
    Destination,
    Fault,
    HeaderChanges,
    HeaderMatch,
    MatchKind,
    Mirror,
    RetryPolicy,
    Route,
    RouteMatch,
    StringMatch,
)

from control_plane.translate.candidates import Dialect, RouteCandidate
from control_plane.translate.common import Checker, created_of, percentage, ref_of, resolve_host

GROUP = "networking.istio.io"
VERSIONS = ("v1", "v1beta1", "v1alpha3")  # newest first: the order of preference

_UNSUPPORTED_HTTP = {
    "redirect": "HTTP redirects are not supported by shoal; this route only matches and does nothing else",
    "directResponse": "direct responses are not supported by shoal",
    "delegate": "delegation is not supported by shoal",
    "rewrite": "URI and authority rewrites are not supported by shoal; requests are forwarded unchanged",
    "corsPolicy": "CORS policies are not supported by shoal; requests pass unchanged",
}
_HTTP_FIELDS = ("name", "match", "route", "timeout", "retries", "fault", "mirror", "mirrorPercent",
                "mirror_percent", "mirrorPercentage", "mirrors", "headers")
_MATCH_FIELDS = ("name", "uri", "method", "headers", "queryParams", "port", "withoutHeaders", "ignoreUriCase")
_MATCH_IGNORED = {
    "scheme": "scheme matches are not supported by shoal; the match ignores the scheme",
    "authority": "authority matches are not supported by shoal; the match ignores the authority",
    "sourceLabels": "sourceLabels are not supported by shoal; the match applies to every source",
    "sourceNamespace": "sourceNamespace is not supported by shoal; the match applies to every source",
    "gateways": "match gateways are not supported by shoal; the match applies in the mesh",
    "statPrefix": "statPrefix is not used by shoal",
}


def string_match(c: Checker, value, path: str, *, allow_present: bool = False) -> StringMatch | None:
    """Istio StringMatch: exactly one of exact, prefix, regex."""
    m = c.mapping(value, path)
    if not m:
        if allow_present and isinstance(value, dict):
            return StringMatch(MatchKind.PRESENT)
        if isinstance(value, dict):
            c.error(path, "needs one of exact, prefix or regex")
        return None
    c.fields(m, path, ("exact", "prefix", "regex"))
    given = [k for k in ("exact", "prefix", "regex") if k in m]
    if len(given) != 1:
        c.error(path, f"needs exactly one of exact, prefix or regex, not {given or 'none'}")
        return None
    kind = given[0]
    text = m[kind]
    if not isinstance(text, str):
        c.error(f"{path}.{kind}", f"must be a string, not {text!r}")
        return None
    if kind == "regex":
        if c.regex(text, f"{path}.regex") is None:
            return None
        return StringMatch(MatchKind.REGEX, text)
    return StringMatch(MatchKind.EXACT if kind == "exact" else MatchKind.PREFIX, text)


def header_changes(c: Checker, value, path: str) -> HeaderChanges:
    m = c.mapping(value, path)
    c.fields(m, path, ("set", "add", "remove"))
    out = {}
    for op in ("set", "add"):
        pairs = c.mapping(m.get(op), f"{path}.{op}")
        for k, v in pairs.items():
            if not isinstance(v, str):
                c.error(f"{path}.{op}.{k}", f"must be a string, not {v!r}")
        out[op] = tuple((str(k).lower(), v) for k, v in pairs.items() if isinstance(v, str))
    remove = tuple(s.lower() for s in c.strings(m.get("remove"), f"{path}.remove"))
    return HeaderChanges(set=out["set"], add=out["add"], remove=remove)


def merge_headers(a: HeaderChanges, b: HeaderChanges) -> HeaderChanges:
    return HeaderChanges(a.set + b.set, a.add + b.add, a.remove + b.remove)


def destination(c: Checker, value, path: str, namespace: str, *, weight: int = 1) -> Destination | None:
    d = c.mapping(value, path, required=True)
    c.fields(d, path, ("host", "subset", "port"))
    host = c.string(d.get("host"), f"{path}.host", required=True)
    subset = c.string(d.get("subset"), f"{path}.subset")
    port = None
    if "port" in d:
        p = c.mapping(d["port"], f"{path}.port")
        c.fields(p, f"{path}.port", ("number",))
        port = c.port(p.get("number"), f"{path}.port.number", required=True)
    if host is None:
        return None
    if "*" in host:
        c.error(f"{path}.host", f"a route destination must be one host, not the wildcard {host!r}")
        return None
    return Destination(host=resolve_host(host, namespace), port=port, subset_name=subset or "", weight=weight)


def _match(c: Checker, value, path: str) -> tuple[RouteMatch | None, int | None]:
    m = c.mapping(value, path)
    c.fields(m, path, _MATCH_FIELDS, ignored=_MATCH_IGNORED)
    uri = string_match(c, m.get("uri"), f"{path}.uri") if "uri" in m else None
    if uri is not None and m.get("ignoreUriCase"):
        c.warn(f"{path}.ignoreUriCase", "case-insensitive URI matches are not supported; the match is case-sensitive")
    method = None
    if "method" in m:
        method_match = string_match(c, m["method"], f"{path}.method")
        if method_match is not None and method_match.kind != MatchKind.EXACT:
            c.error(f"{path}.method", "shoal matches methods exactly; use exact")
        elif method_match is not None:
            method = method_match.value.upper()
    headers = []
    for field, invert in (("headers", False), ("withoutHeaders", True)):
        for name, spec in c.mapping(m.get(field), f"{path}.{field}").items():
            sm = string_match(c, spec, f"{path}.{field}.{name}", allow_present=True)
            if sm is not None:
                headers.append(HeaderMatch(str(name).lower(), sm, invert))
    params = []
    for name, spec in c.mapping(m.get("queryParams"), f"{path}.queryParams").items():
        sm = string_match(c, spec, f"{path}.queryParams.{name}", allow_present=True)
        if sm is not None:
            params.append(HeaderMatch(str(name), sm))
    port = c.port(m.get("port"), f"{path}.port")
    return RouteMatch(path=uri, method=method, headers=tuple(headers), query_params=tuple(params)), port


def _fault(c: Checker, value, path: str) -> Fault | None:
    f = c.mapping(value, path)
    c.fields(f, path, ("delay", "abort"))
    delay = delay_pct = abort = abort_pct = None
    if "delay" in f:
        d = c.mapping(f["delay"], f"{path}.delay")
        c.fields(d, f"{path}.delay", ("fixedDelay", "percentage", "percent"),
                 ignored={"exponentialDelay": "exponential delays are not supported by shoal"})
        delay = c.duration(d.get("fixedDelay"), f"{path}.delay.fixedDelay")
        if delay is None and "fixedDelay" not in d:
            c.error(f"{path}.delay.fixedDelay", "is required")
        delay_pct = _fault_percent(c, d, f"{path}.delay")
    if "abort" in f:
        a = c.mapping(f["abort"], f"{path}.abort")
        c.fields(a, f"{path}.abort", ("httpStatus", "percentage"),
                 ignored={"grpcStatus": "gRPC status aborts are not supported by shoal",
                          "http2Error": "HTTP/2 error aborts are not supported by shoal"})
        abort = c.integer(a.get("httpStatus"), f"{path}.abort.httpStatus", minimum=200, maximum=599,
                          required="grpcStatus" not in a and "http2Error" not in a)
        abort_pct = _fault_percent(c, a, f"{path}.abort")
    if delay is None and abort is None:
        return None
    return Fault(delay=delay, delay_percentage=100.0 if delay_pct is None else delay_pct,
                 abort_status=abort, abort_percentage=100.0 if abort_pct is None else abort_pct)


def _fault_percent(c: Checker, spec: dict, path: str) -> float | None:
    if "percentage" in spec:
        return percentage(c, spec["percentage"], f"{path}.percentage")
    if "percent" in spec:
        value = c.integer(spec["percent"], f"{path}.percent", minimum=0, maximum=100)
        return None if value is None else float(value)
    return None


def _mirrors(c: Checker, http: dict, path: str, namespace: str) -> tuple[Mirror, ...]:
    out = []
    if "mirror" in http:
        dest = destination(c, http["mirror"], f"{path}.mirror", namespace)
        pct = 100.0
        if "mirrorPercentage" in http:
            pct = percentage(c, http["mirrorPercentage"], f"{path}.mirrorPercentage")
        else:
            for old in ("mirrorPercent", "mirror_percent"):
                if old in http:
                    value = c.integer(http[old], f"{path}.{old}", minimum=0, maximum=100)
                    pct = None if value is None else float(value)
        if dest is not None and pct is not None:
            out.append(Mirror(dest, pct))
    else:
        for old in ("mirrorPercentage", "mirrorPercent", "mirror_percent"):
            if old in http:
                c.error(f"{path}.{old}", "is set but there is no mirror")
    for i, item in enumerate(c.sequence(http.get("mirrors"), f"{path}.mirrors")):
        p = f"{path}.mirrors[{i}]"
        m = c.mapping(item, p)
        c.fields(m, p, ("destination", "percentage"))
        dest = destination(c, m.get("destination"), f"{p}.destination", namespace)
        pct = percentage(c, m["percentage"], f"{p}.percentage") if "percentage" in m else 100.0
        if dest is not None and pct is not None:
            out.append(Mirror(dest, pct))
    return tuple(out)


def _retries(c: Checker, value, path: str) -> RetryPolicy | None:
    r = c.mapping(value, path)
    c.fields(r, path, ("attempts", "perTryTimeout", "retryOn", "backoff"),
             ignored={"retryRemoteLocalities": "locality-aware retries are not supported by shoal",
                      "retryIgnorePreviousHosts": "shoal always prefers another endpoint when it retries"})
    attempts = c.integer(r.get("attempts"), f"{path}.attempts", minimum=0)
    per_try = c.duration(r.get("perTryTimeout"), f"{path}.perTryTimeout")
    retry_on = c.string(r.get("retryOn"), f"{path}.retryOn")
    backoff = c.duration(r.get("backoff"), f"{path}.backoff")
    conditions = tuple(s.strip() for s in (retry_on or "").split(",") if s.strip())
    return RetryPolicy(attempts=attempts if attempts is not None else 0, per_try_timeout=per_try,
                       retry_on=conditions or ("connect-failure", "refused-stream", "unavailable",
                                               "cancelled", "retriable-status-codes"),
                       backoff=backoff)


def _http_route(c: Checker, http: dict, path: str, namespace: str) -> tuple[Route, list[int | None]] | None:
    c.fields(http, path, _HTTP_FIELDS, ignored=_UNSUPPORTED_HTTP)
    matches = []
    for j, item in enumerate(c.sequence(http.get("match"), f"{path}.match")):
        match, port = _match(c, item, f"{path}.match[{j}]")
        if match is not None:
            matches.append((match, port))
    destinations = []
    headers_req = HeaderChanges()
    headers_resp = HeaderChanges()
    route_items = c.sequence(http.get("route"), f"{path}.route")
    if not route_items and not any(k in http for k in ("redirect", "directResponse", "delegate")):
        c.error(f"{path}.route", "is required: at least one destination")
    weights = []
    for k, item in enumerate(route_items):
        p = f"{path}.route[{k}]"
        rd = c.mapping(item, p)
        c.fields(rd, p, ("destination", "weight", "headers"))
        weight = c.integer(rd.get("weight"), f"{p}.weight", minimum=0)
        weights.append((k, weight))
        dest = destination(c, rd.get("destination"), f"{p}.destination", namespace,
                           weight=weight if weight is not None else (100 if len(route_items) == 1 else 0))
        if dest is not None:
            destinations.append(dest)
        if "headers" in rd:
            h = c.mapping(rd["headers"], f"{p}.headers")
            c.fields(h, f"{p}.headers", ("request", "response"))
            headers_req = merge_headers(headers_req, header_changes(c, h.get("request"), f"{p}.headers.request"))
            headers_resp = merge_headers(headers_resp, header_changes(c, h.get("response"), f"{p}.headers.response"))
    if len(route_items) > 1 and all((w or 0) == 0 for _, w in weights):
        c.error(f"{path}.route", "with several destinations, give each a weight; they are all 0")
    if "headers" in http:
        h = c.mapping(http["headers"], f"{path}.headers")
        c.fields(h, f"{path}.headers", ("request", "response"))
        headers_req = merge_headers(header_changes(c, h.get("request"), f"{path}.headers.request"), headers_req)
        headers_resp = merge_headers(header_changes(c, h.get("response"), f"{path}.headers.response"), headers_resp)
    route = Route(
        name=str(http.get("name") or ""),
        matches=tuple(m for m, _ in matches),
        destinations=tuple(destinations),
        timeout=c.duration(http.get("timeout"), f"{path}.timeout"),
        retry=_retries(c, http["retries"], f"{path}.retries") if "retries" in http else None,
        mirrors=_mirrors(c, http, path, namespace),
        fault=_fault(c, http["fault"], f"{path}.fault") if "fault" in http else None,
        request_headers=headers_req,
        response_headers=headers_resp,
    )
    return route, [p for _, p in matches]


def virtual_service(obj: dict, c: Checker) -> list[RouteCandidate]:
    """Route candidates of a VirtualService; problems go to `c`."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    c.fields(spec, "spec", ("hosts", "gateways", "http", "exportTo"),
             ignored={"tcp": "TCP routes are not supported by shoal; TCP traffic goes to the host as addressed",
                      "tls": "TLS routes are not supported by shoal; TLS traffic goes to the host as addressed"})
    hosts = c.strings(spec.get("hosts"), "spec.hosts")
    if not hosts:
        c.error("spec.hosts", "is required: at least one host")
    gateways = c.strings(spec.get("gateways"), "spec.gateways")
    for i, h in enumerate(hosts):
        if "*" in h:
            c.warn(f"spec.hosts[{i}]", f"wildcard host {h!r} is not supported by shoal; it is skipped")
    routes_by_port: dict[int, list[Route]] = {}
    parsed = []
    for i, item in enumerate(c.sequence(spec.get("http"), "spec.http")):
        path = f"spec.http[{i}]"
        http = c.mapping(item, path)
        result = _http_route(c, http, path, namespace)
        if result:
            parsed.append(result)
    if gateways and "mesh" not in gateways:
        c.warn("spec.gateways", "bound to ingress gateways only (no \"mesh\"): it makes no mesh routes")
        return []
    explicit_ports = sorted({p for _, ports in parsed for p in ports if p is not None})
    for port in [ANY_PORT, *explicit_ports]:
        table = []
        for route, ports in parsed:
            if not ports:
                table.append(route)
                continue
            keep = tuple(m for m, p in zip(route.matches, ports) if p is None or p == port)
            if keep:
                table.append(Route(route.name, keep, route.destinations, route.timeout, route.retry,
                                   route.mirrors, route.fault, route.request_headers, route.response_headers))
        if table:
            routes_by_port[port] = table
    out = []
    for i, host in enumerate(hosts):
        if "*" in host:
            continue
        for port, table in routes_by_port.items():
            out.append(RouteCandidate(resolve_host(host, namespace), port, tuple(table), namespace,
                                      ref_of(obj), Dialect.VIRTUALSERVICE, created_of(obj), f"spec.hosts[{i}]",
                                      subset_fields=subset_fields(spec, namespace)))
    return out


def subset_fields(spec: dict, namespace: str) -> tuple[tuple[str, str, str], ...]:
    """(resolved host, subset name, field path) of every destination and mirror of a VirtualService's
    spec that names a subset: a warning about the subset then names the field the user wrote."""
    found = []

    def note(dest, path: str) -> None:
        if isinstance(dest, dict) and isinstance(dest.get("host"), str) and isinstance(dest.get("subset"), str):
            found.append((resolve_host(dest["host"], namespace), dest["subset"], f"{path}.subset"))

    def items(value) -> list:   # a field that is not a list is an error `parse` reports
        return value if isinstance(value, list) else []

    for i, http in enumerate(items(spec.get("http"))):
        if not isinstance(http, dict):
            continue
        for k, item in enumerate(items(http.get("route"))):
            if isinstance(item, dict):
                note(item.get("destination"), f"spec.http[{i}].route[{k}].destination")
        note(http.get("mirror"), f"spec.http[{i}].mirror")
        for k, item in enumerate(items(http.get("mirrors"))):
            if isinstance(item, dict):
                note(item.get("destination"), f"spec.http[{i}].mirrors[{k}].destination")
    return tuple(found)


def destination_rule(obj: dict, c: Checker) -> tuple[str | None, dict[str, tuple[tuple[str, str], ...]]]:
    """(resolved host, {subset name: labels}) of a DestinationRule; problems go to `c`."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    c.fields(spec, "spec", ("host", "subsets", "exportTo", "workloadSelector"),
             ignored={"trafficPolicy": "traffic policies (load balancing, connection pools, outlier detection, "
                                       "TLS) are not supported by shoal; the mesh's defaults apply"})
    host = c.string(spec.get("host"), "spec.host", required=True)
    subsets: dict[str, tuple[tuple[str, str], ...]] = {}
    for i, item in enumerate(c.sequence(spec.get("subsets"), "spec.subsets")):
        path = f"spec.subsets[{i}]"
        s = c.mapping(item, path)
        c.fields(s, path, ("name", "labels"),
                 ignored={"trafficPolicy": "subset traffic policies are not supported by shoal"})
        name = c.string(s.get("name"), f"{path}.name", required=True)
        labels = c.mapping(s.get("labels"), f"{path}.labels")
        for k, v in labels.items():
            if not isinstance(v, str):
                c.error(f"{path}.labels.{k}", f"must be a string, not {v!r}")
        if name is not None:
            if name in subsets:
                c.error(f"{path}.name", f"subset {name!r} is defined twice")
            subsets[name] = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
    if host is not None and "*" in host:
        c.warn("spec.host", f"wildcard host {host!r} is not supported by shoal; its subsets are not used")
        return None, subsets
    return (resolve_host(host, namespace) if host else None), subsets
