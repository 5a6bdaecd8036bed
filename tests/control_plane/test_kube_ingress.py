"""North-south kinds through the Kubernetes API (the list/watch double, the real client): ServiceEntry and Istio's
ingress Gateway watched beside Gateway API's Gateway of the same name; the TLS Secrets ingress Gateways name read
by name only (never listed or watched); the Kubernetes controller's status on Gateways of class shoal."""

import asyncio
import base64

import pytest
from structlog.testing import capture_logs

from control_plane.sources.kube import KubeSource, make_api_client
from control_plane.sources.kube_secrets import wanted_secrets
from control_plane.waypoints_kube import KubeWaypointController, published_bundle

from support.kube_api import KubeApiServer
from support.polling import eventually_async

pytestmark = pytest.mark.timeout(120)
ISTIO = "networking.istio.io/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"


def istio_gateway(name="web", namespace="default", credential=None):
    server = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["example.com"]}
    if credential:
        server = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["example.com"],
                  "tls": {"mode": "SIMPLE", "credentialName": credential}}
    return {"apiVersion": ISTIO, "kind": "Gateway", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [server]}}


def api_gateway(name="web", namespace="default", cls="shoal", cert=None):
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    if cert:
        listener = {"name": "https", "port": 443, "protocol": "HTTPS",
                    "tls": {"mode": "Terminate", "certificateRefs": [cert]}}
    return {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": cls, "listeners": [listener]}}


def service_entry(name="outside", host="api.outside.test"):
    return {"apiVersion": ISTIO, "kind": "ServiceEntry", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": [host], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "resolution": "DNS", "location": "MESH_EXTERNAL"}}


def tls_secret(name, namespace, text="one", kind="kubernetes.io/tls"):
    data = {"tls.crt": base64.b64encode(f"cert {text}".encode()).decode(),
            "tls.key": base64.b64encode(f"key {text}".encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": kind, "data": data}


def gateway_pod(namespace="shoal-system", ready=True):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "shoal-ingressgateway-1", "namespace": namespace,
                         "labels": {"istio": "ingressgateway", "app": "shoal-ingressgateway"}},
            "spec": {"nodeName": "node1", "serviceAccountName": "shoal-ingressgateway", "containers": [{"name": "g"}]},
            "status": {"phase": "Running", "podIP": "198.19.1.20",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class Run:
    """source.events() pumped in the test's loop."""

    def __init__(self, api: KubeApiServer, **kwargs) -> None:
        self.client = make_api_client(api.configuration())
        self.source = KubeSource(self.client, retry_delay=0.05, **kwargs)
        self.events = []

    async def __aenter__(self):
        async def pump():
            async for event in self.source.events():
                self.events.append(event)
        self.task = asyncio.create_task(pump())
        await self.until(lambda: any(e.type == "BOOKMARK" and e.object.get("kind") == "" for e in self.events))
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.source.stop()
        self.client.close()

    def seen(self, *types):
        return [(e.type, e.object.get("apiVersion"), e.object["kind"], e.object["metadata"].get("namespace"),
                 e.object["metadata"]["name"]) for e in self.events
                if e.type in (types or ("ADDED", "MODIFIED", "DELETED"))]

    def secrets(self):
        return [(t, ns, name) for t, _, kind, ns, name in self.seen() if kind == "Secret"]

    async def until(self, predicate, timeout=30.0):
        await eventually_async(predicate, timeout, lambda: f"the events so far: {self.seen()}")


def secret_requests(api):
    return [(r.method, r.path, dict(r.query)) for r in api.requests if "/secrets" in r.path]


def test_service_entries_and_both_gateways_are_watched_and_kept_apart():
    async def main():
        with KubeApiServer() as api:
            api.add(istio_gateway())
            api.add(api_gateway())                 # same namespace and name, the other dialect
            api.add(service_entry())
            async with Run(api) as run:
                listed = run.seen()
                assert ("ADDED", ISTIO, "Gateway", "default", "web") in listed
                assert ("ADDED", GATEWAY_API, "Gateway", "default", "web") in listed
                assert ("ADDED", ISTIO, "ServiceEntry", "default", "outside") in listed
                assert run.source.served["Gateway.networking.istio.io"] == "v1"
                assert run.source.served["ServiceEntry"] == "v1"

                # A re-list of one Gateway kind (410 Gone) must not delete the other kind's Gateway.
                api.behind_the_watch(lambda a: a.add(service_entry("second", "b.outside.test")))
                await run.until(lambda: ("ADDED", ISTIO, "ServiceEntry", "default", "second") in run.seen())
                await run.until(lambda: run.source.lists.get("Gateway.networking.istio.io", 0) >= 2
                                and run.source.lists.get("Gateway", 0) >= 2)
                assert not [e for e in run.seen("DELETED") if e[2] == "Gateway"]

                api.delete("Gateway", "default", "web")     # Gateway API's (the double's first Gateway kind)
                await run.until(lambda: ("DELETED", GATEWAY_API, "Gateway", "default", "web") in run.seen())
                assert ("DELETED", ISTIO, "Gateway", "default", "web") not in run.seen()
                assert [o["apiVersion"] for c in run.source.caches.values() for o in c.objects.values()
                        if o["kind"] == "Gateway"] == [ISTIO]
    asyncio.run(main())


def test_tls_secrets_are_read_by_name_only_where_gateways_look():
    async def main():
        with KubeApiServer() as api:
            api.add(gateway_pod("shoal-system"))
            for secret in (tls_secret("web-cert", "shoal-system"), tls_secret("web-cert", "default", "two"),
                           tls_secret("other", "default"), tls_secret("api-cert", "apps"),
                           tls_secret("opaque-cert", "default", kind="Opaque")):
                api.add(secret)
            api.add(istio_gateway(credential="web-cert"))
            async with Run(api, secret_interval=3600) as run:
                # In the complete view: the named Secret in the gateway pods' namespace and in the Gateway's.
                assert sorted(run.secrets()) == [("ADDED", "default", "web-cert"),
                                                 ("ADDED", "shoal-system", "web-cert")]
                (secret,) = [e.object for e in run.events if e.object.get("kind") == "Secret"
                             and e.object["metadata"]["namespace"] == "shoal-system"]
                assert base64.b64decode(secret["data"]["tls.crt"]) == b"cert one"

                # A Gateway API Gateway of class shoal naming another namespace's Secret: read at once
                # (long before the hour-long poll), and a non-TLS Secret named is never passed on.
                api.add(api_gateway("api", "apps", cert={"name": "api-cert"}))
                api.add(api_gateway("plain", "default", cert={"name": "opaque-cert"}))
                api.add(api_gateway("theirs", "default", cls="other-class", cert={"name": "other"}))
                await run.until(lambda: ("ADDED", "apps", "api-cert") in run.secrets())
                api.delete("Gateway", "apps", "api")
                await run.until(lambda: ("DELETED", "apps", "api-cert") in run.secrets())
                await asyncio.sleep(0.5)
                names = {name for _, _, name in run.secrets()}
                assert "other" not in names and "opaque-cert" not in names

            requests = secret_requests(api)
            assert requests and all(method == "GET" and not query for method, _, query in requests), requests
            assert {path.rsplit("/", 1)[1] for _, path, _ in requests} <= {"web-cert", "api-cert", "opaque-cert"}
    asyncio.run(main())


def test_a_rotated_secret_is_passed_on_at_the_next_poll_and_a_forbidden_one_is_warned_once():
    async def main():
        with KubeApiServer() as api:
            api.add(gateway_pod("shoal-system"))
            api.add(tls_secret("web-cert", "shoal-system"))
            api.add(istio_gateway(credential="web-cert"))
            async with Run(api, secret_interval=0.3) as run:
                assert ("ADDED", "shoal-system", "web-cert") in run.secrets()
                api.modify(tls_secret("web-cert", "shoal-system", "rotated"))
                await run.until(lambda: ("MODIFIED", "shoal-system", "web-cert") in run.secrets())
                (latest,) = [e.object for e in run.events if e.type == "MODIFIED" and e.object["kind"] == "Secret"]
                assert base64.b64decode(latest["data"]["tls.crt"]) == b"cert rotated"
                with capture_logs() as failing:
                    api.fail(503, method="GET", path="/secrets/web-cert", times=6)
                    await run.until(lambda: not any(f.path == "/secrets/web-cert" for f in api.faults))
                assert ("DELETED", "shoal-system", "web-cert") not in run.secrets()   # kept what it had
                assert any("reading a TLS Secret failed" in e["event"] for e in failing)
                with capture_logs() as logs:
                    api.fail(403, method="GET", path="/secrets/web-cert", times=1000)
                    await run.until(lambda: ("DELETED", "shoal-system", "web-cert") in run.secrets())
                    await asyncio.sleep(1.0)     # several polls: still one warning per Secret
                forbidden = [e for e in logs if "cannot read a TLS Secret" in e["event"]]
                assert len([e for e in forbidden if e["namespace"] == "shoal-system"]) == 1
                assert "get on secrets" in forbidden[0]["event"]
    asyncio.run(main())


def test_wanted_secrets_follow_the_selected_pods_and_the_class():
    pods = [gateway_pod("ingress"), {"kind": "Pod", "metadata": {"namespace": "apps", "labels": {"app": "x"}}}]
    gateways = [istio_gateway(credential="a"), api_gateway("g", "apps", cert={"name": "b", "namespace": "apps"}),
                api_gateway("x", "apps", cert={"name": "e", "namespace": "certs"}),     # no ReferenceGrant: not read
                api_gateway("w", "apps", cls="shoal-waypoint", cert={"name": "c"}),
                api_gateway("k", "apps", cert={"name": "d", "kind": "ConfigMap"})]
    assert wanted_secrets(gateways, pods) == {("default", "a"), ("ingress", "a"), ("apps", "b")}
    assert wanted_secrets([istio_gateway()], pods) == frozenset()


def reference_grant(namespace, from_namespace, secret=None):
    return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": f"from-{from_namespace}", "namespace": namespace},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": from_namespace}],
                     "to": [{"group": "", "kind": "Secret", **({"name": secret} if secret else {})}]}}


