"""The waypoint controller through the Kubernetes API (support.kube_api, the real client): the objects a
waypoint Gateway wants, owned by it; the Gateway's and the GatewayClass's status; API failures."""

import asyncio

import pytest

from control_plane.waypoints import MANAGED_BY, WAYPOINT_CONTROLLER
from control_plane.waypoints_kube import KubeWaypointController, published_bundle
from shoal.kube_client import KubeForbidden, KubeUnavailable

from support.kube_api import KubeApiServer

pytestmark = pytest.mark.timeout(120)

BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
NOW = "2026-11-30T12:00:00Z"
GATEWAY_GROUP = "gateway.networking.k8s.io"


def gateway(name="waypoint", namespace="shop", cls="shoal-waypoint"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def gatewayclass(controller=WAYPOINT_CONTROLLER, name="shoal-waypoint"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name},
            "spec": {"controllerName": controller}}


@pytest.fixture
def api():
    with KubeApiServer() as server:
        server.add({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "shoal-ca-root-cert", "namespace": "shoal-system"},
                    "data": {"root-cert.pem": BUNDLE.decode()}})
        yield server


def controller_for(api, now=lambda: NOW):
    apis = api.api_client()
    return KubeWaypointController(apis, image="shoal:test", bundle=published_bundle(apis), now=now)


def conditions(obj):
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def test_gateway_to_objects_owned_by_it_and_back(api):
    mine = api.add(gateway())
    api.add(gateway("ingress", cls="nginx"))
    # Somebody else's Service already holds the name the second waypoint wants.
    api.add(gateway("other", namespace="blocked"))
    api.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "blocked"},
             "spec": {"ports": [{"port": 80}]}})
    controller = controller_for(api)

    controller.reconcile()
    deployment = api.get("Deployment", "shop", "waypoint")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "shoal:test"
    assert container["command"][3:9] == ["waypoint", "run", "--namespace", "shop", "--name", "waypoint"]
    assert "--token-file" in container["command"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["shoal.io/dataplane-mode"] == "none"
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "shoal-ca-root-cert"
    assert api.get("ConfigMap", "shop", "shoal-ca-root-cert")["data"]["root-cert.pem"] == BUNDLE.decode()
    assert api.get("Service", "shop", "waypoint")["spec"]["ports"][0]["port"] == 15008
    owner = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
             "uid": mine["metadata"]["uid"]}
    for kind in ("Deployment", "Service", "ServiceAccount"):
        assert api.get(kind, "shop", "waypoint")["metadata"]["ownerReferences"] == [{**owner, "controller": True}]
    assert api.get("ConfigMap", "shop", "shoal-ca-root-cert")["metadata"]["ownerReferences"] == [owner]
    assert api.get("Deployment", "default", "ingress") is None
    theirs = api.get("Service", "blocked", "other")
    assert MANAGED_BY not in (theirs["metadata"].get("labels") or {})      # not touched
    assert api.get("Deployment", "blocked", "other") is not None           # the rest of it is made

    writes = len(api.writes())
    controller.reconcile()
    assert len(api.writes()) == writes      # settled: nothing rewritten, status included

    drifted = api.get("Deployment", "shop", "waypoint")
    drifted["spec"]["replicas"] = 5
    api.modify(drifted)
    controller.reconcile()
    assert api.get("Deployment", "shop", "waypoint")["spec"]["replicas"] == 1

    # Kubernetes' garbage collector removes them with the Gateway, the controller not even running.
    with api.api_client() as c:
        from kubernetes import client
        client.CustomObjectsApi(c).delete_namespaced_custom_object(GATEWAY_GROUP, "v1", "shop", "gateways", "waypoint")
    for kind, name in (("Deployment", "waypoint"), ("Service", "waypoint"), ("ServiceAccount", "waypoint"),
                       ("ConfigMap", "shoal-ca-root-cert")):
        assert api.get(kind, "shop", name) is None, kind
    controller.reconcile()      # and the controller finds nothing left to do
    assert api.get("Service", "blocked", "other") is not None
    assert api.get("ConfigMap", "shoal-system", "shoal-ca-root-cert") is not None


