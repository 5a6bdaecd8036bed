"""What the CNI calls say about sandboxes, merged into the source's pods (node_agent/sandboxes.py), and the
requests on the CNI socket (node_agent/cni_server.py). No sockets: dicts and bytes."""

from __future__ import annotations

import json

import pytest

from node_agent import reconcile
from node_agent.cni_server import CniReply, CniRequest, CniRequestError
from node_agent.sandboxes import Sandbox, enrollment_view, overlay

NAMESPACES = {"demo": {"metadata": {"name": "demo", "labels": {"shoal.io/dataplane-mode": "ambient"}}},
              "plain": {"metadata": {"name": "plain"}}}


def pod(namespace, name, uid, *, phase=None, ip=None, netns=None, labels=None):
    status = {}
    if phase:
        status["phase"] = phase
    if ip:
        status["podIP"] = ip
    if netns:
        status["shoal"] = {"netns": netns, "cgroup": "/sys/fs/cgroup/unified/pod"}
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid, "labels": labels or {}},
            "spec": {"nodeName": "node1"}, "status": status}


def want(pods, sandboxes=None, released=()):
    merged = overlay(pods, sandboxes or {}, released, "node1")
    return reconcile.desired(reconcile.pod_infos(merged.values(), NAMESPACES), "node1")


def test_a_pending_pod_with_a_cni_sandbox_is_wanted_with_the_cni_netns_and_address():
    pods = {"demo/web": pod("demo", "web", "u1", phase="Pending")}
    assert want(pods) == {}
    target = want(pods, {"u1": Sandbox("u1", "demo", "web", "/run/netns/cni-1", "198.19.1.5", "c1")})["u1"]
    assert (target.netns, target.ip, target.cgroup) == ("/run/netns/cni-1", "198.19.1.5", None)


def test_a_cni_sandbox_gives_a_pod_without_api_addresses_both_families_primary_first():
    pods = {"demo/web": pod("demo", "web", "u1", phase="Pending")}
    sandbox = Sandbox("u1", "demo", "web", "/run/netns/cni-1", "198.19.1.5", "c1",
                      ips=("198.19.1.5", "fd73:686f:616c:1::5"))
    target = want(pods, {"u1": sandbox})["u1"]
    assert (target.ip, target.ipv6) == ("198.19.1.5", "fd73:686f:616c:1::5")
    # The API's primary stays first when the API knows it before the pod's podIPs are written.
    pods = {"demo/web": pod("demo", "web", "u1", phase="Running", ip="198.19.1.5")}
    sandbox = Sandbox("u1", "demo", "web", "/run/netns/cni-1", "fd73:686f:616c:1::5", "c1",
                      ips=("fd73:686f:616c:1::5", "198.19.1.5"))
    assert want(pods, {"u1": sandbox})["u1"].ips == ("198.19.1.5", "fd73:686f:616c:1::5")


def test_the_cni_netns_wins_over_a_discovered_one_and_the_api_address_and_cgroup_stay():
    pods = {"demo/web": pod("demo", "web", "u1", phase="Running", ip="198.19.1.5", netns="/proc/42/ns/net")}
    target = want(pods, {"u1": Sandbox("u1", "demo", "web", "/run/netns/cni-2", "198.19.1.9")})["u1"]
    assert (target.netns, target.ip, target.cgroup) == ("/run/netns/cni-2", "198.19.1.5", "/sys/fs/cgroup/unified/pod")


def test_a_pod_the_source_has_not_shown_yet_is_decided_by_its_namespace():
    sandboxes = {"u1": Sandbox("u1", "demo", "web", "/run/netns/a", "198.19.1.5"),
                 "u2": Sandbox("u2", "plain", "web", "/run/netns/b", "198.19.1.6")}
    assert set(want({}, sandboxes)) == {"u1"}


def test_a_released_sandbox_keeps_its_pod_out_until_a_new_add():
    pods = {"demo/web": pod("demo", "web", "u1", phase="Running", ip="198.19.1.5", netns="/run/netns/old")}
    assert set(want(pods)) == {"u1"}
    assert want(pods, released={"u1"}) == {}
    assert set(want(pods, {"u1": Sandbox("u1", "demo", "web", "/run/netns/new", None)}, released={"u1"})) == {"u1"}


def test_a_finished_pod_is_not_brought_back_by_its_sandbox():
    pods = {"demo/job": pod("demo", "job", "u1", phase="Succeeded", ip="198.19.1.5")}
    assert want(pods, {"u1": Sandbox("u1", "demo", "job", "/run/netns/a", "198.19.1.5")}) == {}


def test_the_enrollment_view_lists_enrolled_namespaces_and_the_pods_that_decide_otherwise():
    pods = [pod("demo", "web", "u1"), pod("demo", "out", "u2", labels={"shoal.io/dataplane-mode": "none"}),
            pod("plain", "in", "u3", labels={"istio.io/dataplane-mode": "ambient"}), pod("plain", "web", "u4")]
    infos = reconcile.pod_infos(pods, NAMESPACES)
    assert enrollment_view(infos, NAMESPACES, "node1") == {"namespaces": ["demo"],
                                                           "pods": {"demo/out": False, "plain/in": True}}
    assert enrollment_view(infos, NAMESPACES, "node2")["pods"] == {}


def line(**fields):
    base = {"command": "ADD", "container_id": "c1", "netns": "/run/netns/x", "namespace": "demo", "name": "web",
            "uid": "u1", "ips": ["fd73:686f:616c:1::5", "198.19.1.5"]}
    base.update(fields)
    return json.dumps(base).encode() + b"\n"


def test_a_request_parses_into_a_frozen_request_with_its_addresses_of_both_families():
    request = CniRequest.parse(line())
    assert request == CniRequest("ADD", "c1", "/run/netns/x", "demo", "web", "u1",
                                 ("fd73:686f:616c:1::5", "198.19.1.5"))
    assert request.addresses == ("fd73:686f:616c:1::5", "198.19.1.5") and request.key == "demo/web"
    odd = CniRequest.parse(line(ips=["not-an-address", "FD73:686F:616C:1:0:0:0:5", "198.19.1.5"]))
    assert odd.addresses == ("fd73:686f:616c:1::5", "198.19.1.5")
    assert CniRequest.parse(line(command="DEL", netns="")).netns == ""  # DEL may come after the netns is gone


@pytest.mark.parametrize("raw, says", [
    (b"[1]\n", "not a JSON object"),
    (b"{\n", "not JSON"),
    (line(command="STATUS"), "unknown command"),
    (line(namespace=""), "K8S_POD_NAMESPACE"),
    (line(netns="relative/path"), "not an absolute path"),
    (line(ips="198.19.1.5"), "ips must be a list"),
    (line(uid=7), "must be strings"),
])
def test_a_bad_request_is_refused_saying_what(raw, says):
    with pytest.raises(CniRequestError, match=says):
        CniRequest.parse(raw)


def test_a_reply_is_one_json_line():
    assert json.loads(CniReply(False, True, "why").encode()) == {"ok": False, "enrolled": True, "error": "why"}
    assert CniReply(True).encode().endswith(b"\n")
