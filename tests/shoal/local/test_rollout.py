"""`shoal local rollout restart ztunnel`, planned without a cluster: which pods, which names, what is refused."""

from __future__ import annotations

import pytest

from shoal.local import components
from shoal.local.layout import Layout
from shoal.local.rollout import NodeStep, RolloutError, component_name, plan

LAYOUT = Layout("plan")


def ztunnel(node: int, name: str | None = None, revision: int = 0) -> dict:
    return components.ztunnel_pod(LAYOUT, node, name, revision)


def test_the_ztunnel_pod_probes_its_own_readiness_path_and_drains_within_its_grace_period():
    pod = ztunnel(1, "ztunnel-node1-abc123")
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready/ztunnel-node1-abc123"
    drain = float(container["command"][container["command"].index("--drain-seconds") + 1])
    assert drain < pod["spec"]["terminationGracePeriodSeconds"]
    assert components.component_of(pod) == ("ztunnel", "node1")


def test_one_step_per_node_each_new_pod_beside_the_old_one():
    pods = [ztunnel(1), ztunnel(2, "ztunnel-node2-0f0f0f", 4), components.system_pod(LAYOUT, 1, "node-agent", ["x"])]
    names = iter(["aaaaaa", "bbbbbb"])
    assert plan(pods, 2, "ztunnel", suffix=lambda: next(names)) == [
        NodeStep(1, ("ztunnel-node1",), "ztunnel-node1-aaaaaa", 1),
        NodeStep(2, ("ztunnel-node2-0f0f0f",), "ztunnel-node2-bbbbbb", 5),
    ]
    assert plan(pods, 2, "ztunnel", only=[2], suffix=lambda: "cccccc") == [
        NodeStep(2, ("ztunnel-node2-0f0f0f",), "ztunnel-node2-cccccc", 5)]


def test_a_rollout_that_stopped_is_taken_up_where_it_stopped():
    """The surge pod of a rollout whose new pod never got ready: the newer revision is waited for, the older
    one stopped, nothing new started (whatever the names say)."""
    pods = [ztunnel(1, "ztunnel-node1-ffffff", 2), ztunnel(1, "ztunnel-node1-000000", 3)]
    assert plan(pods, 1, "ztunnel", suffix=lambda: "unused") == [
        NodeStep(1, ("ztunnel-node1-ffffff",), "ztunnel-node1-000000", 3, start=False)]


@pytest.mark.parametrize("pods, nodes, only, why", [
    ([ztunnel(1), ztunnel(1, "ztunnel-node1-abcdef", 1), ztunnel(1, "ztunnel-node1-abcdee", 2)], 1, None,
     "at most two"),
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


def test_the_access_log_of_a_node_reads_every_ztunnel_that_ran_there(tmp_path, monkeypatch):
    """After a rollout, node N's access log is the old ztunnel's and its successors', by time; not node N0's."""
    import json

    from shoal.local import observe

    monkeypatch.setattr(Layout, "logs_dir", property(lambda self: tmp_path))
    layout = Layout("obs")

    def write(pod: str, *stamps: str) -> None:
        lines = [json.dumps({"direction": "inbound", "timestamp": t, "pod": pod}) for t in stamps]
        layout.pod_log("shoal-system", pod, "ztunnel").write_text("\n".join(lines + ["not json"]) + "\n")
    write("ztunnel-node1", "2026-01-01T00:00:01Z", "2026-01-01T00:00:04Z")      # drained after its successor began
    write("ztunnel-node1-abc123", "2026-01-01T00:00:03Z", "2026-01-01T00:00:05Z")
    write("ztunnel-node10", "2026-01-01T00:00:02Z")
    assert [(r["pod"], r["timestamp"][-3:-1]) for r in observe.access_log(layout, 1)] == [
        ("ztunnel-node1", "01"), ("ztunnel-node1-abc123", "03"), ("ztunnel-node1", "04"),
        ("ztunnel-node1-abc123", "05")]
