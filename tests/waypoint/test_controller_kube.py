"""The waypoint controller through the Kubernetes API (a double speaking the API's HTTP)."""

from kubernetes import client

from control_plane.waypoints import MANAGED_BY
from control_plane.waypoints_kube import KubeWaypointController, published_bundle
from wp_kube_api import KubeApi

BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def gateway(name="waypoint", namespace="shop", cls="shoal-waypoint"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def api_client(url):
    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)


def test_gateway_to_objects_and_back():
    with KubeApi() as api:
        api.put("configmaps", {"metadata": {"name": "shoal-ca-root-cert", "namespace": "shoal-system"},
                               "data": {"root-cert.pem": BUNDLE.decode()}})
        api.put("gateways", gateway())
        api.put("gateways", gateway("ingress", cls="nginx"))
        # Somebody else's Service already holds the name the second waypoint wants.
        api.put("gateways", gateway("other", namespace="blocked"))
        api.put("services", {"metadata": {"name": "other", "namespace": "blocked", "labels": {}}, "spec": {}})
        apis = api_client(api.url)
        controller = KubeWaypointController(apis, image="shoal:test", bundle=published_bundle(apis))

        controller.reconcile()
        deployment = api.get("deployments", "shop", "waypoint")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "shoal:test"
        assert container["command"][3:9] == ["waypoint", "run", "--namespace", "shop", "--name", "waypoint"]
        assert "--token-file" in container["command"] and deployment["spec"]["template"]["metadata"]["labels"][
            "shoal.io/dataplane-mode"] == "none"
        assert deployment["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "shoal-ca-root-cert"
        assert api.get("configmaps", "shop", "shoal-ca-root-cert")["data"]["root-cert.pem"] == BUNDLE.decode()
        assert api.get("services", "shop", "waypoint")["spec"]["ports"][0]["port"] == 15008
        assert api.get("serviceaccounts", "shop", "waypoint") is not None
        assert api.get("deployments", "default", "ingress") is None
        theirs = api.get("services", "blocked", "other")
        assert MANAGED_BY not in (theirs["metadata"].get("labels") or {})      # not touched
        assert api.get("deployments", "blocked", "other") is not None           # the rest of it is made

        writes = len(api.writes)
        controller.reconcile()
        assert len(api.writes) == writes      # settled: nothing rewritten

        # Drift is patched back.
        drifted = api.get("deployments", "shop", "waypoint")
        drifted["spec"]["replicas"] = 5
        api.put("deployments", drifted)
        controller.reconcile()
        assert api.get("deployments", "shop", "waypoint")["spec"]["replicas"] == 1

        api.remove("gateways", "shop", "waypoint")
        controller.reconcile()
        for plural in ("deployments", "services", "serviceaccounts", "configmaps"):
            assert api.get(plural, "shop", "waypoint" if plural != "configmaps" else "shoal-ca-root-cert") is None
        assert api.get("services", "blocked", "other") is not None
        assert api.get("configmaps", "shoal-system", "shoal-ca-root-cert") is not None


def test_waits_for_the_mesh_root():
    with KubeApi() as api:
        api.put("gateways", gateway())
        apis = api_client(api.url)
        controller = KubeWaypointController(apis, image="shoal:test", bundle=published_bundle(apis))
        controller.reconcile()
        assert api.writes == [] and api.get("deployments", "shop", "waypoint") is None
