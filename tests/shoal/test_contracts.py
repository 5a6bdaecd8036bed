"""shoal.contracts: the numbers DESIGN.md fixes, and the one enrollment decision.

The enrollment table covers every combination of shoal's and Istio's
dataplane-mode key, as a label and as an annotation, set to `ambient`,
`none`, an unknown value or nothing, on the Namespace and on the Pod, with
and without hostNetwork. The expected answer is computed here from the
precedence that `enrollment`'s docstring writes down, not by calling it.
Then the control plane (translator: HBONE or not) and the node agent
(reconcile: capture or not) are fed the same objects and must agree with it.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from shoal import contracts
from shoal.contracts import Enrollment, enrollment

SHOAL, ISTIO = "shoal.io/dataplane-mode", "istio.io/dataplane-mode"

# The places a dataplane-mode can be set on one object, in the documented order of precedence.
PLACES = (("labels", SHOAL), ("annotations", SHOAL), ("labels", ISTIO), ("annotations", ISTIO))
VALUES = (None, "ambient", "none", "sidecar")   # unset, enroll, opt out, unknown
SETTINGS = list(itertools.product(VALUES, repeat=len(PLACES)))   # one value (or none) per place


def metadata(values: tuple, name: str = "x", namespace: str | None = None) -> dict:
    meta: dict = {"name": name, "labels": {}, "annotations": {}}
    if namespace is not None:
        meta["namespace"] = namespace
    for (field, key), value in zip(PLACES, values):
        if value is not None:
            meta[field][key] = value
    return meta


def namespace_object(values: tuple, name: str = "ns") -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(values, name)}


def pod_object(values: tuple, host_network: bool = False, name: str = "p", namespace: str = "ns",
               uid: str = "uid-p", ip: str = "198.19.1.5") -> dict:
    meta = metadata(values, name, namespace)
    meta["uid"] = uid
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": "node1", "hostNetwork": host_network, "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "shoal": {"netns": "/run/netns/p"}}}


def effective(values: tuple) -> tuple[str, str] | None:
    """The documented rule for one object: the first place, in PLACES order, that is set."""
    for (field, key), value in zip(PLACES, values):
        if value is not None:
            return f"{field[:-1]} {key}", value
    return None


def expected(namespace_values: tuple, pod_values: tuple, host_network: bool) -> tuple[bool, str | None]:
    """(enrolled, the place that decided it, or None when nothing did), from the documented precedence."""
    if host_network:
        return False, "hostNetwork"
    own = effective(pod_values)
    if own is not None and own[1] in ("none", "ambient"):
        return own[1] == "ambient", f"the pod's {own[0]}"
    inherited = effective(namespace_values)
    if inherited is not None and inherited[1] == "ambient":
        return True, f"the namespace's {inherited[0]}"
    return False, None


def describe(namespace_values: tuple, pod_values: tuple, host_network: bool) -> str:
    def one(values):
        return ", ".join(f"{field[:-1]} {key}={value}" for (field, key), value in zip(PLACES, values)
                         if value is not None) or "nothing"
    return f"namespace: {one(namespace_values)}; pod: {one(pod_values)}" + ("; hostNetwork" if host_network else "")


@pytest.mark.parametrize("host_network", [False, True])
def test_every_combination_of_label_and_annotation_follows_the_documented_precedence(host_network):
    wrong = []
    for namespace_values, pod_values in itertools.product(SETTINGS, SETTINGS):
        decision = enrollment(namespace_object(namespace_values), pod_object(pod_values, host_network))
        enrolled, decided_by = expected(namespace_values, pod_values, host_network)
        if decision.enrolled is not enrolled or (decided_by is not None and decided_by not in decision.reason):
            wrong.append(f"{describe(namespace_values, pod_values, host_network)}: got {decision}, "
                         f"expected enrolled={enrolled} decided by {decided_by}")
    assert not wrong, f"{len(wrong)} of {len(SETTINGS) ** 2} combinations differ, e.g.:\n" + "\n".join(wrong[:10])


def ns(**places) -> dict:
    return {"metadata": {"name": "ns", "labels": places.get("labels", {}), "annotations": places.get("annotations", {})}}


def pod(host_network=False, **places) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "labels": places.get("labels", {}),
                         "annotations": places.get("annotations", {})},
            "spec": {"hostNetwork": host_network}}


@pytest.mark.parametrize("namespace, the_pod, enrolled, why", [
    (ns(annotations={ISTIO: "ambient"}), pod(), True,
     "Istio's key counts as an annotation on a Namespace too (the control plane and the agent once disagreed)"),
    (ns(labels={ISTIO: "ambient"}), pod(), True, "Istio's label, as in Istio"),
    (ns(annotations={SHOAL: "ambient"}), pod(), True, "shoal's annotation, as DESIGN.md shows it"),
    (ns(labels={SHOAL: "ambient"}), pod(annotations={ISTIO: "none"}), False, "a pod opts out with Istio's key too"),
    (ns(labels={SHOAL: "none"}), pod(labels={ISTIO: "ambient"}), True,
     "the pod's own setting beats its namespace's"),
    (ns(), pod(labels={SHOAL: "ambient"}, annotations={SHOAL: "none"}), True,
     "on one key, the label beats the annotation"),
    (ns(), pod(labels={ISTIO: "none"}, annotations={SHOAL: "ambient"}), True,
     "shoal's key beats Istio's, whatever the place"),
    (ns(labels={SHOAL: "ambient"}), pod(labels={SHOAL: "sidecar"}), True,
     "an unknown value on the pod leaves the decision to the namespace"),
    (ns(labels={SHOAL: "ambient"}), pod(labels={SHOAL: "sidecar", ISTIO: "none"}), True,
     "the unknown value is still the pod's setting: Istio's key behind it is not read"),
    (ns(labels={SHOAL: "sidecar", ISTIO: "ambient"}), pod(), False,
     "the namespace's first setting is unknown, so it does not enroll; Istio's key behind it is not read"),
    (ns(labels={SHOAL: "", ISTIO: "ambient"}), pod(), True, "an empty value counts as unset"),
    (ns(labels={SHOAL: " ambient "}), pod(), True, "surrounding blanks are not part of the value"),
    (ns(labels={SHOAL: "Ambient"}), pod(), False, "values are case-sensitive, as in Istio"),
    (ns(labels={SHOAL: "ambient"}), pod(host_network=True), False, "hostNetwork pods share the node's address"),
    (ns(), pod(host_network=True, labels={SHOAL: "ambient"}), False, "not even when they ask"),
    (None, pod(labels={SHOAL: "ambient"}), True, "a pod whose namespace is unknown still has its own say"),
    (None, pod(), False, "and without one it stays out"),
])
def test_hand_written_rows(namespace, the_pod, enrolled, why):
    decision = enrollment(namespace, the_pod)
    assert decision.enrolled is enrolled, why
    assert bool(decision) is enrolled and decision.reason


def test_the_reason_names_what_decided():
    assert enrollment(ns(annotations={ISTIO: "ambient"}), pod()).reason == \
        "the namespace's annotation istio.io/dataplane-mode is ambient"
    assert enrollment(ns(labels={SHOAL: "ambient"}), pod(annotations={SHOAL: "none"})).reason == \
        "the pod's annotation shoal.io/dataplane-mode is none"
    assert "unknown dataplane-mode" in enrollment(ns(labels={SHOAL: "sidecar"}), pod()).reason
    assert enrollment(ns(), pod()) == Enrollment(False, "neither the pod nor its namespace sets dataplane-mode ambient")


def test_namespace_ambient_is_the_namespace_half_of_the_decision():
    for values in SETTINGS:
        assert contracts.namespace_ambient(namespace_object(values)) is enrollment(
            namespace_object(values), pod_object((None,) * len(PLACES))).enrolled, values


def test_setting_reads_keys_in_order_and_labels_before_annotations():
    meta = {"labels": {ISTIO: "none"}, "annotations": {SHOAL: "ambient", ISTIO: "x"}}
    assert contracts.setting(meta, contracts.DATAPLANE_MODE_KEYS) == (f"annotation {SHOAL}", "ambient")
    assert contracts.setting(meta, (ISTIO,)) == (f"label {ISTIO}", "none")
    assert contracts.setting(None, contracts.DATAPLANE_MODE_KEYS) is None


# -- the control plane and the node agent decide the same ------------------------------

def control_plane_hbone(namespaces: list[dict], pods: list[dict]) -> set[str]:
    """uids of the pods the control plane publishes as HBONE workloads."""
    from control_plane.translate import Translator
    from shoal.model import Protocol, ResourceType
    from shoal.store import Event

    translator = Translator()
    translator.apply_events(Event("ADDED", obj) for obj in [*namespaces, *pods])   # as the feed gives a list
    translator.flush()
    return {w.uid for w in translator.snapshot()[ResourceType.WORKLOAD].values() if w.protocol == Protocol.HBONE}


def node_agent_captures(namespaces: list[dict], pods: list[dict]) -> set[str]:
    """uids of the pods the node agent hands to the ztunnel and redirects."""
    from node_agent import reconcile

    by_name = {n["metadata"]["name"]: n for n in namespaces}
    return set(reconcile.desired(reconcile.pod_infos(pods, by_name), "node1"))


def every_combination(host_network: bool) -> tuple[list[dict], list[dict], dict[str, bool]]:
    """A namespace per namespace setting, in each a pod per pod setting; and the documented answer per uid."""
    namespaces, pods, answer = [], [], {}
    for i, namespace_values in enumerate(SETTINGS):
        namespaces.append(namespace_object(namespace_values, f"ns{i}"))
        for j, pod_values in enumerate(SETTINGS):
            uid = f"uid-{i}-{j}"
            pods.append(pod_object(pod_values, host_network, f"p{j}", f"ns{i}", uid, ip=f"10.{i}.{j}.1"))
            answer[uid] = expected(namespace_values, pod_values, host_network)[0]
    return namespaces, pods, answer


@pytest.mark.parametrize("host_network", [False, True])
def test_the_control_plane_and_the_node_agent_agree_on_every_combination(host_network):
    namespaces, pods, answer = every_combination(host_network)
    documented = {uid for uid, enrolled in answer.items() if enrolled}
    hbone = control_plane_hbone(namespaces, pods)
    captured = node_agent_captures(namespaces, pods)
    assert hbone == captured, (f"published as HBONE but not captured: {sorted(hbone - captured)[:10]}; "
                               f"captured but not HBONE: {sorted(captured - hbone)[:10]}")
    assert captured == documented


def test_the_bug_they_disagreed_on():
    """A Namespace ANNOTATED istio.io/dataplane-mode: ambient: HBONE, and captured."""
    namespace = namespace_object((None, None, None, "ambient"), "shop")
    the_pod = pod_object((None,) * len(PLACES), namespace="shop", uid="uid-shop-p")
    assert control_plane_hbone([namespace], [the_pod]) == {"uid-shop-p"}
    assert node_agent_captures([namespace], [the_pod]) == {"uid-shop-p"}


def test_a_terminating_pod_leaves_the_mesh_in_the_node_agent():
    namespace = namespace_object((None, "ambient", None, None), "shop")
    going = pod_object((None,) * len(PLACES), namespace="shop", uid="uid-going")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert node_agent_captures([namespace], [going]) == set()


# -- the numbers DESIGN.md fixes ---------------------------------------------------------

def test_the_ports_mark_and_probe_source_are_the_documented_ones():
    assert (contracts.OUTBOUND_PORT, contracts.INBOUND_PLAINTEXT_PORT, contracts.HBONE_PORT) == (15001, 15006, 15008)
    assert (contracts.ADMIN_PORT, contracts.METRICS_PORT, contracts.READINESS_PORT) == (15000, 15020, 15021)
    assert contracts.NODE_AGENT_PORT == 15022
    assert (contracts.CONTROL_PLANE_GRPC_PORT, contracts.CONTROL_PLANE_HTTP_PORT) == (15012, 15014)
    assert contracts.MARK == 0x539
    assert contracts.PROBE_SOURCE == "169.254.7.127"
    assert contracts.DATAPLANE_MODE_KEYS == (SHOAL, ISTIO)
    assert contracts.USE_WAYPOINT_KEYS == ("shoal.io/use-waypoint", "istio.io/use-waypoint")


def test_the_kubernetes_manifests_use_the_contracts_ports_and_keys():
    """daemonset/ is YAML and cannot import the numbers: it is held to them here."""
    daemonset = Path(__file__).resolve().parents[2] / "daemonset"
    objects = [d for path in sorted(daemonset.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    expected = {  # container -> (its declared ports, its readiness port)
        "node-agent": ({contracts.NODE_AGENT_PORT}, contracts.NODE_AGENT_PORT),
        # hostNetwork and upgraded by a surge: it declares no port (each would be a host port and keep the
        # surge pod off the node), and its readiness probe is a command naming the pod (see ztunnel.yaml)
        "ztunnel": (set(), contracts.READINESS_PORT),
        "control-plane": ({contracts.CONTROL_PLANE_GRPC_PORT, contracts.CONTROL_PLANE_HTTP_PORT},
                          contracts.CONTROL_PLANE_HTTP_PORT),
        # non-root: its listeners for the Service's 80 and 443 are 8080 and 8443
        "ingress-gateway": ({8080, 8443, contracts.INGRESS_METRICS_PORT}, contracts.INGRESS_READINESS_PORT),
    }
    seen = set()
    for obj in objects:
        if obj["kind"] not in ("DaemonSet", "Deployment"):
            continue
        template = obj["spec"]["template"]
        assert template["metadata"]["labels"].get(contracts.DATAPLANE_MODE) == contracts.NONE
        for container in template["spec"]["containers"]:
            ports, ready = expected[container["name"]]
            seen.add(container["name"])
            assert {p["containerPort"] for p in container.get("ports", [])} == ports, container["name"]
            probe = container["readinessProbe"]
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] == ready, container["name"]
            else:
                assert f":{ready}/" in " ".join(probe["exec"]["command"]), container["name"]
            in_command = {int(port) for port in re.findall(r":(\d+)\b", " ".join(container["command"]))}
            # only the control plane's ports, and the ingress gateway's LISTEN:GATEWAY pairs (8080:80, 8443:443)
            assert in_command <= {contracts.CONTROL_PLANE_GRPC_PORT, contracts.CONTROL_PLANE_HTTP_PORT, 80, 443}, \
                container["name"]
    assert seen == set(expected)
    services = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "shoal-control-plane"]
    assert {p["port"] for s in services for p in s["spec"]["ports"]} == {
        contracts.CONTROL_PLANE_GRPC_PORT, contracts.CONTROL_PLANE_HTTP_PORT}
