"""`shoal install` and `shoal uninstall` against the Kubernetes API double, run as a user runs them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shoal.install.kustomize import render_objects
from shoal.install.plan import CLEANUP, target_of
from support.cli import shoal
from support.polling import eventually
from support.kube_api import KubeApiServer
from support.kube_resources import ResourceType

DAEMONSET = Path(__file__).resolve().parents[3] / "daemonset"
OBJECTS = render_objects(DAEMONSET)
CRDS = render_objects(DAEMONSET / "crds")
APPLY = "application/apply-patch+yaml"


# Built-in kinds the manifests hold that the double may not list yet; registered as its store allows.
ADMISSION = [ResourceType("admissionregistration.k8s.io", ("v1",), plural, kind, False, False)
             for plural, kind in (("validatingadmissionpolicies", "ValidatingAdmissionPolicy"),
                                  ("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding"))]


@pytest.fixture
def api():
    with KubeApiServer() as server:
        for rtype in ADMISSION:
            server.store.types.setdefault((rtype.group, rtype.plural), rtype)
        for crd in CRDS:  # "not installed" until a CRD is created, as on a bare cluster
            server.served[crd["spec"]["group"]] = set()
        yield server


@pytest.fixture
def kubeconfig(api, tmp_path):
    return str(api.kubeconfig(tmp_path / "kubeconfig"))


def stored(api, obj: dict) -> dict | None:
    return api.objects.get(target_of(obj).path)


def writes(api) -> list:
    return [r for r in api.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


def install(kubeconfig, *extra, check=True):
    return shoal("install", "--kubeconfig", kubeconfig, "--timeout", "120", *extra, check=check)


def test_install_applies_every_rendered_object_and_the_missing_crds(api, kubeconfig):
    result = install(kubeconfig)
    for obj in CRDS + OBJECTS:
        found = stored(api, obj)
        assert found is not None, f"{target_of(obj)} was not installed"
        assert found.get("spec") == obj.get("spec") and found.get("rules") == obj.get("rules")
    assert all(r.method == "PATCH" and r.headers.get("Content-Type") == APPLY and
               r.query.get("fieldManager") in ("shoal", ["shoal"]) for r in writes(api)), \
        "every write is a server-side apply by field manager shoal"
    assert "applied DaemonSet shoal-system/shoal-ztunnel" in result.stdout
    daemonset = stored(api, next(o for o in OBJECTS if o["metadata"]["name"] == "shoal-node-agent"))
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"] == "shoal:0.1.0"

    before = len(writes(api))
    install(kubeconfig)  # again: the same applies, nothing new, no error
    assert len(writes(api)) - before == len(OBJECTS)


def test_install_keeps_a_crd_the_cluster_has(api, kubeconfig):
    upstream = next(c for c in CRDS if c["metadata"]["name"] == "gateways.gateway.networking.k8s.io")
    theirs = {**upstream, "metadata": {"name": upstream["metadata"]["name"], "labels": {"from": "upstream"}}}
    api.add(theirs)
    result = install(kubeconfig)
    assert "kept CustomResourceDefinition gateways.gateway.networking.k8s.io" in result.stdout
    assert not [r for r in writes(api) if r.path.endswith("/gateways.gateway.networking.k8s.io")]
    assert stored(api, upstream)["metadata"]["labels"] == {"from": "upstream"}


def test_without_crds_on_a_cluster_that_lacks_them_install_refuses_before_applying_anything(api, kubeconfig):
    result = install(kubeconfig, "--no-crds", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "does not serve gateway.networking.k8s.io/v1" in result.stderr and "crds/README.md" in result.stderr
    assert writes(api) == []


def test_install_with_an_image_and_a_redirect_mode_applies_them(api, kubeconfig):
    api.add(next(c for c in CRDS if c["spec"]["names"]["kind"] == "GatewayClass"))
    install(kubeconfig, "--no-crds", "--image", "registry.example/shoal:7.0", "--redirect", "iptables")
    assert not [r for r in writes(api) if "customresourcedefinitions" in r.path]
    assert stored(api, next(o for o in OBJECTS if o["kind"] == "GatewayClass")) is not None
    agent = stored(api, next(o for o in OBJECTS if o["metadata"]["name"] == "shoal-node-agent"))
    (container,) = agent["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/shoal:7.0"
    assert container["command"][container["command"].index("--redirect") + 1] == "iptables"


def test_a_refusal_by_the_api_server_says_what_is_needed_and_stops(api, kubeconfig):
    api.fail(403, method="PATCH", path="/clusterroles/", times=10)
    result = install(kubeconfig, check=False)
    assert result.returncode == 1
    assert "cluster-admin" in result.stderr and "Traceback" not in result.stderr
    assert not any(stored(api, o) for o in OBJECTS if o["kind"] in ("DaemonSet", "Deployment")), \
        "install went on past the refusal"


def test_a_busy_api_server_is_asked_again_when_it_says_when(api, kubeconfig):
    api.fail(429, retry_after=0, method="PATCH", path="/daemonsets/", times=2)
    install(kubeconfig)
    ztunnel = next(o for o in OBJECTS if o["metadata"]["name"] == "shoal-ztunnel")
    assert stored(api, ztunnel) is not None
    assert len([r for r in writes(api) if r.path.endswith("/daemonsets/shoal-node-agent")]) == 3


def test_no_cluster_to_talk_to_is_a_clear_error(tmp_path):
    result = shoal("install", "--kubeconfig", str(tmp_path / "absent"), check=False)
    assert result.returncode == 1 and "--kubeconfig" in result.stderr and "Traceback" not in result.stderr


class DaemonSetController:
    """Plays the part of the kube-controller-manager and kubelets for the cleanup DaemonSet:
    on `nodes` nodes its pods come up ready (or never, with `ready=False`)."""

    def __init__(self, api, nodes: int, ready: bool = True) -> None:
        self.api, self.nodes, self.ready = api, nodes, ready
        self.seen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            cleanup = self.api.get("DaemonSet", "shoal-system", CLEANUP)
            if cleanup is None or cleanup.get("status"):
                continue
            self.seen.set()
            ready = self.nodes if self.ready else 0
            cleanup["status"] = {"desiredNumberScheduled": self.nodes, "numberReady": ready,
                                 "updatedNumberScheduled": self.nodes, "currentNumberScheduled": self.nodes,
                                 "numberMisscheduled": 0, "observedGeneration": cleanup["metadata"]["generation"]}
            self.api.modify(cleanup)


def waypoint_objects(api) -> tuple[dict, dict]:
    """A Deployment the waypoint controller made in `shop`, and one of the user's beside it."""
    api.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    made = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "waypoint", "namespace": "shop",
                         "labels": {"shoal.io/managed-by": "waypoint-controller"}},
            "spec": {"selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": []}}}}
    users = {**made, "metadata": {"name": "shop", "namespace": "shop", "labels": {"app": "shop"}}}
    return api.add(made), api.add(users)


