"""The waypoint controller: Gateway -> ServiceAccount, Deployment, Service, and back."""

import asyncio

from shoal.store import Store

from control_plane.translate import Translator
from control_plane.waypoints import (
    GATEWAY_NAME, MANAGED_BY, MANAGER, WAYPOINT_CONTROLLER, LocalWaypointController, desired, plan,
)
from shoal.model import Protocol, ResourceType
from shoal.store import Event

from support.polling import eventually_async


def argv(namespace, name):
    return ["shoal", "waypoint", "run", "--namespace", namespace, "--name", name]


def gw(name="waypoint", namespace="shop", cls="shoal-waypoint"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def keys(objs):
    return sorted((o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs)


def test_a_waypoint_gateway_wants_three_objects():
    objs = desired(gw(), argv)
    assert keys(objs) == [("Deployment", "shop", "waypoint"), ("Service", "shop", "waypoint"),
                          ("ServiceAccount", "shop", "waypoint")]
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"][GATEWAY_NAME] == "waypoint"
    assert pod["metadata"]["labels"]["shoal.io/dataplane-mode"] == "none"
    assert pod["spec"]["serviceAccountName"] == "waypoint"
    assert pod["spec"]["containers"][0]["command"] == argv("shop", "waypoint")
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 15021
    service = next(o for o in objs if o["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 15008 and service["spec"]["selector"] == {GATEWAY_NAME: "waypoint"}
    assert all(o["metadata"]["labels"][MANAGED_BY] == MANAGER for o in objs)


def test_the_access_log_is_on_only_when_the_gateway_asks_for_it():
    def command(annotations):
        gateway = gw()
        gateway["metadata"]["annotations"] = annotations
        deployment = next(o for o in desired(gateway, argv) if o["kind"] == "Deployment")
        return deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command({}) == argv("shop", "waypoint")
    assert command({"shoal.io/access-log": "false"}) == argv("shop", "waypoint")
    assert command({"shoal.io/access-log": "true"}) == [*argv("shop", "waypoint"), "--access-log", "on"]


def test_plan_ignores_other_gateways_removes_orphans_and_spares_unmanaged_objects():
    ingress = gw("ingress", cls="nginx")
    istio = {**gw("istio-gw"), "apiVersion": "networking.istio.io/v1beta1"}   # an Istio ingress Gateway
    orphan = desired(gw("old"), argv)[1]                      # managed, its Gateway is gone
    theirs = {"kind": "Service", "metadata": {"name": "waypoint", "namespace": "shop", "labels": {}}}
    p = plan([gw(), ingress, istio], [orphan, theirs], lambda g: desired(g, argv))
    assert keys(p.apply) == [("Deployment", "shop", "waypoint"), ("ServiceAccount", "shop", "waypoint")]
    assert p.delete == (("Deployment", "shop", "old"),)


def test_translator_treats_the_waypoint_pod_as_a_waypoint_speaking_hbone():
    """The pod the Deployment makes opts out of capture, yet is published as an HBONE workload, and its
    Service is never bound to a waypoint (no loops)."""
    deployment = next(o for o in desired(gw(), argv) if o["kind"] == "Deployment")
    service = next(o for o in desired(gw(), argv) if o["kind"] == "Service")
    service["spec"]["clusterIP"] = "198.18.16.20"
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "shop", "labels": {"shoal.io/dataplane-mode": "ambient",
                                                        "shoal.io/use-waypoint": "waypoint"}}}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "waypoint-abc-0", "namespace": "shop", "uid": "u1",
                        "labels": deployment["spec"]["template"]["metadata"]["labels"]},
           "spec": {**deployment["spec"]["template"]["spec"], "nodeName": "node1"},
           "status": {"phase": "Running", "podIP": "198.19.1.50"}}
    t = Translator()
    for obj in (namespace, gw(), service, pod):
        t.apply_event(Event("ADDED", obj))
    t.flush()
    snap = t.snapshot()
    workload = next(w for w in snap[ResourceType.WORKLOAD].values() if w.name == "waypoint-abc-0")
    assert workload.protocol is Protocol.HBONE and workload.waypoint is None
    svc = snap[ResourceType.SERVICE]["waypoint.shop.svc.cluster.local"]
    assert svc.waypoint is None and svc.endpoints and svc.endpoints[0].target_port == 15008


def test_local_controller_follows_gateways(tmp_path):
    store = Store("t", root=tmp_path)
    store.init()
    store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    controller = LocalWaypointController(store, argv)

    async def main():
        task = asyncio.create_task(controller.run())
        try:
            store.apply(gw())
            await eventually_async(lambda: store.get("Deployment", "shop", "waypoint")
                                   and store.get("Service", "shop", "waypoint"), 5, "the Deployment and the Service",
                                   interval=0.05)
            assert store.get("ServiceAccount", "shop", "waypoint") is not None
            assert store.get("Service", "shop", "waypoint")["spec"]["clusterIP"].startswith("198.18.")
            rv = store.resource_version()
            await asyncio.sleep(0.5)
            assert store.resource_version() == rv    # settled: re-applying the same objects writes nothing
            store.delete("Gateway", "shop", "waypoint")
            await eventually_async(lambda: not any(store.get(k, "shop", "waypoint")
                                                   for k in ("Deployment", "Service", "ServiceAccount")), 5,
                                   "the waypoint's objects to go with the Gateway", interval=0.05)
        finally:
            task.cancel()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_local_controller_writes_the_same_status_and_owner_references(tmp_path):
    store = Store("t", root=tmp_path)
    store.init()
    store.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                 "metadata": {"name": "shoal-waypoint"}, "spec": {"controllerName": WAYPOINT_CONTROLLER}})
    gateway = store.apply(gw())
    controller = LocalWaypointController(store, argv)
    controller.reconcile()
    deployment = store.get("Deployment", "shop", "waypoint")
    assert deployment["metadata"]["ownerReferences"] == [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
         "uid": gateway["metadata"]["uid"], "controller": True}]
    status = store.get("Gateway", "shop", "waypoint")["status"]
    found = {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]}
    assert found == {"Accepted": ("True", "Accepted", 1), "Programmed": ("False", "Pending", 1)}
    vip = store.get("Service", "shop", "waypoint")["spec"]["clusterIP"]
    assert status["addresses"] == [{"type": "IPAddress", "value": vip}]
    (accepted,) = store.get("GatewayClass", None, "shoal-waypoint")["status"]["conditions"]
    assert (accepted["type"], accepted["status"]) == ("Accepted", "True")

    store.apply({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "waypoint-0", "namespace": "shop", "labels": {GATEWAY_NAME: "waypoint"}},
                 "spec": {"nodeName": "node1"}})
    store.update_status("Pod", "shop", "waypoint-0", {"phase": "Running",
                                                      "conditions": [{"type": "Ready", "status": "True"}]})
    controller.reconcile()
    programmed = next(c for c in store.get("Gateway", "shop", "waypoint")["status"]["conditions"]
                      if c["type"] == "Programmed")
    assert (programmed["status"], programmed["reason"]) == ("True", "Programmed")
    rv = store.resource_version()
    controller.reconcile()
    assert store.resource_version() == rv     # settled: the same status is not written again
