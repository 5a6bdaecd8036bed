"""shoal.kube_calls.API_CALLS is exactly the calls the code makes: every adapter runs against the API double,
and the (group, resource, verb, subresource) of each request it sees is compared with the list."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from control_plane import ca_store
from control_plane.authn import TOKEN_AUDIENCE, KubeAuthenticator
from control_plane.sources.kube import KubeSource as ConfigSource, make_api_client, report_invalid
from control_plane.waypoints import GATEWAY_NAME, MANAGED_BY, MANAGER, WAYPOINT_CONTROLLER
from control_plane.status_kube import KubeStatusWriter
from control_plane.waypoints_kube import KubeWaypointController, published_bundle
from node_agent.sources import KubeSource as NodeSource
from shoal.kube_calls import API_CALLS, CONTROL_PLANE, NODE_AGENT, ApiCall

from support.kube_api import KubeApiServer
from support.kube_resources import parse_path
from support.polling import eventually_async

pytestmark = pytest.mark.timeout(120)
NODE_SA = "system:serviceaccount:shoal-system:shoal-node"


def calls_seen(api: KubeApiServer, component: str) -> set[ApiCall]:
    seen = set()
    for request in api.requests:
        route = parse_path(request.path, api.store.namespaced_pairs())
        if route is None:
            continue
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(request.method)
        if verb is None:
            verb = "get" if route.name else "watch" if request.query.get("watch") else "list"
        seen.add(ApiCall(component, route.group, route.plural, verb, route.subresource or ""))
    return seen


def listed(component: str) -> set[ApiCall]:
    return {c for c in API_CALLS if c.component == component}


def run_config_source(api: KubeApiServer) -> None:
    async def main():
        config = api.configuration()
        source = ConfigSource(make_api_client(config))
        seen = []

        async def pump():
            async for event in source.events():
                seen.append(event)
        task = asyncio.create_task(pump())
        try:
            await eventually_async(lambda: api.open_watches() == len(source.resources), 30,
                                   "a watch open for every kind")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            source.stop()
    asyncio.run(main())


def run_waypoint_controller(api: KubeApiServer) -> None:
    apis = api.api_client()
    controller = KubeWaypointController(apis, image="shoal:test", bundle=published_bundle(apis))
    api.add({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
             "metadata": {"name": "shoal-waypoint"}, "spec": {"controllerName": WAYPOINT_CONTROLLER}})
    api.add({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "waypoint", "namespace": "shop"},
             "spec": {"gatewayClassName": "shoal-waypoint",
                      "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    controller.reconcile()                      # creates, status
    for kind, name in (("Deployment", "waypoint"), ("Service", "waypoint"), ("ServiceAccount", "waypoint"),
                       ("ConfigMap", "shoal-ca-root-cert")):
        drifted = api.get(kind, "shop", name)   # someone dropped the ownerReference: patched back
        drifted["metadata"]["ownerReferences"] = []
        api.modify(drifted)
    orphans = {"metadata": {"name": "old", "namespace": "gone", "labels": {MANAGED_BY: MANAGER, GATEWAY_NAME: "old"}}}
    for kind, extra in (("ServiceAccount", {}), ("Service", {"spec": {"ports": [{"port": 1}]}}), ("ConfigMap", {}),
                        ("Deployment", {"spec": {"selector": {}, "template": {}}})):
        api.add({"apiVersion": "apps/v1" if kind == "Deployment" else "v1", "kind": kind, **orphans, **extra})
    controller.reconcile()                      # patches, deletes
    apis.close()


def run_status_writer(api: KubeApiServer) -> None:
    """One mesh object of each kind with a status subresource: each gets its status written."""
    meta = {"name": "x", "namespace": "shop"}
    for api_version, kind, spec in (
            ("gateway.networking.k8s.io/v1", "HTTPRoute", {"parentRefs": [{"kind": "Service", "group": "",
                                                                           "name": "x"}]}),
            ("networking.istio.io/v1", "VirtualService", {"hosts": ["x"], "http": [{"route": [
                {"destination": {"host": "x"}}]}]}),
            ("networking.istio.io/v1", "DestinationRule", {"host": "x"}),
            ("networking.istio.io/v1", "ServiceEntry", {"hosts": ["x.example"], "ports": [
                {"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS"}),
            ("security.istio.io/v1", "AuthorizationPolicy", {}),
            ("security.istio.io/v1", "PeerAuthentication", {"mtls": {"mode": "STRICT"}})):
        api.add({"apiVersion": api_version, "kind": kind, "metadata": dict(meta), "spec": spec})
    kinds = ("HTTPRoute", "VirtualService", "DestinationRule", "ServiceEntry", "AuthorizationPolicy",
             "PeerAuthentication")
    writer = KubeStatusWriter(api.api_client(), lambda: [o for kind in kinds for o in api.list(kind)])
    assert writer.step(writer.objects()) == len(kinds)


def run_ca_and_authn(api: KubeApiServer) -> None:
    core = client.CoreV1Api(api.api_client())
    store = ca_store.KubeSecretRootStore(core)
    ca_store.load_or_create(store, "cluster.local")
    ca_store.begin_rotation(store, "cluster.local")          # get, update the Secret; the ConfigMap again
    api.reviews["node-token"] = {"username": NODE_SA,
                                 "extra": {"authentication.kubernetes.io/pod-name": ["shoal-node-x"]}}
    api.audiences["node-token"] = [TOKEN_AUDIENCE]
    api.add({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shoal-node-x", "namespace": "shoal-system"},
             "spec": {"nodeName": "worker-1", "containers": [{"name": "c"}]}})
    auth = KubeAuthenticator(client.AuthenticationV1Api(core.api_client), core)
    assert auth.authenticate("node-token").node == "worker-1"
    report_invalid(core.api_client, {"apiVersion": "v1", "kind": "Service",
                                     "metadata": {"name": "s", "namespace": "shop", "uid": "u"}}, ["bad"])


def test_the_control_plane_makes_exactly_the_listed_calls():
    with KubeApiServer() as api:
        run_config_source(api)
        run_ca_and_authn(api)          # first: it publishes the mesh root the waypoint controller copies
        run_waypoint_controller(api)
        run_status_writer(api)
        seen = calls_seen(api, CONTROL_PLANE)
    assert sorted(seen - listed(CONTROL_PLANE)) == [], "calls made that API_CALLS (and so the RBAC) lacks"
    assert sorted(listed(CONTROL_PLANE) - seen) == [], "calls listed that the code no longer makes"


def test_the_node_agent_makes_exactly_the_listed_calls():
    with KubeApiServer() as api:
        async def main():
            source = NodeSource("node1", api_client=api.api_client())
            views = []

            async def on_change(pods, namespaces):
                views.append(pods)
            task = asyncio.create_task(source.run(on_change))
            try:
                await eventually_async(lambda: views and api.open_watches() == 2, 30, "both watches open")
                await source.report("default", "lost", "u-lost", "its sandbox was not found")  # the Event
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        asyncio.run(main())
        seen = calls_seen(api, NODE_AGENT)
    assert seen == listed(NODE_AGENT)