def test_uninstall_cleans_every_node_before_the_ztunnels_go_then_removes_what_install_made(api, kubeconfig):
    install(kubeconfig)
    made, users = waypoint_objects(api)
    installed = len(writes(api))
    with DaemonSetController(api, nodes=3) as controller:
        result = shoal("uninstall", "--kubeconfig", kubeconfig, "--timeout", "120")
    assert controller.seen.is_set()
    agent, ztunnel, cleanup = (f"/apis/apps/v1/namespaces/shoal-system/daemonsets/{n}"
                               for n in ("shoal-node-agent", "shoal-ztunnel", CLEANUP))
    order = [(r.method, r.path) for r in writes(api)[installed:]]
    assert order.index(("DELETE", agent)) < order.index(("PATCH", cleanup)) < order.index(("DELETE", cleanup)) \
        < order.index(("DELETE", ztunnel)), "the cleanup must run after the agent stopped and before the ztunnels go"
    deletes = [path for method, path in order if method == "DELETE"]
    assert deletes[-1] == "/api/v1/namespaces/shoal-system"
    for obj in OBJECTS:
        assert stored(api, obj) is None, f"{target_of(obj)} is left"
    assert api.get("Deployment", "shop", "waypoint") is None, "the waypoint controller's Deployment is left"
    assert api.get("Deployment", "shop", "shop") is not None, "uninstall deleted a Deployment it did not make"
    for crd in CRDS:
        assert stored(api, crd) is not None, "CRDs (and the user's config) go only with --crds"
    assert "--crds" in result.stdout


