"""Least privilege in daemonset/: the ztunnel runs with three capabilities, not privileged; the
control plane reads only its own Secret and writes only what its waypoint controller makes;
the tokens proxies present carry shoal's own audience, and the control plane asks for it."""

from __future__ import annotations

import pytest

from shoal import kube_calls

from control_plane.authn import TOKEN_AUDIENCE
from control_plane.waypoints import MANAGED_BY, MANAGER
from control_plane.waypoints_kube import KINDS, ROOT_CERT_CONFIGMAP, TOKEN_PATH, kube_desired

from .test_manifests import objects

CONTROL_PLANE_USER = "system:serviceaccount:shoal-system:shoal-control-plane"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}
# The ztunnel needs: SO_MARK, IP_TRANSPARENT and the return path (NET_ADMIN), iptables-legacy's raw
# socket (NET_RAW), setns(2) into pods' network namespaces (SYS_ADMIN). Nothing else.
ZTUNNEL_CAPABILITIES = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}


def workload_of(container: str) -> tuple[str, dict, dict]:
    """(kind/name, pod spec, container) of the workload in daemonset/ that runs `container`."""
    for obj in objects():
        if obj["kind"] in ("DaemonSet", "Deployment"):
            pod = obj["spec"]["template"]["spec"]
            for c in pod["containers"]:
                if c["name"] == container:
                    return f"{obj['kind']}/{obj['metadata']['name']}", pod, c
    raise AssertionError(f"no container {container} in daemonset/")


def pod_of(container: str) -> tuple[dict, dict]:
    return workload_of(container)[1:]


