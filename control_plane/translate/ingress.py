"""Ingress Gateways and the routes bound to them, into an ingress gateway's route tables and credentials.

Two dialects, one result:
- an Istio `Gateway` (networking.istio.io) and the VirtualServices that name
  it in `gateways:`;
- a Gateway API `Gateway` of class `shoal` (listeners HTTP and HTTPS, TLS
  from `certificateRefs`) and the HTTPRoutes whose `parentRefs` name it
  (`sectionName` picks a listener, `port` a port). A certificateRef or a
  backendRef into another namespace holds only while a ReferenceGrant there
  allows it (`reference_grants`). It is served by the
  mesh's ingress gateway pods (`shoal.contracts.INGRESS_GATEWAY_SELECTOR`),
  as Istio's manual deployment mode serves it by its ingress gateway.

An Istio Gateway selects the ingress gateway's pods by label (`selector:
{istio: ingressgateway}`, in any namespace, as Istio does by default) and
declares servers: a port with a protocol (HTTP, or HTTPS with `tls.mode:
SIMPLE` and a `credentialName`) and the hosts it admits (`host`,
`*.domain`, `*`; a `namespace/` prefix limits which VirtualServices may
bind: `*/` any, `./` the Gateway's own).

A VirtualService with `gateways: [name]` (its own namespace) or
`[namespace/name]` binds its `http` routes to that Gateway, for each of its
hosts a server admits (hosts are names as clients send them; they are not
resolved to Services). The result is one `RouteTable` per (gateway
identity, host, server port), with `gateway` set to the selected pods'
"namespace/service-account" and `namespace` to theirs, so it reaches that
gateway's config stream (a waypoint-scoped subscription of that namespace)
and never a mesh lookup. Among VirtualServices on the same host and port of
one gateway the oldest wins (the others are warned), and DestinationRule
subsets resolve as for the mesh (`precedence.route_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

import base64
import binascii

from shoal.model import Destination, Labels, RouteTable, TlsCredential, freeze_labels

from shoal.contracts import INGRESS_CLASS, INGRESS_GATEWAY_SELECTOR

from control_plane.translate import gateway_api, istio_routing, reference_grants
from control_plane.translate.candidates import Dialect, RouteCandidate
from control_plane.translate.common import Checker, created_of, ref_of
from control_plane.translate.precedence import SubsetSource, choose, route_table

GROUP = "networking.istio.io"
VERSIONS = ("v1", "v1beta1", "v1alpha3")
KIND = "Gateway"
OBJECT_KIND = "Gateway.networking.istio.io"      # the translator's key kind, apart from Gateway API's Gateway
_PROTOCOLS = ("HTTP", "HTTPS")


ISTIO, GATEWAY_API = "istio", "gateway-api"


@dataclass(frozen=True)
class Server:
    port: int
    protocol: str                   # HTTP or HTTPS
    hosts: tuple[str, ...]          # as written, namespace/ prefixes included
    credential: str = ""            # HTTPS: "namespace/secret" of the TLS Secret
    name: str = ""                  # a Gateway API listener's name (what sectionName names)


@dataclass(frozen=True)
class IstioGateway:
    """An ingress Gateway of either dialect (`api`): what selects the gateway's pods, and its servers."""
    name: str
    namespace: str
    selector: Labels
    servers: tuple[Server, ...]
    api: str = ISTIO

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def is_istio_gateway(obj: dict) -> bool:
    return obj.get("kind") == KIND and str(obj.get("apiVersion", "")).split("/")[0] == GROUP