def test_what_the_waypoint_controller_makes_while_it_stops_is_removed_too(api, kubeconfig):
    """The control plane's pod outlives its Deployment by its grace period, and may make a waypoint
    object in its last pass: uninstall waits for the pod to go before it removes them."""
    install(kubeconfig)
    api.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    api.add({"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "shoal-control-plane-1", "namespace": "shoal-system",
                          "labels": {"app": "shoal-control-plane"}},
             "spec": {"containers": [{"name": "control-plane", "image": "shoal"}]}})
    deployment = "/apis/apps/v1/namespaces/shoal-system/deployments/shoal-control-plane"

    def last_pass():
        eventually(lambda: any(r.method == "DELETE" and r.path == deployment for r in api.requests), timeout=120,
                   what="the control plane's Deployment to be deleted")
        time.sleep(0.5)
        api.add({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "waypoint", "namespace": "shop",
                              "labels": {"shoal.io/managed-by": "waypoint-controller"}}})
        api.delete("Pod", "shoal-system", "shoal-control-plane-1")

    stopping = threading.Thread(target=last_pass, daemon=True)
    stopping.start()
    with DaemonSetController(api, nodes=1):
        shoal("uninstall", "--kubeconfig", kubeconfig, "--timeout", "120")
    stopping.join()
    assert api.get("ServiceAccount", "shop", "waypoint") is None, "made in the last pass, and left"


def test_uninstall_again_or_on_a_cluster_without_shoal_harms_nothing(api, kubeconfig):
    install(kubeconfig)
    with DaemonSetController(api, nodes=1):
        shoal("uninstall", "--kubeconfig", kubeconfig, "--timeout", "120")
    api.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "shoal-node"}, "rules": []})       # left over from a run that stopped half-way
    before = len(api.requests)
    result = shoal("uninstall", "--kubeconfig", kubeconfig, "--timeout", "120")
    assert "no node to clean" in result.stdout
    assert api.get("ClusterRole", None, "shoal-node") is None
    assert not [r for r in api.requests[before:] if r.method == "PATCH"], "it made something on the way out"


def test_uninstall_with_crds_removes_only_the_crds_shoal_made(api, kubeconfig):
    upstream = next(c for c in CRDS if c["metadata"]["name"] == "httproutes.gateway.networking.k8s.io")
    api.add({**upstream, "metadata": {"name": upstream["metadata"]["name"]}})
    install(kubeconfig)
    with DaemonSetController(api, nodes=1):
        shoal("uninstall", "--kubeconfig", kubeconfig, "--crds", "--timeout", "120")
    for crd in CRDS:
        left = stored(api, crd) is not None
        assert left == (crd is upstream), f"{crd['metadata']['name']}: left={left}"


def test_a_cleanup_that_does_not_finish_stops_uninstall_with_the_ztunnels_still_serving(api, kubeconfig):
    install(kubeconfig)
    with DaemonSetController(api, nodes=2, ready=False) as controller:
        result = shoal("uninstall", "--kubeconfig", kubeconfig, "--timeout", "3", check=False)
    assert controller.seen.is_set()
    assert result.returncode == 1
    assert f"logs ds/{CLEANUP} -c cleanup" in result.stderr and "ztunnels are left running" in result.stderr
    ztunnel = next(o for o in OBJECTS if o["metadata"]["name"] == "shoal-ztunnel")
    assert stored(api, ztunnel) is not None, "the ztunnels went while pods' traffic was still captured"
