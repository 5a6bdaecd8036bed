"""The sans-IO enrollment decisions: table-driven, no sockets, no kernel."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from node_agent.model import PodTarget
from node_agent.reconcile import Plan, desired, plan, pod_info, pod_infos


def ns(name, labels=None, annotations=None):
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


def pod(name, namespace="demo", node="node1", uid=None, labels=None, annotations=None, host_network=False,
        phase="Running", ip="198.19.1.5", netns="/run/netns/x", deleting=False):
    meta = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "labels": labels or {},
            "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "hostNetwork": host_network, "serviceAccountName": "sa"},
            "status": {"phase": phase, "podIP": ip, "shoal": {"netns": netns, "cgroup": "/sys/fs/cgroup/x"}}}


# The enrollment rules themselves are tested in tests/shoal/test_contracts.py; these rows check
# that the agent applies them with each pod's own Namespace.
NAMESPACES = {"demo": ns("demo", labels={"shoal.io/dataplane-mode": "ambient"}), "plain": ns("plain")}


@pytest.mark.parametrize("namespace, enrolled", [
    (ns("a", annotations={"shoal.io/dataplane-mode": "ambient"}), True),
    (ns("a", labels={"shoal.io/dataplane-mode": "ambient"}), True),
    (ns("a", labels={"istio.io/dataplane-mode": "ambient"}), True),
    (ns("a", annotations={"istio.io/dataplane-mode": "ambient"}), True),  # as the control plane decides
    (ns("a", labels={"shoal.io/dataplane-mode": "none"}), False),
    (ns("a"), False),
])
def test_namespace_enrollment(namespace, enrolled):
    raw = pod("p", namespace="a")
    assert (raw["metadata"]["uid"] in desired(pod_infos([raw], {"a": namespace}), "node1")) is enrolled


@pytest.mark.parametrize("raw, wanted", [
    (pod("plain"), True),
    (pod("optout", annotations={"shoal.io/dataplane-mode": "none"}), False),
    (pod("optout-label", labels={"shoal.io/dataplane-mode": "none"}), False),
    (pod("istio-optout", labels={"istio.io/dataplane-mode": "none"}), False),
    (pod("host", host_network=True), False),
    (pod("pending", phase="Pending"), False),
    (pod("no-ip", ip=None), False),
    (pod("no-netns", netns=None), False),
    (pod("elsewhere", node="node2"), False),
    (pod("going", deleting=True), False),
    (pod("other-ns", namespace="plain"), False),
    (pod("pod-opt-in", namespace="plain", labels={"istio.io/dataplane-mode": "ambient"}), True),
])
def test_which_pods_are_wanted(raw, wanted):
    want = desired(pod_infos([raw], NAMESPACES), "node1")
    assert (raw["metadata"]["uid"] in want) is wanted


def t(uid, ip="198.19.1.5", netns="/run/netns/x"):
    return PodTarget(uid, "demo", uid, ip, netns, "/sys/fs/cgroup/x")


def test_plan_tells_the_ztunnel_first_and_installs_after_the_ack():
    want = {"a": t("a")}
    first = plan(want, installed={}, acked=[], in_flight=[], ztunnel_connected=True)
    assert first == Plan(tell_ztunnel=(t("a"),))
    waiting = plan(want, installed={}, acked=[], in_flight=["a"], ztunnel_connected=True)
    assert waiting == Plan()
    acked = plan(want, installed={}, acked=["a"], in_flight=[], ztunnel_connected=True)
    assert acked == Plan(install=(t("a"),))
    done = plan(want, installed={"a": t("a")}, acked=["a"], in_flight=[], ztunnel_connected=True)
    assert not done


def test_without_a_ztunnel_nothing_new_is_redirected_and_nothing_in_place_is_removed():
    assert plan({"a": t("a")}, installed={}, acked=[], in_flight=[], ztunnel_connected=False) == Plan()
    # A pod redirected before an agent restart stays redirected while the ztunnel is away.
    assert plan({"a": t("a")}, installed={"a": t("a")}, acked=[], in_flight=[], ztunnel_connected=False) == Plan()


def test_leaving_removes_redirection_and_tells_the_ztunnel():
    p = plan({}, installed={"a": t("a")}, acked=["a"], in_flight=[], ztunnel_connected=True)
    assert p == Plan(remove=(t("a"),), untell_ztunnel=("a",))
    # Even with no ztunnel connected, the redirection goes (the next replay omits the pod).
    assert plan({}, installed={"a": t("a")}, acked=[], in_flight=[], ztunnel_connected=False) == Plan(remove=(t("a"),))


def test_a_new_sandbox_is_installed_again():
    p = plan({"a": t("a", netns="/run/netns/new")}, installed={"a": t("a")}, acked=["a"], in_flight=[],
             ztunnel_connected=True)
    assert p.install == (t("a", netns="/run/netns/new"),)


def test_a_pod_in_a_new_sandbox_is_told_to_the_ztunnel_anew_and_installed_there_once_acked():
    """The ztunnel serves a pod in the netns it was told of, and keeps a pod it holds when told again: a new
    sandbox (netns) was installed, but the ztunnel went on serving the old one, so the pod's captured traffic
    found no ztunnel until the ztunnel reconnected."""
    old, new = t("a"), t("a", netns="/run/netns/new")
    p = plan({"a": new}, installed={"a": old}, acked=["a"], in_flight=[], ztunnel_connected=True, told={"a": old})
    # captured in the new netns at once (refused there, not around the mesh, until served), let go, told anew
    assert p == Plan(tell_ztunnel=(new,), install=(new,), untell_ztunnel=("a",))
    assert plan({"a": new}, {"a": new}, [], ["a"], True, {"a": new}) == Plan()  # the new one in flight: wait
    assert plan({"a": new}, {"a": new}, ["a"], [], True, {"a": new}) == Plan()  # acked there: done


uids = st.sets(st.sampled_from("abcdef"))


@given(want=uids, installed=uids, acked=uids, in_flight=uids, connected=st.booleans())
def test_plan_invariants(want, installed, acked, in_flight, connected):
    want_t = {u: t(u) for u in want}
    p = plan(want_t, {u: t(u) for u in installed}, acked, in_flight, connected)
    told = {x.uid for x in p.tell_ztunnel}
    assert told <= want and not told & (acked | in_flight)
    assert {x.uid for x in p.install} <= want & acked
    assert {x.uid for x in p.remove} == installed - want
    assert not set(p.untell_ztunnel) & want
    if not connected:
        assert not p.tell_ztunnel and not p.untell_ztunnel
    # Carrying the plan out and acking everything in flight converges: the next plan is empty.
    now_acked = (acked | told | in_flight) - set(p.untell_ztunnel)
    after = plan(want_t, {u: t(u) for u in want & now_acked}, now_acked, set(), connected)
    if connected:
        assert not after.tell_ztunnel and not after.remove and not after.install


def test_a_pod_with_a_bad_address_is_skipped_with_a_reason_and_harms_no_other():
    bad = pod_info(pod("bad", ip="198.19.1.300"), NAMESPACES["demo"])
    mapped = pod_info(pod("mapped", ip="::ffff:198.19.1.6"), NAMESPACES["demo"])
    good = pod_info(pod("good"), NAMESPACES["demo"])
    from node_agent.reconcile import problems
    assert set(desired([bad, mapped, good], "node1")) == {"uid-good"}
    found = problems([bad, mapped, good], "node1")
    assert set(found) == {"uid-bad", "uid-mapped"}
    assert found["uid-bad"].startswith("status.podIP or podIPs: '198.19.1.300' does not appear to be an IPv4 or IPv6")
    assert "v4-mapped" in found["uid-mapped"] and "198.19.1.6" in found["uid-mapped"]


@pytest.mark.parametrize("status, ip, ips", [
    ({"podIP": "198.19.1.5"}, "198.19.1.5", ("198.19.1.5",)),
    ({"podIP": "198.19.1.5", "podIPs": [{"ip": "198.19.1.5"}, {"ip": "fd73:686f:616c:1:0::5"}]},
     "198.19.1.5", ("198.19.1.5", "fd73:686f:616c:1::5")),
    ({"podIP": "fd73:686f:616c:1::5", "podIPs": [{"ip": "fd73:686f:616c:1::5"}, {"ip": "198.19.1.5"}]},
     "fd73:686f:616c:1::5", ("fd73:686f:616c:1::5", "198.19.1.5")),
    ({"podIPs": [{"ip": "fd73:686f:616c:1::5"}]}, "fd73:686f:616c:1::5", ("fd73:686f:616c:1::5",)),
])
def test_every_address_of_podIPs_reaches_the_target_primary_first_in_one_text_form(status, ip, ips):
    raw = pod("web")
    raw["status"] = {**{k: v for k, v in raw["status"].items() if k != "podIP"}, **status}
    target = desired([pod_info(raw, NAMESPACES["demo"])], "node1")["uid-web"]
    assert (target.ip, target.ips) == (ip, ips)
    assert target.ipv6 == next((a for a in ips if ":" in a), None)
    assert target.ipv4 == next((a for a in ips if "." in a), None)


def test_a_pod_that_gains_an_ipv6_address_is_installed_again():
    """A target is compared whole: the new family's capture must go in (and its refusal come out)."""
    before = desired([pod_info(pod("web"), NAMESPACES["demo"])], "node1")
    raw = pod("web")
    raw["status"]["podIPs"] = [{"ip": "198.19.1.5"}, {"ip": "fd73:686f:616c:1::5"}]
    after = desired([pod_info(raw, NAMESPACES["demo"])], "node1")
    p = plan(after, before, {"uid-web"}, set(), True)
    assert p.install == (after["uid-web"],)


def test_a_pod_that_gains_an_address_is_sent_to_the_ztunnel_again():
    """The ztunnel reads a pod's addresses when it is told of it: a new one would get no inbound service."""
    before = desired([pod_info(pod("web"), NAMESPACES["demo"])], "node1")
    raw = pod("web")
    raw["status"]["podIPs"] = [{"ip": "198.19.1.5"}, {"ip": "fd73:686f:616c:1::5"}]
    after = desired([pod_info(raw, NAMESPACES["demo"])], "node1")
    told_before = dict(before)
    p = plan(after, before, {"uid-web"}, set(), True, told_before)
    assert p.tell_ztunnel == (after["uid-web"],) and p.install == (after["uid-web"],)
    # Not while the first message is in flight, nor without a ztunnel; and not again once told.
    assert plan(after, before, {"uid-web"}, {"uid-web"}, True, told_before).tell_ztunnel == ()
    assert plan(after, before, {"uid-web"}, set(), False, told_before).tell_ztunnel == ()
    told_after = dict(after)
    assert plan(after, after, {"uid-web"}, set(), True, told_after) == Plan()
    # Unchanged addresses: an acked pod is not sent again.
    assert plan(before, before, {"uid-web"}, set(), True, told_before) == Plan()