def istio_gateway(obj: dict, c: Checker) -> IstioGateway | None:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    version = str(obj.get("apiVersion", "")).split("/")[-1]
    if version not in VERSIONS:
        c.error("apiVersion", f"Gateway is served as {', '.join(f'{GROUP}/{v}' for v in VERSIONS)}")
        return None
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    c.fields(spec, "spec", ("selector", "servers"))
    selector = {k: str(v) for k, v in c.mapping(spec.get("selector"), "spec.selector").items()}
    if not selector:
        c.error("spec.selector", "is required: the labels of the ingress gateway's pods (istio: ingressgateway)")
    servers = []
    for i, raw in enumerate(c.sequence(spec.get("servers"), "spec.servers", required=True)):
        path = f"spec.servers[{i}]"
        server = c.mapping(raw, path)
        c.fields(server, path, ("port", "hosts", "tls", "name", "bind", "defaultEndpoint"))
        port = c.mapping(server.get("port"), f"{path}.port", required=True)
        c.fields(port, f"{path}.port", ("number", "protocol", "name", "targetPort"))
        number = c.port(port.get("number"), f"{path}.port.number", required=True)
        protocol = str(port.get("protocol") or "").upper()
        if protocol not in _PROTOCOLS:
            c.error(f"{path}.port.protocol", f"must be HTTP or HTTPS, not {port.get('protocol')!r} "
                                             "(TCP, TLS passthrough and GRPC servers are not supported by shoal)")
        hosts = c.strings(server.get("hosts"), f"{path}.hosts")
        if not hosts:
            c.error(f"{path}.hosts", "is required: the hosts this server admits (\"*\" for any)")
        tls = c.mapping(server.get("tls"), f"{path}.tls")
        credential = ""
        if protocol == "HTTPS":
            mode = str(tls.get("mode") or "SIMPLE").upper()
            name = c.string(tls.get("credentialName"), f"{path}.tls.credentialName", required=True)
            if mode != "SIMPLE":
                c.error(f"{path}.tls.mode", f"{mode} is not supported by shoal; use SIMPLE (TLS ends at the gateway)")
            credential = f"{namespace}/{name}" if name else ""
        elif tls.get("httpsRedirect"):
            c.warn(f"{path}.tls.httpsRedirect", "HTTPS redirects are not supported by shoal; HTTP is served")
        if number is not None and protocol in _PROTOCOLS and hosts:
            servers.append(Server(number, protocol, hosts, credential))
    if c.errors:
        return None
    return IstioGateway(str(meta.get("name", "")), namespace, freeze_labels(selector), tuple(servers))


def is_ingress_class(obj: dict) -> bool:
    spec = obj.get("spec")
    return (obj.get("kind") == KIND and str(obj.get("apiVersion", "")).split("/")[0] == gateway_api.GROUP
            and isinstance(spec, dict) and spec.get("gatewayClassName") == INGRESS_CLASS)


