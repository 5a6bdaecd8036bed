"""Istio ingress Gateways and the VirtualServices bound to them, into the gateway's own route tables."""

from __future__ import annotations

import pytest

from shoal.model import ResourceType, RouteTable
from control_plane.translate import validate
from support.ingress import SEED_GATEWAY, tls_secret
from translate_objects import created, deleted, from_yaml, pod, service, translate

R = ResourceType.ROUTE_TABLE


BOUND = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: example, namespace: default}
spec:
  hosts: [example.com]
  gateways: [example-gateway]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api, port: {number: 8080}}}]
  - route:
    - {destination: {host: web.default.svc.cluster.local, subset: v1}, weight: 50}
    - {destination: {host: web.default.svc.cluster.local, subset: v2}, weight: 50}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def gateway_pod(ns="shoal-system", sa="shoal-ingressgateway"):
    return pod("shoal-ingressgateway-node1", ns, labels={"istio": "ingressgateway"}, sa=sa, host_network=True,
               ip="198.18.0.1")


def test_the_seed_gateway_and_a_bound_virtual_service_make_the_gateways_table():
    t, _ = translate(gateway_pod(), *from_yaml(SEED_GATEWAY), *from_yaml(BOUND), service("web"))
    tables = {k: v for k, v in t.snapshot()[R].items() if v.gateway}
    (key,) = tables
    table = tables[key]
    assert key == "shoal-system/shoal-ingressgateway@example.com:80"
    assert (table.hostname, table.port, table.namespace) == ("example.com", 80, "shoal-system")
    api, split = table.routes
    assert api.destinations[0].host == "api.default.svc.cluster.local" and api.destinations[0].port == 8080
    assert [(d.subset, d.weight) for d in split.destinations] == [((("version", "v1"),), 50),
                                                                 ((("version", "v2"),), 50)]
    assert not any(v.gateway == "" and v.hostname.startswith("example.com") for v in t.snapshot()[R].values())


def test_nothing_is_made_without_a_selected_pod_and_it_follows_the_pods():
    objects = [*from_yaml(SEED_GATEWAY), *from_yaml(BOUND)]
    t, _ = translate(*objects)
    assert not [v for v in t.snapshot()[R].values() if v.gateway]
    from translate_objects import added
    t.apply_event(added(gateway_pod()))
    update = t.flush()
    assert "shoal-system/shoal-ingressgateway@example.com:80" in update.delta.upserted[R]
    t.apply_event(deleted(gateway_pod()))
    assert "shoal-system/shoal-ingressgateway@example.com:80" in t.flush().delta.removed[R]


@pytest.mark.parametrize("server_hosts, vs_hosts, admitted", [
    (["example.com"], ["example.com"], ["example.com"]),
    (["*"], ["a.test", "b.test"], ["a.test", "b.test"]),
    (["*.example.com"], ["www.example.com", "example.com"], ["www.example.com"]),
    (["default/example.com"], ["example.com"], ["example.com"]),
    (["other/example.com"], ["example.com"], []),
    (["./example.com"], ["example.com"], ["example.com"]),
])
def test_server_hosts_admit_virtual_service_hosts(server_hosts, vs_hosts, admitted):
    gateway = from_yaml(SEED_GATEWAY)[0]
    gateway["spec"]["servers"][0]["hosts"] = server_hosts
    vs = from_yaml(BOUND)[0]
    vs["spec"]["hosts"] = vs_hosts
    t, _ = translate(gateway_pod(), gateway, vs)
    assert sorted(v.hostname for v in t.snapshot()[R].values() if v.gateway) == admitted


def test_the_older_virtual_service_wins_a_host_and_the_other_is_warned():
    first, second = from_yaml(BOUND)[0], from_yaml(BOUND)[0]
    second["metadata"]["name"] = "later"
    created(first, "2026-01-01T00:00:00Z")
    created(second, "2026-02-01T00:00:00Z")
    t, _ = translate(gateway_pod(), *from_yaml(SEED_GATEWAY), first, second)
    (table,) = [v for v in t.snapshot()[R].values() if v.gateway]
    assert table.origin == "VirtualService default/example"
    assert any("routed by VirtualService default/example" in w
               for w in t.findings_of(("VirtualService", "default", "later")).warnings)


