"""Gateway API ReferenceGrants: an ingress Gateway's certificateRef and an HTTPRoute's backendRef into another
namespace hold exactly while a grant there allows them (control_plane.translate.reference_grants)."""

from __future__ import annotations

import pytest

from shoal.model import ResourceType

from control_plane.translate.reference_grants import grant_of, grants_of, permits
from support.ingress import tls_secret
from translate_objects import added, deleted, from_yaml, pod, service, translate

R, C = ResourceType.ROUTE_TABLE, ResourceType.TLS_CREDENTIAL

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: shop}
spec:
  gatewayClassName: shoal
  listeners:
  - name: secure
    port: 443
    protocol: HTTPS
    hostname: api.shop.test
    tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: api-cert, namespace: certs}]}
  - {name: web, port: 80, protocol: HTTP, hostname: "*.shop.test"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: public}]
  hostnames: [api.shop.test, www.shop.test]
  rules:
  - backendRefs: [{name: web, port: 80}, {name: books, namespace: library, port: 80}]
"""


def grant(namespace: str, from_kind: str, from_namespace: str, to_kind: str, name: str | None = None,
          version: str = "v1beta1") -> dict:
    to = {"group": "", "kind": to_kind, **({"name": name} if name else {})}
    return {"apiVersion": f"gateway.networking.k8s.io/{version}", "kind": "ReferenceGrant",
            "metadata": {"name": f"{from_kind.lower()}s-from-{from_namespace}", "namespace": namespace},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": from_kind,
                               "namespace": from_namespace}], "to": [to]}}


def gateway_pod():
    return pod("shoal-ingressgateway-node1", "shoal-system", labels={"istio": "ingressgateway"},
               sa="shoal-ingressgateway", host_network=True, ip="198.18.0.1")


def objects(*extra):
    return [gateway_pod(), *from_yaml(GATEWAY), service("web", "shop"), service("books", "library"),
            tls_secret("api-cert", b"CHAIN", b"KEY", "certs"), *extra]


def gateway_warnings(t) -> str:
    return " ".join(t.findings_of(("Gateway", "shop", "public")).warnings)


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
def test_another_namespaces_certificate_is_served_exactly_while_a_grant_allows_it(version):
    t, _ = translate(*objects())
    assert not t.snapshot()[C], "served without a grant"
    assert "RefNotPermitted" in gateway_warnings(t)
    assert not [k for k in t.snapshot()[R] if k.endswith(":443")], "an HTTPS port without its certificate is open"

    allow = grant("certs", "Gateway", "shop", "Secret", "api-cert", version)
    t.apply_event(added(allow))
    t.flush()
    (credential,) = t.snapshot()[C].values()
    assert (credential.secret, credential.port, credential.key_pem) == ("certs/api-cert", 443, b"KEY")
    assert "RefNotPermitted" not in gateway_warnings(t)
    assert "shoal-system/shoal-ingressgateway@api.shop.test:443" in t.snapshot()[R]

    t.apply_event(deleted(allow))                        # revoked: the certificate stops being served
    update = t.flush()
    assert update.delta.removed[C] and not t.snapshot()[C]
    assert "shoal-system/shoal-ingressgateway@api.shop.test:443" not in t.snapshot()[R]
    assert "RefNotPermitted" in gateway_warnings(t)


@pytest.mark.parametrize("wrong", [
    grant("shop", "Gateway", "shop", "Secret", "api-cert"),          # in the Gateway's namespace, not the Secret's
    grant("certs", "Gateway", "other", "Secret", "api-cert"),        # from another namespace
    grant("certs", "HTTPRoute", "shop", "Secret", "api-cert"),       # from another kind
    grant("certs", "Gateway", "shop", "Secret", "other-cert"),       # to another Secret
    grant("certs", "Gateway", "shop", "Service"),                    # to another kind
])
def test_a_grant_that_does_not_match_allows_nothing(wrong):
    t, _ = translate(*objects(wrong))
    assert not t.snapshot()[C]


def test_a_grant_without_a_name_allows_every_secret_of_its_namespace():
    t, _ = translate(*objects(grant("certs", "Gateway", "shop", "Secret")))
    assert [c.secret for c in t.snapshot()[C].values()] == ["certs/api-cert"]


def test_a_backend_in_another_namespace_gets_no_traffic_without_a_grant():
    t, _ = translate(*objects())
    (route,) = t.snapshot()[R]["shoal-system/shoal-ingressgateway@www.shop.test:80"].routes
    hosts = [d.host for d in route.destinations]
    assert hosts[0] == "web.shop.svc.cluster.local"
    assert hosts[1].endswith(".invalid") and "library" in hosts[1]      # its share fails: nothing answers there
    assert [d.weight for d in route.destinations] == [1, 1]
    (warning,) = [w for w in t.findings_of(("HTTPRoute", "shop", "shop")).warnings if "RefNotPermitted" in w]
    assert "library/books" in warning

    allow = grant("library", "HTTPRoute", "shop", "Service", "books")
    t.apply_event(added(allow))
    t.flush()
    (route,) = t.snapshot()[R]["shoal-system/shoal-ingressgateway@www.shop.test:80"].routes
    assert [d.host for d in route.destinations] == ["web.shop.svc.cluster.local", "books.library.svc.cluster.local"]
    assert not [w for w in t.findings_of(("HTTPRoute", "shop", "shop")).warnings if "RefNotPermitted" in w]

    t.apply_event(deleted(allow))
    t.flush()
    (route,) = t.snapshot()[R]["shoal-system/shoal-ingressgateway@www.shop.test:80"].routes
    assert route.destinations[1].host.endswith(".invalid")


def test_malformed_grants_grant_nothing_and_same_namespace_needs_none():
    good = grant("certs", "Gateway", "shop", "Secret")
    no_namespace = {**good, "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway"}],
                                     "to": good["spec"]["to"]}}
    assert grant_of(no_namespace) is None
    assert grant_of({**good, "apiVersion": "gateway.networking.k8s.io/v9"}) is None
    assert grant_of({**good, "spec": "x"}) is None
    grants = grants_of([good, no_namespace, "junk"])
    assert len(grants) == 1
    assert permits(grants, "Gateway", "shop", "Secret", "certs", "any")
    assert not permits(grants, "Gateway", "shop", "Secret", "other", "any")
    assert permits((), "Gateway", "shop", "Secret", "shop", "any")


def test_the_local_clusters_manifests_take_reference_grants():
    from control_plane.translate import validate
    from shoal.local import manifest
    good = grant("certs", "Gateway", "shop", "Secret", "api-cert")
    assert manifest.validate([good], existing_namespaces={"certs"}, mesh_validator=validate) == []
    (error,) = manifest.validate([{**good, "apiVersion": "gateway.networking.k8s.io/v1alpha1"}],
                                 existing_namespaces={"certs"}, mesh_validator=validate)
    assert "does not serve ReferenceGrant" in error


def test_an_ungranted_listener_is_not_served_with_another_listeners_certificate_on_its_port():
    other = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: books, namespace: shop}
spec:
  gatewayClassName: shoal
  listeners:
  - name: secure
    port: 443
    protocol: HTTPS
    hostname: books.shop.test
    tls: {certificateRefs: [{kind: Secret, name: books-cert}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books, namespace: shop}
spec:
  parentRefs: [{name: books}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""
    t, _ = translate(*objects(*from_yaml(other), tls_secret("books-cert", b"BOOKS", b"BKEY", "shop")))
    keys = set(t.snapshot()[R])
    assert "shoal-system/shoal-ingressgateway@books.shop.test:443" in keys       # its own certificate: served
    assert "shoal-system/shoal-ingressgateway@api.shop.test:443" not in keys     # no grant: not served at all
    t.apply_event(added(grant("certs", "Gateway", "shop", "Secret", "api-cert")))
    t.flush()
    assert "shoal-system/shoal-ingressgateway@api.shop.test:443" in t.snapshot()[R]


def test_a_mesh_httproutes_backend_in_another_namespace_needs_a_grant_too():
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "to-books", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "books", "namespace": "library", "port": 80}]}]}}
    t, _ = translate(service("web", "shop"), service("books", "library"), route)

    def hosts():
        (table,) = [v for v in t.snapshot()[R].values() if v.hostname == "web.shop.svc.cluster.local"]
        return [d.host for r in table.routes for d in r.destinations]
    assert hosts() == ["books.library.ref-not-permitted.invalid"]
    assert any("RefNotPermitted" in w for w in t.findings_of(("HTTPRoute", "shop", "to-books")).warnings)
    t.apply_event(added(grant("library", "HTTPRoute", "shop", "Service", "books")))
    t.flush()
    assert hosts() == ["books.library.svc.cluster.local"]
    assert not any("RefNotPermitted" in w for w in t.findings_of(("HTTPRoute", "shop", "to-books")).warnings)


def test_the_analysis_names_a_missing_grant_and_the_status_says_ref_not_permitted():
    from control_plane.analysis import analyze, status_of
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "to-books", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "books", "namespace": "library", "port": 80}]}]}}
    objects = [service("web", "shop"), service("books", "library"), route]
    (finding,) = [f for f in analyze(objects) if f.key == ("HTTPRoute", "shop", "to-books")]
    assert (finding.code.code, finding.code.name, str(finding.severity)) == ("SH0110", "RefNotPermitted", "error")
    assert "library/books" in finding.message and "ReferenceGrant" in finding.action
    resolved = {c["type"]: c for c in status_of(route, [finding])["conditions"]}["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", "RefNotPermitted")
    granted = analyze([*objects, grant("library", "HTTPRoute", "shop", "Service", "books")])
    assert not [f for f in granted if f.key == ("HTTPRoute", "shop", "to-books")]