def test_wanted_secrets_in_another_namespace_are_exactly_the_granted_ones():
    gateways = [api_gateway("x", "apps", cert={"name": "e", "namespace": "certs"}),
                api_gateway("y", "apps", cert={"name": "f", "namespace": "certs"})]
    assert wanted_secrets(gateways, [], [reference_grant("certs", "apps", "e")]) == {("certs", "e")}
    assert wanted_secrets(gateways, [], [reference_grant("certs", "apps")]) == {("certs", "e"), ("certs", "f")}
    assert wanted_secrets(gateways, [], [reference_grant("certs", "other"), reference_grant("apps", "apps")]) == set()


def test_a_granted_secret_in_another_namespace_is_read_and_forgotten_when_the_grant_goes():
    async def main():
        with KubeApiServer() as api:
            api.add(gateway_pod())
            api.add(tls_secret("e", "certs"))
            api.add(tls_secret("f", "certs"))
            api.add(api_gateway("x", "apps", cert={"name": "e", "namespace": "certs"}))
            async with Run(api, secret_interval=0.2) as run:
                await asyncio.sleep(0.5)          # a few polls: an ungranted Secret is never asked for
                assert not [r for r in secret_requests(api) if "/namespaces/certs/" in r[1]]
                grant = api.add(reference_grant("certs", "apps", "e"))
                await run.until(lambda: ("ADDED", "certs", "e") in run.secrets())
                assert ("ADDED", "gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "certs", "from-apps") \
                    in run.seen()
                api.delete("ReferenceGrant", "certs", grant["metadata"]["name"])
                await run.until(lambda: ("DELETED", "certs", "e") in run.secrets())
                asked = len(secret_requests(api))
                await asyncio.sleep(0.5)
                assert len(secret_requests(api)) == asked, "a Secret whose grant went is still read"
                assert not [r for r in secret_requests(api) if r[1].endswith("/secrets/f") or "watch" in r[2]
                            or not r[1].rsplit("/", 1)[1]]
    asyncio.run(main())


@pytest.fixture
def api():
    with KubeApiServer() as server:
        server.add({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "shoal-ca-root-cert", "namespace": "shoal-system"},
                    "data": {"root-cert.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}})
        yield server


def test_a_gateway_of_class_shoal_is_accepted_then_programmed_with_the_load_balancers_address(api):
    times = iter(f"2026-11-30T12:0{i}:00Z" for i in range(10))
    apis = api.api_client()
    controller = KubeWaypointController(apis, image="shoal:test", bundle=published_bundle(apis),
                                        now=lambda: next(times))
    api.add(api_gateway())
    api.add(gateway_pod(ready=False))
    controller.reconcile()
    status = api.get("Gateway", "default", "web")["status"]
    found = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert found == {"Accepted": ("True", "Accepted"), "Programmed": ("False", "Pending")}
    assert "addresses" not in status
    assert not api.list("Deployment"), "an ingress Gateway is not a waypoint: nothing is deployed for it"

    api.modify(gateway_pod(ready=True))
    api.add({"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "shoal-ingressgateway", "namespace": "shoal-system",
                          "labels": {"istio": "ingressgateway"}},
             "spec": {"type": "LoadBalancer", "selector": {"istio": "ingressgateway"},
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    service_type = api.store.type_for("Service")
    service = api.get("Service", "shoal-system", "shoal-ingressgateway")
    api.store.replace(service_type, "shoal-system", "shoal-ingressgateway",
                      {**service, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}},
                      subresource="status")
    controller.reconcile()
    status = api.get("Gateway", "default", "web")["status"]
    found = {c["type"]: c for c in status["conditions"]}
    assert (found["Programmed"]["status"], found["Programmed"]["reason"]) == ("True", "Programmed")
    assert found["Accepted"]["lastTransitionTime"] == "2026-11-30T12:00:00Z"     # kept: unchanged
    assert status["addresses"] == [{"type": "IPAddress", "value": "203.0.113.7"}]
    writes = controller.writes
    controller.reconcile()
    assert controller.writes == writes, "an unchanged status is written again"
    apis.close()