def test_mesh_and_gateway_binding_together_make_both_tables():
    vs = from_yaml(BOUND)[0]
    vs["spec"]["hosts"] = ["web"]
    vs["spec"]["gateways"] = ["mesh", "example-gateway"]
    gateway = from_yaml(SEED_GATEWAY)[0]
    gateway["spec"]["servers"][0]["hosts"] = ["*"]
    t, _ = translate(gateway_pod(), gateway, vs, service("web"))
    keys = set(t.snapshot()[R])
    assert "web.default.svc.cluster.local:80" in keys and "shoal-system/shoal-ingressgateway@web:80" in keys


@pytest.mark.parametrize("spec, message", [
    ({"servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["a"]}]}, "spec.selector: is required"),
    ({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "protocol": "HTTPS"},
                                                            "hosts": ["a"]}]}, "credentialName: is required"),
    ({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "protocol": "HTTPS"},
                                                            "hosts": ["a"], "tls": {"mode": "PASSTHROUGH",
                                                                                    "credentialName": "c"}}]},
     "PASSTHROUGH is not supported"),
    ({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 5432, "protocol": "TCP"},
                                                            "hosts": ["a"]}]}, "must be HTTP or HTTPS"),
    ({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "protocol": "HTTP"}}]},
     "hosts: is required"),
])
def test_bad_gateways_are_refused_saying_which_field(spec, message):
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "x"},
           "spec": spec}
    errors = validate(obj)
    assert any(message in e for e in errors), errors


def test_the_seed_gateway_is_valid():
    assert validate(from_yaml(SEED_GATEWAY)[0]) == []
    assert RouteTable("h", 80, "ns", gateway="ns/sa").key == "ns/sa@h:80"


HTTPS_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: secure, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 443, name: https-books, protocol: HTTPS}
    hosts: [books.example.com]
    tls: {mode: SIMPLE, credentialName: books-cert}
"""


def secret(name, ns="shoal-system", chain=b"CHAIN", key=b"KEY"):
    return tls_secret(name, chain, key, ns)


def test_https_servers_send_their_secret_to_the_selected_gateway_only():
    from translate_objects import added
    t, _ = translate(gateway_pod(), *from_yaml(HTTPS_GATEWAY), secret("shop-cert", key=b"SHOP-KEY"))
    creds = t.snapshot()[ResourceType.TLS_CREDENTIAL]
    (credential,) = creds.values()
    assert (credential.gateway, credential.port, credential.secret, credential.hosts, credential.key_pem) == (
        "shoal-system/shoal-ingressgateway", 443, "shoal-system/shop-cert", ("shop.example.com",), b"SHOP-KEY")
    assert "SHOP-KEY" not in repr(credential)
    (warning,) = t.findings_of(("Gateway.networking.istio.io", "default", "secure")).warnings
    assert "'books-cert'" in warning and "cannot serve it" in warning
    t.apply_event(added(secret("books-cert", ns="default")))           # the Gateway's namespace is looked in too
    update = t.flush()
    assert "shoal-system/shoal-ingressgateway@443/default/books-cert" in update.delta.upserted[ResourceType.TLS_CREDENTIAL]
    assert not t.findings_of(("Gateway.networking.istio.io", "default", "secure")).warnings
    t.apply_event(deleted(secret("shop-cert")))
    assert "shoal-system/shoal-ingressgateway@443/shoal-system/shop-cert" in t.flush().delta.removed[
        ResourceType.TLS_CREDENTIAL]
    assert not any(k[0] == "Secret" for k in t.objects())                 # secrets are never kept as objects


def test_a_credential_reaches_its_own_gateways_stream_and_no_other():
    from control_plane.state import ConfigState
    from control_plane.subscription import Scope, Subscription
    from shoal.api import config_pb2
    from shoal.model import TlsCredential
    state = ConfigState()
    state.apply([TlsCredential("shoal-system/shoal-ingressgateway", 443, "shoal-system/c", ("a",), b"C", b"K")])

    def got(scope):
        """type -> number of resources, of every response the subscriber gets, each acked."""
        sub, counts = Subscription.start(scope, state), {}
        while (out := sub.next_response()) is not None:
            message = config_pb2.WatchResponse.FromString(out.payload)
            counts[message.type] = len(message.resources)
            sub.on_ack(config_pb2.Ack(type=message.type, nonce=message.nonce))
        return counts
    assert got(Scope(waypoint_namespace="shoal-system", waypoint_name="shoal-ingressgateway"))["TlsCredential"] == 1
    assert got(Scope(waypoint_namespace="shoal-system", waypoint_name="other")).get("TlsCredential", 0) == 0
    assert "TlsCredential" not in got(Scope(node="node1"))


GATEWAY_API = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  gatewayClassName: shoal
  listeners:
  - {name: web, port: 80, protocol: HTTP, hostname: "*.shop.test"}
  - name: secure
    port: 443
    protocol: HTTPS
    hostname: api.shop.test
    tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: api-cert}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: public}]
  hostnames: [www.shop.test, api.shop.test, other.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 80}]
"""