def gateway_api_gateway(obj: dict, c: Checker) -> IstioGateway | None:
    """A Gateway API Gateway of class `shoal`: its listeners as servers."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    servers = []
    for i, raw in enumerate(c.sequence(spec.get("listeners"), "spec.listeners", required=True)):
        path = f"spec.listeners[{i}]"
        listener = c.mapping(raw, path)
        c.fields(listener, path, ("name", "hostname", "port", "protocol", "tls", "allowedRoutes"))
        name = c.string(listener.get("name"), f"{path}.name", required=True) or ""
        port = c.port(listener.get("port"), f"{path}.port", required=True)
        protocol = str(listener.get("protocol") or "")
        if protocol not in _PROTOCOLS:
            c.error(f"{path}.protocol", f"must be HTTP or HTTPS, not {protocol!r} (TCP, TLS and UDP listeners are "
                                        "not supported by shoal)")
        hostname = c.string(listener.get("hostname"), f"{path}.hostname") or "*"
        credential = ""
        if protocol == "HTTPS":
            tls = c.mapping(listener.get("tls"), f"{path}.tls", required=True)
            if str(tls.get("mode") or "Terminate") != "Terminate":
                c.error(f"{path}.tls.mode", f"{tls.get('mode')} is not supported by shoal; use Terminate")
            refs = c.sequence(tls.get("certificateRefs"), f"{path}.tls.certificateRefs", required=True)
            if tls.get("certificateRefs") == []:
                c.error(f"{path}.tls.certificateRefs", "is empty: name the Secret that holds the listener's "
                                                       "certificate (tls.crt and tls.key)")
            ref = c.mapping(refs[0], f"{path}.tls.certificateRefs[0]") if refs else {}
            if str(ref.get("kind") or "Secret") != "Secret" or str(ref.get("group") or "") not in ("", "core"):
                c.error(f"{path}.tls.certificateRefs[0]", "must name a Secret (kind Secret, group \"\")")
            secret = c.string(ref.get("name"), f"{path}.tls.certificateRefs[0].name", required=bool(refs))
            # Another namespace's Secret is served only while a ReferenceGrant there allows it (`credentials`).
            where = c.string(ref.get("namespace"), f"{path}.tls.certificateRefs[0].namespace") or namespace
            credential = f"{where}/{secret}" if secret else ""
        if port is not None and protocol in _PROTOCOLS:
            servers.append(Server(port, protocol, (hostname,), credential, name))
    if c.errors:
        return None
    return IstioGateway(str(meta.get("name", "")), namespace, freeze_labels(INGRESS_GATEWAY_SELECTOR),
                        tuple(servers), GATEWAY_API)


def _admits(server_host: str, gateway_namespace: str, route_namespace: str, host: str) -> bool:
    where, _, name = server_host.rpartition("/")
    if where not in ("", "*") and (where if where != "." else gateway_namespace) != route_namespace:
        return False
    if name == "*" or name == host:
        return True
    return name.startswith("*.") and host.endswith(name[1:])


def _bound_to(vs: dict, gateway: IstioGateway) -> bool:
    namespace = str((vs.get("metadata") or {}).get("namespace") or "default")
    if gateway.api != ISTIO or vs.get("kind") != "VirtualService":
        return False
    for ref in (vs.get("spec") or {}).get("gateways") or []:
        ref = str(ref)
        if ref == gateway.ref or (("/" not in ref) and namespace == gateway.namespace and ref == gateway.name):
            return True
    return False


def _routes(vs: dict) -> tuple:
    """The VirtualService's HTTP routes, parsed as for the mesh (their findings are the main parse's)."""
    c = Checker.for_object(vs)
    namespace = str((vs.get("metadata") or {}).get("namespace") or "default")
    parsed = []
    for i, item in enumerate(c.sequence((vs.get("spec") or {}).get("http"), "spec.http")):
        result = istio_routing._http_route(c, c.mapping(item, f"spec.http[{i}]"), f"spec.http[{i}]", namespace)
        if result:
            route, ports = result
            parsed.append((route, ports))
    return tuple(parsed)


def _parents(route: dict, gateway: IstioGateway) -> list[dict]:
    """The parentRefs of an HTTPRoute that name this Gateway API Gateway."""
    namespace = str((route.get("metadata") or {}).get("namespace") or "default")
    found = []
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if not isinstance(ref, dict) or ref.get("kind", "Gateway") != "Gateway":
            continue
        if ref.get("group", gateway_api.GROUP) != gateway_api.GROUP:
            continue
        if (str(ref.get("namespace") or namespace), str(ref.get("name"))) == (gateway.namespace, gateway.name):
            found.append(ref)
    return found


def _listener_hosts(server: Server, hostnames: list[str]) -> list[str]:
    """The route's hostnames a listener admits; a route without hostnames takes the listener's."""
    listener = server.hosts[0]
    if not hostnames:
        return [listener]
    return [h for h in hostnames if _admits(listener, "", "", h)]


REFUSED_DOMAIN = "ref-not-permitted.invalid"   # RFC 2606: no Service or resolver answers for it


def _service_of(host: str) -> tuple[str, str] | None:
    """(namespace, name) of a Kubernetes Service host (name.namespace.svc.<domain>), else None."""
    parts = host.split(".")
    return (parts[1], parts[0]) if len(parts) > 3 and parts[2] == "svc" else None


def permitted_backends(routes: tuple, namespace: str, grants: tuple[reference_grants.Grant, ...],
                        refused: Callable[[str], None]) -> tuple:
    """The routes with each backend in another namespace that no ReferenceGrant there allows turned into one
    nothing answers for (its share of requests fails, as the spec asks, instead of going to the others);
    `refused(message)` for each."""
    def check(destination: Destination) -> Destination:
        service = _service_of(destination.host)
        if service is None or reference_grants.permits(grants, "HTTPRoute", namespace, "Service", *service):
            return destination
        refused(f"backendRef to Service {service[0]}/{service[1]}: RefNotPermitted: no ReferenceGrant in "
                f"{service[0]} allows HTTPRoutes of {namespace} to name it; its requests fail until one does")
        return replace(destination, host=f"{service[1]}.{service[0]}.{REFUSED_DOMAIN}", subset=(), subset_name="")
    out = []
    for route in routes:
        destinations = tuple(check(d) for d in route.destinations)
        mirrors = tuple(replace(m, destination=check(m.destination)) for m in route.mirrors)
        out.append(route if (destinations, mirrors) == (route.destinations, route.mirrors)
                   else replace(route, destinations=destinations, mirrors=mirrors))
    return tuple(out)


def _http_route_candidates(gateway: IstioGateway, objects: Iterable[dict],
                           grants: tuple[reference_grants.Grant, ...] = (), warn=None) -> list[RouteCandidate]:
    out = []
    for route in objects:
        if route.get("kind") != "HTTPRoute":
            continue
        parents = _parents(route, gateway)
        if not parents:
            continue
        namespace = str((route.get("metadata") or {}).get("namespace") or "default")
        spec = route.get("spec") or {}
        c = Checker.for_object(route)     # its findings are the main parse's
        rules = [gateway_api._rule(c, c.mapping(r, f"spec.rules[{i}]"), f"spec.rules[{i}]", namespace)
                 for i, r in enumerate(c.sequence(spec.get("rules"), "spec.rules"))]
        routes, order = gateway_api.ordered_routes(rules)
        origin = ref_of(route)
        routes = permitted_backends(routes, namespace, grants,
                                     lambda message: warn(origin, message) if warn is not None else None)
        hostnames = [str(h).lower() for h in spec.get("hostnames") or []]
        for i, ref in enumerate(parents):
            for server in gateway.servers:
                if ref.get("sectionName") and ref.get("sectionName") != server.name:
                    continue
                if ref.get("port") and ref.get("port") != server.port:
                    continue
                for host in _listener_hosts(server, hostnames):
                    out.append(RouteCandidate(host, server.port, routes, namespace, ref_of(route), Dialect.HTTPROUTE,
                                              created_of(route), f"spec.parentRefs[{i}]", order=order))
    return out


def tls_secret(secret: dict) -> tuple[bytes, bytes] | None:
    """(tls.crt, tls.key) of a Kubernetes TLS Secret (data base64, or stringData), or None."""
    out = []
    for name in ("tls.crt", "tls.key"):
        text = (secret.get("stringData") or {}).get(name)
        if isinstance(text, str):
            out.append(text.encode())
            continue
        encoded = (secret.get("data") or {}).get(name)
        try:
            out.append(base64.b64decode(str(encoded), validate=True) if encoded else b"")
        except (binascii.Error, ValueError):
            return None
    return (out[0], out[1]) if all(out) else None


def credentials(gateways: Iterable[IstioGateway], identities: Callable[[IstioGateway], set[tuple[str, str]]],
                secrets: Mapping[tuple[str, str], dict], warn,
                grants: tuple[reference_grants.Grant, ...] = ()) -> dict[str, TlsCredential]:
    """The TLS credential of every HTTPS server, for each gateway identity it selects. The Secret is looked up
    in the gateway pods' namespace (Istio's rule), then in the Gateway's; `warn(gateway, message)` when none
    holds a tls.crt and tls.key. A Gateway API listener's Secret in another namespace is served only while a
    ReferenceGrant there allows it (`grants`); without one the listener has no certificate (RefNotPermitted)."""
    out = {}
    for gateway in gateways:
        for server in gateway.servers:
            if server.protocol != "HTTPS":
                continue
            where, name = server.credential.split("/", 1)
            hosts = tuple(h.rpartition("/")[2] for h in server.hosts)
            if gateway.api == GATEWAY_API and not reference_grants.permits(grants, "Gateway", gateway.namespace,
                                                                           "Secret", where, name):
                warn(gateway, f"listener {server.name or server.port}: certificateRefs: RefNotPermitted: Secret "
                              f"{where}/{name} is in another namespace and no ReferenceGrant in {where} allows "
                              f"Gateways of {gateway.namespace} to use it; the listener is not served")
                continue
            for namespace, account in sorted(identities(gateway)):
                # Istio's credentialName: the gateway pods' namespace (then the Gateway's); certificateRefs: as named.
                places = (namespace, gateway.namespace) if gateway.api == ISTIO else (where,)
                found = next(((ns, pair) for ns in places
                              if (pair := tls_secret(secrets.get((ns, name)) or {})) is not None), None)
                if found is None:
                    warn(gateway, f"HTTPS port {server.port}: TLS Secret {name!r} (with tls.crt and tls.key) is not "
                                  f"in {' or '.join(dict.fromkeys(places))}; the gateway cannot serve it")
                    continue
                ns, (chain, key) = found
                credential = TlsCredential(f"{namespace}/{account}", server.port, f"{ns}/{name}", hosts, chain, key)
                out[credential.key] = credential
    return out


def tables(gateways: Iterable[IstioGateway], virtual_services: Iterable[dict],
           identities: Callable[[IstioGateway], set[tuple[str, str]]], rules: Mapping[str, list[SubsetSource]],
           warn, certified: Mapping[str, TlsCredential] | None = None,
           grants: tuple[reference_grants.Grant, ...] = (), warn_route=None) -> dict[str, RouteTable]:
    """Every ingress RouteTable by key. `identities(gateway)`: (namespace, service account) of the pods it
    selects; `warn(candidate, message)` as for the mesh's tables. With `certified` (the credentials
    `credentials` found), a gateway port that an HTTPS server declares but no certificate serves gets no
    tables: the gateway opens listeners for the ports its tables name, and one without a certificate must
    not be opened as plain HTTP (fail closed). An HTTPRoute's backend in another namespace needs a
    ReferenceGrant there (`grants`); `warn_route(origin, message)` names each one refused."""
    gateways = list(gateways)
    virtual_services = list(virtual_services)
    by_identity: dict[tuple[str, str], list[RouteCandidate]] = {}

    def served(identity: tuple[str, str], server: Server) -> bool:
        """An HTTPS server serves its hosts only with its own certificate: another server's on the same port
        must not answer for a listener whose Secret is missing or not granted (fail closed)."""
        if server.protocol != "HTTPS" or certified is None:
            return True
        hosts = tuple(h.rpartition("/")[2] for h in server.hosts)
        return any(c.gateway == f"{identity[0]}/{identity[1]}" and c.port == server.port and c.hosts == hosts
                   for c in certified.values())
    for gateway in gateways:
        selected = identities(gateway)
        for vs in virtual_services:
            if not _bound_to(vs, gateway):
                continue
            namespace = str((vs.get("metadata") or {}).get("namespace") or "default")
            parsed = _routes(vs)
            for server in gateway.servers:
                routes = tuple(route for route, ports in parsed if not ports or server.port in ports or None in ports)
                if not routes:
                    continue
                for i, host in enumerate((vs.get("spec") or {}).get("hosts") or []):
                    host = str(host).lower().rstrip(".")
                    if not any(_admits(h, gateway.namespace, namespace, host) for h in server.hosts):
                        continue
                    candidate = RouteCandidate(host, server.port, routes, namespace, ref_of(vs),
                                               Dialect.VIRTUALSERVICE, created_of(vs), f"spec.hosts[{i}]",
                                               subset_fields=istio_routing.subset_fields(vs.get("spec") or {},
                                                                                         namespace))
                    for identity in selected:
                        if served(identity, server):
                            by_identity.setdefault(identity, []).append(candidate)
    for gateway in gateways:
        if gateway.api == GATEWAY_API:
            for identity in identities(gateway):
                listeners = replace(gateway, servers=tuple(s for s in gateway.servers if served(identity, s)))
                for candidate in _http_route_candidates(listeners, virtual_services, grants, warn_route):
                    by_identity.setdefault(identity, []).append(candidate)
    uncertified: set[tuple[str, int]] = set()
    if certified is not None:
        have = {(c.gateway, c.port) for c in certified.values()}
        uncertified = {(f"{namespace}/{account}", server.port) for gateway in gateways for server in gateway.servers
                       if server.protocol == "HTTPS" for namespace, account in identities(gateway)} - have
    out = {}
    for (namespace, account), candidates in by_identity.items():
        candidates = [c for c in candidates if (f"{namespace}/{account}", c.port) not in uncertified]
        for candidate in choose(candidates, warn).values():
            table = route_table(candidate, rules, warn)
            table = replace(table, namespace=namespace, gateway=f"{namespace}/{account}")
            out[table.key] = table
    return out

