"""`shoal local rollout restart ztunnel`, planned without a cluster: which pods, which names, what is refused."""

from __future__ import annotations

import pytest

from shoal.local import components
from shoal.local.layout import Layout
from shoal.local.rollout import NodeStep, RolloutError, component_name, plan

LAYOUT = Layout("plan")


def ztunnel(node: int, name: str | None = None) -> dict:
    return components.ztunnel_pod(LAYOUT, node, name)


def test_the_ztunnel_pod_probes_its_own_readiness_path_and_drains_within_its_grace_period():
    pod = ztunnel(1, "ztunnel-node1-abc123")
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready/ztunnel-node1-abc123"
    drain = float(container["command"][container["command"].index("--drain-seconds") + 1])
    assert drain < pod["spec"]["terminationGracePeriodSeconds"]
    assert components.component_of(pod) == ("ztunnel", "node1")


def test_one_step_per_node_each_new_pod_beside_the_old_one():
    pods = [ztunnel(1), ztunnel(2, "ztunnel-node2-0f0f0f"), components.system_pod(LAYOUT, 1, "node-agent", ["x"])]
    names = iter(["aaaaaa", "bbbbbb"])
    assert plan(pods, 2, "ztunnel", suffix=lambda: next(names)) == [
        NodeStep(1, ("ztunnel-node1",), "ztunnel-node1-aaaaaa"),
        NodeStep(2, ("ztunnel-node2-0f0f0f",), "ztunnel-node2-bbbbbb"),
    ]
    assert plan(pods, 2, "ztunnel", only=[2], suffix=lambda: "cccccc") == [
        NodeStep(2, ("ztunnel-node2-0f0f0f",), "ztunnel-node2-cccccc")]


@pytest.mark.parametrize("pods, nodes, only, why", [
    ([ztunnel(1), ztunnel(1, "ztunnel-node1-abcdef")], 1, None, "rollout is under way"),
    ([ztunnel(1)], 1, [3], "node3 is not a node of this cluster"),
])
def test_a_plan_that_cannot_hold_is_refused_saying_why(pods, nodes, only, why):
    with pytest.raises(RolloutError, match=why):
        plan(pods, nodes, "ztunnel", only)


@pytest.mark.parametrize("word", ["ztunnel", "daemonset/ztunnel", "ds/shoal-ztunnel"])
def test_kubectl_spellings_of_the_ztunnel(word):
    assert component_name(word) == "ztunnel"


@pytest.mark.parametrize("word, why", [("node-agent", "restart in place"), ("deployment/ztunnel", "a deployment"),
                                        ("daemonset/waypoint", "cannot be rolled out")])
def test_other_targets_are_refused(word, why):
    with pytest.raises(RolloutError, match=why):
        component_name(word)


def test_up_does_not_start_a_second_ztunnel_where_a_rollout_renamed_it():
    system = [ztunnel(1), ztunnel(2), components.system_pod(LAYOUT, 1, "node-agent", ["x"])]
    existing = [ztunnel(1, "ztunnel-node1-abcdef"), ztunnel(2), system[2]]
    kept = components.not_replaced(system, existing)
    assert [p["metadata"]["name"] for p in kept] == ["ztunnel-node2", "node-agent-node1"]
    assert components.not_replaced(system, []) == system          # a fresh cluster gets everything
