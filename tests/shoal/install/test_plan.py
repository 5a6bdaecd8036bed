"""shoal.install.plan: what install and uninstall do, decided with no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.install import InstallError
from shoal.install.kustomize import render_objects
from shoal.install.plan import (
    CLEANUP, NODE_AGENT, Target, cleanup_daemonset, daemonset_done, plan_install, plan_uninstall, set_redirect,
    target_of,
)
from shoal.cli import build_parser

DAEMONSET = Path(__file__).resolve().parents[3] / "daemonset"
OBJECTS = render_objects(DAEMONSET)
CRDS = render_objects(DAEMONSET / "crds")


def agent_of(objects):
    (agent,) = [c for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == NODE_AGENT
                for c in o["spec"]["template"]["spec"]["containers"]]
    return agent


@pytest.mark.parametrize("obj, path", [
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shoal-system"}}, "/api/v1/namespaces/shoal-system"),
    ({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d", "namespace": "n"}},
     "/apis/apps/v1/namespaces/n/daemonsets/d"),
    ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}},
     "/apis/rbac.authorization.k8s.io/v1/clusterroles/r"),
    ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "g"}},
     "/apis/gateway.networking.k8s.io/v1/gatewayclasses/g"),
    ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"}},
     "/api/v1/namespaces/n/services/s"),
])
def test_targets_are_where_the_api_server_keeps_them(obj, path):
    assert target_of(obj).path == path


def test_every_kind_in_the_manifests_is_known():
    assert all(target_of(o) for o in OBJECTS + CRDS)


def test_an_unknown_kind_or_a_missing_namespace_is_refused_before_anything_is_applied():
    with pytest.raises(InstallError, match="kubectl apply -k"):
        plan_install(OBJECTS + [{"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}}],
                     CRDS, set(), with_crds=True)
    with pytest.raises(InstallError, match="names no namespace"):
        target_of({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})


def test_install_creates_only_the_crds_the_cluster_lacks():
    present = {"gateways.gateway.networking.k8s.io", "virtualservices.networking.istio.io"}
    plan = plan_install(OBJECTS, CRDS, present, with_crds=True)
    assert {c["metadata"]["name"] for c in plan.crds} == {c["metadata"]["name"] for c in CRDS} - present
    assert set(plan.crds_kept) == present
    assert plan.objects == tuple(OBJECTS)
    assert plan_install(OBJECTS, CRDS, set(), with_crds=False).crds == ()


def test_the_redirect_mode_is_the_node_agents_and_nothing_else_changes():
    objects = render_objects(DAEMONSET)
    set_redirect(objects, "ebpf")
    command = agent_of(objects)["command"]
    assert command[command.index("--redirect") + 1] == "ebpf"
    assert build_parser().parse_args(command[1:]).redirect == "ebpf"
    set_redirect(objects, "auto")
    assert objects == OBJECTS


def test_the_cleanup_daemonset_runs_the_agents_cleanup_with_the_agents_rights_on_the_agents_nodes():
    cleanup = cleanup_daemonset(OBJECTS)
    assert cleanup["metadata"]["name"] == CLEANUP
    agent_set = next(o for o in OBJECTS if o["kind"] == "DaemonSet" and o["metadata"]["name"] == NODE_AGENT)
    agent_pod, pod = agent_set["spec"]["template"]["spec"], cleanup["spec"]["template"]["spec"]
    for same in ("tolerations", "volumes", "hostNetwork", "hostPID", "serviceAccountName", "priorityClassName"):
        assert pod[same] == agent_pod[same], same
    (init,) = pod["initContainers"]
    agent = agent_of(OBJECTS)
    for same in ("image", "volumeMounts", "securityContext", "env"):
        assert init[same] == agent[same], same
    args = build_parser().parse_args(init["command"][1:])
    assert args.cleanup and args.source == "kube" and args.command == "node-agent"
    assert "readinessProbe" not in init and "livenessProbe" not in init   # the API refuses them on init containers
    (done,) = pod["containers"]
    assert done["command"] == ["sleep", "infinity"] and not done["securityContext"].get("privileged")
    assert cleanup["spec"]["selector"]["matchLabels"].items() <= cleanup["spec"]["template"]["metadata"]["labels"].items()
    assert OBJECTS == render_objects(DAEMONSET), "making the cleanup changed the manifests"


def test_the_cleanup_daemonset_validates():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(cleanup_daemonset(OBJECTS), "1.30.0", strict=True)


def test_uninstall_takes_the_agent_first_then_the_workloads_then_the_rest_and_the_namespace_last():
    plan = plan_uninstall(OBJECTS, {"gateways.gateway.networking.k8s.io"}, with_crds=False)
    assert plan.node_agent == Target("apps/v1", "DaemonSet", "daemonsets", "shoal-system", NODE_AGENT)
    kinds = [t.kind for t in plan.delete]
    assert [t.name for t in plan.delete[:2]] == ["shoal-ztunnel", "shoal-control-plane"]
    assert kinds[-1] == "Namespace"
    assert plan.node_agent not in plan.delete
    assert {t.path for t in plan.delete} | {plan.node_agent.path} == {target_of(o).path for o in OBJECTS}
    assert kinds.index("ValidatingAdmissionPolicy") > kinds.index("Deployment")
    assert plan.crds == ()
    assert plan_uninstall(OBJECTS, {"a.b.c"}, with_crds=True).crds == ("a.b.c",)


@pytest.mark.parametrize("status, generation, done", [
    ({"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2, "observedGeneration": 1}, 1, True),
    ({"desiredNumberScheduled": 2, "numberReady": 1, "updatedNumberScheduled": 2, "observedGeneration": 1}, 1, False),
    ({"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 1, "observedGeneration": 1}, 1, False),
    ({"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2, "observedGeneration": 1}, 2, False),
    ({}, 1, False),
    ({"desiredNumberScheduled": 0, "numberReady": 0, "updatedNumberScheduled": 0, "observedGeneration": 1}, 1, True),
])
def test_a_daemonset_is_done_when_every_pod_of_its_latest_spec_is_ready(status, generation, done):
    assert daemonset_done({"metadata": {"generation": generation}, "status": status}) is done
