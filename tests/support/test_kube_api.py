"""The Kubernetes API double answers as the real API server does (through the real kubernetes client)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from support.kube_api import KubeApiServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api():
    with KubeApiServer() as server:
        yield server


def crd(group="example.io", plural="widgets", kind="Widget", scope="Namespaced"):
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": scope, "names": {"plural": plural, "kind": kind},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "subresources": {"status": {}}}]}}


def daemonset(name="shoal-node", image="shoal:1"):
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "agent", "image": image}]}}}}


def test_any_builtin_and_custom_resource_can_be_written_read_listed_patched_and_deleted(api):
    with api.api_client() as c:
        apps = client.AppsV1Api(c)
        apps.create_namespaced_daemon_set("shoal-system", daemonset())
        with pytest.raises(ApiException) as taken:
            apps.create_namespaced_daemon_set("shoal-system", daemonset())
        assert taken.value.status == 409
        apps.patch_namespaced_daemon_set("shoal-node", "shoal-system", {"spec": {"template": {"spec": {
            "containers": [{"name": "agent", "image": "shoal:2"}]}}}})     # strategic merge, by container name
        stored = api.get("DaemonSet", "shoal-system", "shoal-node")
        assert stored["spec"]["template"]["spec"]["containers"] == [{"name": "agent", "image": "shoal:2"}]
        assert stored["metadata"]["generation"] == 2

        rbac = client.RbacAuthorizationV1Api(c)
        rbac.create_cluster_role({"metadata": {"name": "shoal"}, "rules": []})
        assert [r.metadata.name for r in rbac.list_cluster_role().items] == ["shoal"]

        custom = client.CustomObjectsApi(c)
        with pytest.raises(ApiException) as absent:
            custom.list_cluster_custom_object("example.io", "v1", "widgets")
        assert absent.value.status == 404                      # no CRD, no path
        client.ApiextensionsV1Api(c).create_custom_resource_definition(crd())
        custom.create_namespaced_custom_object("example.io", "v1", "demo", "widgets",
                                               {"apiVersion": "example.io/v1", "kind": "Widget",
                                                "metadata": {"name": "w"}, "spec": {"size": 1}})
        custom.patch_namespaced_custom_object_status("example.io", "v1", "demo", "widgets", "w",
                                                     {"status": {"ready": True}, "spec": {"size": 9}})
        widget = custom.get_namespaced_custom_object("example.io", "v1", "demo", "widgets", "w")
        assert widget["status"] == {"ready": True} and widget["spec"] == {"size": 1}   # /status writes status only
        method, url, headers, body, _ = c.param_serialize(
            "PATCH", "/apis/example.io/v1/namespaces/demo/widgets/w", body={"spec": {"size": 2}},
            header_params={"Content-Type": "application/strategic-merge-patch+json"})
        assert c.call_api(method, url, headers, body).status == 415   # no strategic merge on custom resources
        apps.delete_namespaced_daemon_set("shoal-node", "shoal-system")
        assert api.get("DaemonSet", "shoal-system", "shoal-node") is None
        client.ApiextensionsV1Api(c).delete_custom_resource_definition("widgets.example.io")
        with pytest.raises(ApiException) as uninstalled:
            custom.get_namespaced_custom_object("example.io", "v1", "demo", "widgets", "w")
        assert uninstalled.value.status == 404


def test_selectors_graceful_deletion_and_a_watch_without_a_version(api):
    api.add({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}},
             "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}})
    api.add({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "x", "labels": {"app": "db"}},
             "spec": {"nodeName": "n2", "containers": [{"name": "c"}]}})
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        assert [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items] == ["a"]
        assert [p.metadata.name for p in core.list_namespaced_pod("x", label_selector="app in (db,cache)").items] == ["b"]
        with pytest.raises(ApiException) as bad:
            core.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
        assert bad.value.status == 400
        stream = core.list_namespaced_pod("x", watch=True, _preload_content=False, timeout_seconds=1)
        core.delete_namespaced_pod("a", "x")
        events = [json.loads(line) for line in stream if line.strip()]
    seen = [(e["type"], e["object"]["metadata"]["name"], bool(e["object"]["metadata"].get("deletionTimestamp")))
            for e in events]
    assert seen == [("ADDED", "a", False), ("ADDED", "b", False), ("MODIFIED", "a", True), ("DELETED", "a", True)]


def test_injected_failures_and_a_kubeconfig(api, tmp_path):
    api.fail(429, retry_after=1, path="/namespaces", times=4)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(api.kubeconfig(tmp_path / "kubeconfig")),
                            client_configuration=configuration)
    with client.ApiClient(configuration) as c:
        core = client.CoreV1Api(c)
        with pytest.raises(ApiException) as busy:      # urllib3 honours Retry-After on a GET 3 times, then gives up
            core.list_namespace()
        assert busy.value.status == 429 and busy.value.headers["Retry-After"] == "1"
        assert len([r for r in api.requests if r.path == "/api/v1/namespaces"]) == 4
        api.fail(403, method="GET", path="/namespaces")
        with pytest.raises(ApiException) as forbidden:
            core.list_namespace()
        assert forbidden.value.status == 403 and json.loads(forbidden.value.body)["reason"] == "Forbidden"
        assert core.list_namespace().items == []


def test_bearer_tokens_when_asked_for():
    with KubeApiServer(tokens={"secret"}) as api:
        with api.api_client() as anonymous, pytest.raises(ApiException) as refused:
            client.CoreV1Api(anonymous).list_namespace()
        assert refused.value.status == 401
        with api.api_client(token="secret") as c:
            assert client.CoreV1Api(c).list_namespace().items == []


def test_a_watch_with_a_selector_sees_objects_enter_and_leave_it(api):
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        since = core.list_namespaced_config_map("x", label_selector="team=a").metadata.resource_version
        stream = core.list_namespaced_config_map("x", label_selector="team=a", watch=True, resource_version=since,
                                                 _preload_content=False, timeout_seconds=1)
        api.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "namespace": "x"}})
        api.modify({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "m", "namespace": "x", "labels": {"team": "a"}}})
        api.modify({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "m", "namespace": "x", "labels": {"team": "b"}}})
        events = [json.loads(line)["type"] for line in stream if line.strip()]
    assert events == ["ADDED", "DELETED"]


def test_pages_patches_apply_and_finalizers(api):
    for name in "abc":
        api.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "x"}})
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        first = core.list_namespaced_secret("x", limit=2)
        rest = core.list_namespaced_secret("x", limit=2, _continue=first.metadata._continue)
        assert [s.metadata.name for s in first.items + rest.items] == ["a", "b", "c"]

        def raw(method, path, body, content_type, **query):
            m, url, headers, payload, _ = c.param_serialize(method, path, body=body, query_params=list(query.items()),
                                                            header_params={"Content-Type": content_type})
            response = c.call_api(m, url, headers, payload)
            return response.status, json.loads(response.read())
        status, patched = raw("PATCH", "/api/v1/namespaces/x/secrets/a",
                              [{"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}],
                              "application/json-patch+json")
        assert status == 200 and patched["metadata"]["labels"] == {"k": "v"}
        status, _ = raw("PATCH", "/api/v1/namespaces/x/secrets/new", {"metadata": {"name": "new"}},
                        "application/apply-patch+yaml")
        assert status == 400                                  # apply needs a fieldManager
        status, applied = raw("PATCH", "/api/v1/namespaces/x/secrets/new",
                              {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "new"}, "type": "Opaque"},
                              "application/apply-patch+yaml", fieldManager="shoal")
        assert status == 200 and applied["type"] == "Opaque"   # apply creates

        api.add({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "held", "namespace": "x", "finalizers": ["example.com/keep"]}})
        core.delete_namespaced_config_map("held", "x")
        held = api.get("ConfigMap", "x", "held")
        assert held is not None and held["metadata"]["deletionTimestamp"]
        core.patch_namespaced_config_map("held", "x", {"metadata": {"finalizers": None}})
        assert api.get("ConfigMap", "x", "held") is None     # the last finalizer gone: so is the object


def test_discovery_names_what_is_served(api):
    with api.api_client() as c:
        groups = {g.name for g in client.ApisApi(c).get_api_versions().groups}
        assert {"apps", "gateway.networking.k8s.io", "apiextensions.k8s.io"} <= groups
        resources = {r.name: r for r in client.AppsV1Api(c).get_api_resources().resources}
        assert resources["daemonsets"].namespaced and "daemonsets/status" in resources
    api.served["gateway.networking.k8s.io"] = set()
    with api.api_client() as c:
        assert "gateway.networking.k8s.io" not in {g.name for g in client.ApisApi(c).get_api_versions().groups}


def test_no_product_code_imports_the_double():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    users = [str(p.relative_to(root)) for top in ("shoal", "control_plane", "node_agent", "ztunnel", "waypoint", "bench")
             for p in (root / top).rglob("*.py")
             if "support.kube" in p.read_text() or "from support" in p.read_text()]
    assert users == []