def one(kind: str, name: str) -> dict:
    (found,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def token_volume(pod: dict, container: dict, token_file: str) -> dict:
    """The projected serviceAccountToken source behind `token_file` in `container`."""
    mount = next(m for m in container.get("volumeMounts", []) if token_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (source,) = [s["serviceAccountToken"] for s in volume["projected"]["sources"] if "serviceAccountToken" in s]
    assert token_file == f"{mount['mountPath']}/{source['path']}"
    return source


def test_the_ztunnel_runs_with_the_capabilities_it_needs_not_privileged():
    pod, ztunnel = pod_of("ztunnel")
    context = ztunnel.get("securityContext") or {}
    assert not context.get("privileged"), "the ztunnel runs privileged"
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == ZTUNNEL_CAPABILITIES
    assert context.get("runAsUser") == 0  # capabilities take effect for root only (no ambient set otherwise)
    # The API refuses allowPrivilegeEscalation: false next to CAP_SYS_ADMIN, and it would be no boundary.
    assert not any(cap.startswith("CAP_") for cap in context["capabilities"]["add"])
    assert context.get("allowPrivilegeEscalation") is not False
    assert not pod.get("hostPID"), "the ztunnel sees every host process"
    assert len(pod["containers"]) == 1, "the ztunnel shares its pod (and its pod's rights)"
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"/var/run/shoal"}, f"the ztunnel mounts host paths {host_paths}"
    assert pod.get("automountServiceAccountToken") is False, "the ztunnel gets an API-server token it never uses"


def test_the_node_agent_and_the_ztunnel_share_only_the_hand_off_directory():
    agent_workload, agent_pod, agent = workload_of("node-agent")
    ztunnel_workload, ztunnel_pod, ztunnel = workload_of("ztunnel")
    assert (agent_workload, ztunnel_workload) == ("DaemonSet/shoal-node-agent", "DaemonSet/shoal-ztunnel")

    def host_path(pod, container, path):
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
        return next(v for v in pod["volumes"] if v["name"] == mount["name"])["hostPath"]["path"]
    assert host_path(agent_pod, agent, "/var/run/shoal") == host_path(ztunnel_pod, ztunnel, "/var/run/shoal")
    socket = "/var/run/shoal/ztunnel.sock"
    assert socket in agent["command"] and socket in ztunnel["command"]


def test_the_ztunnels_token_carries_shoals_audience():
    pod, ztunnel = pod_of("ztunnel")
    token_file = ztunnel["command"][ztunnel["command"].index("--token-file") + 1]
    source = token_volume(pod, ztunnel, token_file)
    assert source["audience"] == TOKEN_AUDIENCE
    assert source.get("expirationSeconds", 3600) <= 24 * 3600


def test_the_waypoints_the_controller_makes_present_a_token_of_shoals_audience():
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "waypoint", "namespace": "shop"},
               "spec": {"gatewayClassName": "shoal-waypoint", "listeners": [{"name": "mesh", "port": 15008}]}}
    (deployment,) = [o for o in kube_desired(gateway, "shoal:test", b"PEM") if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (waypoint,) = pod["containers"]
    assert waypoint["command"][waypoint["command"].index("--token-file") + 1] == TOKEN_PATH
    assert token_volume(pod, waypoint, TOKEN_PATH)["audience"] == TOKEN_AUDIENCE
    assert pod.get("automountServiceAccountToken") is False


def _rules(kind: str, name: str) -> list[dict]:
    return one(kind, name)["rules"]


def test_the_control_plane_reads_secrets_only_by_name_in_its_namespace():
    cluster_rules = _rules("ClusterRole", "shoal-control-plane")
    assert not [r for r in cluster_rules if {"secrets", "*"} & set(r.get("resources", []))], \
        "the control plane's ClusterRole grants Secrets"
    for rule in _rules("Role", "shoal-control-plane"):
        if "secrets" not in rule.get("resources", []):
            continue
        verbs = set(rule["verbs"])
        assert not verbs & {"list", "watch", "*"}, f"listing or watching Secrets reads them all: {rule}"
        if verbs & {"update", "patch", "delete"}:
            assert rule.get("resourceNames") == ["shoal-ca"], f"a rule on Secrets other than shoal-ca: {rule}"
        elif "get" in verbs and not rule.get("resourceNames"):
            assert verbs == {"get"}, rule   # the TLS Secrets Gateways name: a get needs the name
        else:
            assert verbs == {"create"}, rule  # a name cannot limit create; it reads nothing back


def test_the_control_planes_writes_are_held_to_what_the_waypoint_controller_makes():
    written = {(group, resource)
               for rule in _rules("ClusterRole", "shoal-control-plane") if set(rule["verbs"]) & WRITE_VERBS
               for group in rule.get("apiGroups", []) for resource in rule.get("resources", [])}
    plural = {"ServiceAccount": ("", "serviceaccounts"), "ConfigMap": ("", "configmaps"),
              "Service": ("", "services"), "Deployment": ("apps", "deployments")}
    controller_kinds = {plural[kind] for kind in KINDS}
    # The Gateway controller writes the status of Gateways and GatewayClasses, and nothing else of them.
    statuses = {("gateway.networking.k8s.io", "gateways/status"), ("gateway.networking.k8s.io", "gatewayclasses/status")}
    # The status writer (control_plane/status_kube.py) writes the status of the mesh objects, only their status.
    statuses |= {(call.group, call.rbac_resource) for call in kube_calls.API_CALLS
                 if call.subresource == "status" and call.component == kube_calls.CONTROL_PLANE}
    assert all(resource.endswith("/status") for _, resource in statuses)
    assert written - {("", "events"), ("authentication.k8s.io", "tokenreviews")} - statuses == controller_kinds, \
        f"the control plane may write {written}"

    policy = one("ValidatingAdmissionPolicy", "shoal-control-plane-writes")["spec"]
    binding = one("ValidatingAdmissionPolicyBinding", "shoal-control-plane-writes")["spec"]
    assert binding["policyName"] == "shoal-control-plane-writes" and binding["validationActions"] == ["Deny"]
    assert policy["failurePolicy"] == "Fail"
    covered = {(group, resource)
               for rule in policy["matchConstraints"]["resourceRules"]
               if {"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"])
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert controller_kinds <= covered, f"writes the policy does not hold: {controller_kinds - covered}"
    (condition,) = policy["matchConditions"]
    assert condition["expression"] == f"request.userInfo.username == '{CONTROL_PLANE_USER}'"
    text = " ".join(v["expression"] for v in policy["variables"])
    for obj in ("object", "oldObject"):  # before and after: no taking over an object by labelling it
        assert f"{obj}.metadata.labels['{MANAGED_BY}'] == '{MANAGER}'" in " ".join(text.split())
    assert f"request.name == '{ROOT_CERT_CONFIGMAP}'" in text and "request.namespace == 'shoal-system'" in text
    (validation,) = policy["validations"]
    assert validation["expression"] == "variables.bundle || (variables.managedBefore && variables.managedAfter)"


@pytest.mark.parametrize("kind, name", [("ValidatingAdmissionPolicy", "shoal-control-plane-writes"),
                                        ("ValidatingAdmissionPolicyBinding", "shoal-control-plane-writes")])
def test_the_admission_policy_is_served_by_a_released_api(kind, name):
    assert one(kind, name)["apiVersion"] == "admissionregistration.k8s.io/v1"
