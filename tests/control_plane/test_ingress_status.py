"""The status shoal writes on a Gateway of class shoal (an ingress Gateway): Accepted, Programmed, address."""

from control_plane.waypoints import Observed, ingress_status

GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "public", "namespace": "web", "generation": 3},
           "spec": {"gatewayClassName": "shoal", "listeners": [{"name": "web", "port": 80, "protocol": "HTTP"}]}}


def conditions(status):
    return {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]}


def test_programmed_follows_the_ingress_gateway_pods_and_the_address_is_its_load_balancers():
    pending = ingress_status(GATEWAY, Observed(False, None), "2026-11-30T23:00:00Z")
    assert conditions(pending) == {"Accepted": ("True", "Accepted", 3), "Programmed": ("False", "Pending", 3)}
    assert "addresses" not in pending
    ready = ingress_status({**GATEWAY, "status": pending}, Observed(True, "198.18.0.1"), "2026-11-30T23:01:00Z")
    assert conditions(ready)["Programmed"] == ("True", "Programmed", 3)
    assert ready["addresses"] == [{"type": "IPAddress", "value": "198.18.0.1"}]
    # Accepted did not change: its transition time is kept
    accepted = [c for c in ready["conditions"] if c["type"] == "Accepted"][0]
    assert accepted["lastTransitionTime"] == "2026-11-30T23:00:00Z"
    assert ingress_status({**GATEWAY, "status": ready}, Observed(True, "198.18.0.1"), "2026-11-30T23:02:00Z") == ready


# -- the listeners' status: attached routes, and ResolvedRefs with ReferenceGrants -------------------------------

CROSS = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "public", "namespace": "web", "generation": 2},
         "spec": {"gatewayClassName": "shoal", "listeners": [
             {"name": "web", "port": 80, "protocol": "HTTP"},
             {"name": "secure", "port": 443, "protocol": "HTTPS",
              "tls": {"certificateRefs": [{"name": "cert", "namespace": "certs"}]}}]}}
GRANT = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
         "metadata": {"name": "web-gateways", "namespace": "certs"},
         "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "web"}],
                  "to": [{"group": "", "kind": "Secret", "name": "cert"}]}}
ROUTES = [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "web"}, "spec": {"parentRefs": refs}}
          for name, refs in (("both", [{"name": "public"}]), ("secure", [{"name": "public", "sectionName": "secure"}]),
                             ("other", [{"name": "elsewhere"}]),
                             ("there", [{"name": "public", "namespace": "web", "port": 80}]))]


def listeners(status):
    return {l["name"]: ({c["type"]: (c["status"], c["reason"]) for c in l["conditions"]}, l["attachedRoutes"])
            for l in status}


def test_a_listeners_certificate_in_another_namespace_resolves_only_with_a_grant():
    from control_plane.ingress_listeners import listener_statuses
    refused = listener_statuses(CROSS, [], ROUTES, "2026-12-01T02:00:00Z")
    assert listeners(refused) == {
        "web": ({"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}, 2),
        "secure": ({"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}, 2)}
    assert refused[1]["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]
    granted = listener_statuses({**CROSS, "status": {"listeners": refused}}, [GRANT], ROUTES, "2026-12-01T02:01:00Z")
    assert listeners(granted)["secure"][0]["ResolvedRefs"] == ("True", "ResolvedRefs")
    web = {c["type"]: c for c in granted[0]["conditions"]}
    assert web["Accepted"]["lastTransitionTime"] == "2026-12-01T02:00:00Z"       # unchanged: kept
    other_secret = {**GRANT, "spec": {**GRANT["spec"], "to": [{"group": "", "kind": "Secret", "name": "x"}]}}
    assert listeners(listener_statuses(CROSS, [other_secret], ROUTES, "t"))["secure"][0]["ResolvedRefs"][1] == \
        "RefNotPermitted"


def test_the_kubernetes_controller_writes_the_listeners_and_follows_the_grant():
    from control_plane.waypoints_kube import KubeWaypointController, published_bundle
    from support.kube_api import KubeApiServer
    with KubeApiServer() as api:
        api.add({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "shoal-ca-root-cert", "namespace": "shoal-system"},
                 "data": {"root-cert.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}})
        for obj in (CROSS, *ROUTES):
            api.add(obj)
        apis = api.api_client()
        controller = KubeWaypointController(apis, image="shoal:test", bundle=published_bundle(apis))

        def secure():
            controller.reconcile()
            status = api.get("Gateway", "web", "public")["status"]
            return listeners(status["listeners"])["secure"]
        assert secure() == ({"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}, 2)
        api.add(GRANT)
        assert secure()[0]["ResolvedRefs"] == ("True", "ResolvedRefs")
        writes = controller.writes
        controller.reconcile()
        assert controller.writes == writes, "the same status written again"
        api.delete("ReferenceGrant", "certs", "web-gateways")        # revoked
        assert secure()[0]["ResolvedRefs"] == ("False", "RefNotPermitted")


def test_the_local_controller_writes_the_same_listeners(tmp_path):
    from control_plane.waypoints import LocalWaypointController
    from shoal.store import Store
    store = Store("t", root=tmp_path)
    store.init()
    for name in ("web", "certs"):
        store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for obj in (CROSS, *ROUTES):
        store.apply(obj)
    controller = LocalWaypointController(store, lambda namespace, name: ["true"])
    controller.reconcile()
    assert listeners(store.get("Gateway", "web", "public")["status"]["listeners"])["secure"][0]["ResolvedRefs"] == \
        ("False", "RefNotPermitted")
    store.apply(GRANT)
    controller.reconcile()
    assert listeners(store.get("Gateway", "web", "public")["status"]["listeners"])["secure"][0]["ResolvedRefs"] == \
        ("True", "ResolvedRefs")