def test_the_gateway_gets_accepted_then_programmed_with_its_generation_and_address(api):
    api.add(gateway())
    api.add(gateway("istio-one", cls="istio-waypoint"))
    times = iter(["2026-11-30T12:00:00Z", "2026-11-30T12:01:00Z", "2026-11-30T12:02:00Z", "2026-11-30T12:03:00Z"])
    controller = controller_for(api, now=lambda: next(times))
    controller.reconcile()
    stored = api.get("Gateway", "shop", "waypoint")
    found = conditions(stored)
    assert {t: (c["status"], c["reason"]) for t, c in found.items()} == {
        "Accepted": ("True", "Accepted"), "Programmed": ("False", "Pending")}
    assert all(c["observedGeneration"] == stored["metadata"]["generation"] == 1 for c in found.values())
    assert "no ready pod" in found["Programmed"]["message"]
    assert stored["status"]["addresses"] == [{"type": "Hostname", "value": "waypoint.shop.svc.cluster.local"}]
    assert not conditions(api.get("Gateway", "shop", "istio-one"))      # Istio's class: not ours to write
    patches = [r for r in api.requests if r.method == "PATCH" and r.path.endswith("/gateways/waypoint/status")]
    assert patches and patches[-1].headers["Content-Type"] == "application/merge-patch+json"

    # The Deployment gets a ready pod and the Service an IP (what the cluster would report); the spec changes.
    deployment = api.get("Deployment", "shop", "waypoint")
    api.store.replace(api.store.type_for("Deployment"), "shop", "waypoint",
                      {**deployment, "status": {"readyReplicas": 1}}, subresource="status")
    service = api.get("Service", "shop", "waypoint")
    service["spec"]["clusterIP"] = "198.18.16.30"
    api.modify(service)
    changed = api.get("Gateway", "shop", "waypoint")
    changed["spec"]["listeners"][0]["name"] = "hbone"
    api.modify(changed)
    controller.reconcile()
    stored = api.get("Gateway", "shop", "waypoint")
    found = conditions(stored)
    assert (found["Programmed"]["status"], found["Programmed"]["reason"]) == ("True", "Programmed")
    assert found["Programmed"]["lastTransitionTime"] == "2026-11-30T12:01:00Z"
    assert found["Accepted"]["lastTransitionTime"] == "2026-11-30T12:00:00Z"     # unchanged: kept
    assert all(c["observedGeneration"] == stored["metadata"]["generation"] == 2 for c in found.values())
    assert stored["status"]["addresses"] == [{"type": "IPAddress", "value": "198.18.16.30"}]


def test_a_name_taken_by_another_object_is_reported_on_the_gateway(api):
    api.add(gateway("other", namespace="blocked"))
    api.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "blocked"},
             "spec": {"ports": [{"port": 80}]}})
    controller_for(api).reconcile()
    programmed = conditions(api.get("Gateway", "blocked", "other"))["Programmed"]
    assert (programmed["status"], programmed["reason"]) == ("False", "Invalid")
    assert "Service/blocked/other" in programmed["message"]


def test_the_gatewayclass_is_accepted_only_when_shoal_is_its_controller(api):
    api.add(gatewayclass())
    api.add(gatewayclass("example.com/other", name="theirs"))
    api.add(gateway())
    controller = controller_for(api)
    controller.reconcile()
    accepted = conditions(api.get("GatewayClass", None, "shoal-waypoint"))["Accepted"]
    assert (accepted["status"], accepted["reason"], accepted["observedGeneration"]) == ("True", "Accepted", 1)
    assert not conditions(api.get("GatewayClass", None, "theirs"))
    writes = len(api.writes())
    controller.reconcile()
    assert len(api.writes()) == writes


def test_without_the_gateway_api_crds_there_is_nothing_to_do_until_they_come(api):
    api.served["gateway.networking.k8s.io"] = set()
    controller = controller_for(api)
    controller.reconcile()
    assert api.writes() == []
    api.served["gateway.networking.k8s.io"] = {"v1", "v1beta1"}
    api.add(gateway())
    controller.reconcile()
    assert api.get("Deployment", "shop", "waypoint") is not None


def test_waits_for_the_mesh_root():
    with KubeApiServer() as api:
        api.add(gateway())
        controller_for(api).reconcile()
        assert api.writes() == [] and api.get("Deployment", "shop", "waypoint") is None


def test_api_failures_are_retried_when_the_server_says_when_else_surface_as_kube_errors(api):
    api.add(gateway())
    controller = controller_for(api)
    api.fail(429, retry_after=0, method="POST", times=2)       # throttled creates: tried again
    api.fail(503, retry_after=0, method="PATCH", path="/status")
    controller.reconcile()
    assert api.get("Deployment", "shop", "waypoint") is not None
    assert conditions(api.get("Gateway", "shop", "waypoint"))["Accepted"]["status"] == "True"
    assert not api.faults

    api.add(gateway("second"))
    api.fail(403, method="POST")
    with pytest.raises(KubeForbidden, match="403.*daemonset/rbac.yaml"):
        controller.reconcile()
    api.fail(500, method="GET", path="/deployments")          # no Retry-After: not retried, reported
    with pytest.raises(KubeUnavailable, match="500"):
        controller.reconcile()
    controller.reconcile()                                      # the failures passed: the pass completes
    assert api.get("Deployment", "shop", "second") is not None


def test_the_run_loop_logs_a_failed_pass_and_goes_on(api):
    api.add(gateway())
    controller = controller_for(api)
    controller.poll = 0.05
    api.fail(401, times=3)

    async def main():
        task = asyncio.create_task(controller.run())
        try:
            for _ in range(400):
                if api.get("Deployment", "shop", "waypoint") is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    assert api.get("Deployment", "shop", "waypoint") is not None
    assert any(r.path.endswith("/configmaps/shoal-ca-root-cert") for r in api.requests)