def test_a_gateway_api_gateway_of_class_shoal_and_its_httproutes():
    t, _ = translate(gateway_pod(), *from_yaml(GATEWAY_API), service("web"), secret("api-cert", ns="default"))
    tables = {k: v for k, v in t.snapshot()[R].items() if v.gateway}
    assert sorted(tables) == ["shoal-system/shoal-ingressgateway@api.shop.test:443",
                              "shoal-system/shoal-ingressgateway@api.shop.test:80",
                              "shoal-system/shoal-ingressgateway@www.shop.test:80"]
    (route,) = tables["shoal-system/shoal-ingressgateway@www.shop.test:80"].routes
    assert route.destinations[0].host == "web.default.svc.cluster.local" and route.destinations[0].port == 80
    (credential,) = t.snapshot()[ResourceType.TLS_CREDENTIAL].values()
    assert (credential.port, credential.secret, credential.hosts) == (443, "default/api-cert", ("api.shop.test",))
    # no waypoint warnings: the parent is an ingress Gateway, not an unknown waypoint
    assert not t.findings_of(("HTTPRoute", "default", "shop")).warnings


def test_section_name_picks_one_listener():
    objects = from_yaml(GATEWAY_API)
    objects[1]["spec"]["parentRefs"] = [{"name": "public", "sectionName": "secure"}]
    t, _ = translate(gateway_pod(), *objects, service("web"), secret("api-cert", ns="default"))
    assert sorted(v.key for v in t.snapshot()[R].values() if v.gateway) == [
        "shoal-system/shoal-ingressgateway@api.shop.test:443"]


@pytest.mark.parametrize("listener, message", [
    ({"name": "x", "port": 9000, "protocol": "TCP"}, "must be HTTP or HTTPS"),
    ({"name": "x", "port": 443, "protocol": "HTTPS"}, "tls: is required"),
    ({"name": "x", "port": 443, "protocol": "HTTPS", "tls": {"mode": "Passthrough", "certificateRefs": [{"name": "c"}]}},
     "Passthrough is not supported"),
])
def test_bad_listeners_are_refused(listener, message):
    obj = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "x"},
           "spec": {"gatewayClassName": "shoal", "listeners": [listener]}}
    assert any(message in e for e in validate(obj)), validate(obj)


UNCERTIFIED = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: example-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8081, name: http-alt, protocol: HTTP}
    hosts: [example.com]
  - port: {number: 8443, name: https-alt, protocol: HTTPS}
    hosts: [example.com]
    tls: {mode: SIMPLE, credentialName: alt-cert}
"""


def test_an_https_port_without_a_certificate_gets_no_tables_until_its_secret_comes():
    """The gateway opens a listener for each port its tables name: an HTTPS port must not look like HTTP."""
    from translate_objects import added
    t, _ = translate(gateway_pod(), *from_yaml(UNCERTIFIED), *from_yaml(BOUND), service("web"))
    ports = sorted(v.port for v in t.snapshot()[R].values() if v.gateway)
    assert ports == [8081]                                                  # HTTP: served; 8443: nothing
    t.apply_event(added(secret("alt-cert")))
    t.flush()
    assert sorted(v.port for v in t.snapshot()[R].values() if v.gateway) == [8081, 8443]
    assert [c.port for c in t.snapshot()[ResourceType.TLS_CREDENTIAL].values()] == [8443]
    t.apply_event(deleted(secret("alt-cert")))
    t.flush()
    assert sorted(v.port for v in t.snapshot()[R].values() if v.gateway) == [8081]
