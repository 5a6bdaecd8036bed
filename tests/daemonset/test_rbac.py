"""RBAC grants exactly the API calls the code makes: no verb more, none missing.

`CALLS` lists every Kubernetes API call of the parts that run with a service
account (the control plane, and the node agent as shoal-node), each with the
text of its call site. Two tests keep the list in step with the code: every
call site named is in its module, and every call site found in the code is
named (a new call fails until it is listed here, and its grant added). Then
the grants of each service account (its ClusterRoles cluster-wide, its Roles
in shoal-system with their resourceNames) must equal what its calls need.

The CLI (`shoal install`, `shoal waypoint` against a cluster) runs with the
user's own credentials and is not part of this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane.sources.kube import RESOURCES
from control_plane.waypoints_kube import KINDS

from .test_manifests import objects

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE, NODE = "shoal-control-plane", "shoal-node"
NAMESPACE = "shoal-system"
PLURALS = {"ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps", "Service": "services",
           "Deployment": "deployments"}
WAYPOINT_KINDS = tuple(("apps" if api == "apps" else "", PLURALS[kind]) for kind, (api, _) in KINDS.items())
GATEWAY_API = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class Call:
    account: str
    module: str                                  # where the call is made
    site: str                                    # text of the call site in that module
    verbs: tuple[str, ...]
    resources: tuple[tuple[str, str], ...]       # (group, resource or resource/subresource)
    name: str | None = None                      # the one object it is made on, by name
    namespace: str | None = None                 # only in this namespace (a Role), else cluster-wide


CALLS = (
    # The config source: list and watch of what it translates (one ListWatch each).
    Call(CONTROL_PLANE, "control_plane/sources/kube.py", "ListWatch(api_client, r,", ("list", "watch"),
         tuple((r.group, r.plural) for r in RESOURCES)),
    Call(CONTROL_PLANE, "control_plane/sources/kube.py", '"POST", f"/api/v1/namespaces/{namespace}/events"',
         ("create",), (("", "events"),)),
    # Tokens: TokenReview, and the pod a node token names.
    Call(CONTROL_PLANE, "control_plane/authn.py", "self.auth_api.create_token_review(", ("create",),
         (("authentication.k8s.io", "tokenreviews"),)),
    Call(CONTROL_PLANE, "control_plane/authn.py", "self.core_api.read_namespaced_pod(", ("get",), (("", "pods"),)),
    # The CA's own Secret and the trust bundle it publishes.
    Call(CONTROL_PLANE, "control_plane/ca_store.py", "self.api.read_namespaced_secret(", ("get",),
         (("", "secrets"),), "shoal-ca", NAMESPACE),
    Call(CONTROL_PLANE, "control_plane/ca_store.py", "self.api.replace_namespaced_secret(", ("update",),
         (("", "secrets"),), "shoal-ca", NAMESPACE),
    Call(CONTROL_PLANE, "control_plane/ca_store.py", "self.api.create_namespaced_secret(", ("create",),
         (("", "secrets"),), None, NAMESPACE),
    Call(CONTROL_PLANE, "control_plane/ca_store.py", "self.api.create_namespaced_config_map(", ("create",),
         (("", "configmaps"),), None, NAMESPACE),
    Call(CONTROL_PLANE, "control_plane/ca_store.py", "self.api.replace_namespaced_config_map(", ("update",),
         (("", "configmaps"),), "shoal-ca-root-cert", NAMESPACE),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", "core.read_namespaced_config_map(ROOT_CERT_CONFIGMAP,",
         ("get",), (("", "configmaps"),), "shoal-ca-root-cert", NAMESPACE),
    # The waypoint controller (the Gateway controller).
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", "self.custom.list_cluster_custom_object(GATEWAY_GROUP,",
         ("list",), ((GATEWAY_API, "gateways"), (GATEWAY_API, "gatewayclasses"))),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", 'f"list_{method}_for_all_namespaces"', ("list",),
         WAYPOINT_KINDS),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", 'f"create_namespaced_{method}"', ("create",),
         WAYPOINT_KINDS),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", 'f"patch_namespaced_{method}"', ("patch",),
         WAYPOINT_KINDS),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", 'f"delete_namespaced_{method}"', ("delete",),
         WAYPOINT_KINDS),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", "self.custom.patch_namespaced_custom_object_status(",
         ("patch",), ((GATEWAY_API, "gateways/status"),)),
    Call(CONTROL_PLANE, "control_plane/waypoints_kube.py", "self.custom.patch_cluster_custom_object_status(",
         ("patch",), ((GATEWAY_API, "gatewayclasses/status"),)),
    # The node agent: its node's pods, and namespaces.
    Call(NODE, "node_agent/sources.py", 'ListWatch(api, Kind("Pod"', ("list", "watch"), (("", "pods"),)),
    Call(NODE, "node_agent/sources.py", 'ListWatch(api, Kind("Namespace"', ("list", "watch"), (("", "namespaces"),)),
)

# Where API calls are made: the generated client's methods, raw requests, and list/watch loops.
CALL_SITE = re.compile(
    r"\.(?:read|list|create|replace|patch|delete)_\w*(?:namespaced|cluster|for_all_namespaces|token_review|"
    r"custom_object)\w*\(|f\"(?:read|list|create|replace|patch|delete)_[^\"]*\{|"
    r"\brequest\(\s*\w+,\s*\"(?:GET|POST|PUT|PATCH|DELETE)\"|\bListWatch\(")
# Code that runs as no service account of the mesh's, or is the machinery under the calls above.
NOT_SCANNED = ("shoal/cli/", "shoal/install/", "shoal/kube_mesh.py", "shoal/local/", "shoal/kube_watch.py",
               "shoal/kube_client.py")
SCANNED = ("control_plane", "node_agent", "ztunnel", "waypoint", "shoal")


def product_modules():
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not relative.startswith(NOT_SCANNED) and "/api/" not in relative:
                yield relative, path.read_text()


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.module}:{c.site}")
def test_every_listed_call_is_in_the_code(call):
    text = " ".join((ROOT / call.module).read_text().split())
    assert call.site in text, f"{call.module} no longer has `{call.site}`: update CALLS (and the grants)"


def unlisted_calls(modules) -> list[str]:
    """Call sites in (module, text) pairs that no entry of CALLS names."""
    unlisted = []
    for module, text in modules:
        sites = [c.site for c in CALLS if c.module == module]
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith(("#", "def ")):
                continue
            # A call may span lines: this line with the next two, whitespace made single.
            window = " ".join(" ".join(lines[number - 1:number + 2]).split())
            found = CALL_SITE.search(window)
            if found and found.start() < len(" ".join(line.split())) and not any(site in window for site in sites):
                unlisted.append(f"{module}:{number}: {line.strip()}")
    return unlisted


def test_every_api_call_in_the_code_is_listed():
    unlisted = unlisted_calls(product_modules())
    assert not unlisted, "API calls not in CALLS (list them, with what RBAC must grant):\n" + "\n".join(unlisted)


def test_the_scan_finds_a_call_that_is_not_listed():
    """A control: calls of each shape, added to a module, are found."""
    module = "control_plane/authn.py"
    text = (ROOT / module).read_text()
    for added in ("        self.core_api.delete_namespaced_pod(name, namespace)",
                  "        lister = getattr(api, f\"list_{method}_for_all_namespaces\")",
                  "        kube_client.request(\n            api, \"PUT\", path, body=obj)",
                  "        ListWatch(api, Kind(\"Secret\", \"\", (\"v1\",), \"secrets\"))"):
        assert len(unlisted_calls([(module, text + "\n" + added + "\n")])) == 1, added


def needed(account: str) -> set[tuple]:
    return {(group, resource, verb, call.name, call.namespace)
            for call in CALLS if call.account == account
            for group, resource in call.resources for verb in call.verbs}


def granted(account: str) -> set[tuple]:
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects() if o["kind"] in ("Role", "ClusterRole")}
    out = set()
    for binding in objects():
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        where = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], where if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], f"a wildcard: {rule}"
            for name in rule.get("resourceNames") or [None]:
                out |= {(group, resource, verb, name, where) for group in rule["apiGroups"]
                        for resource in rule["resources"] for verb in rule["verbs"]}
    return out


@pytest.mark.parametrize("account", [CONTROL_PLANE, NODE])
def test_each_service_account_is_granted_exactly_what_its_calls_need(account):
    need, have = needed(account), granted(account)
    assert not need - have, f"{account} makes calls RBAC forbids: {sorted(need - have, key=str)}"
    assert not have - need, f"{account} is granted what no call needs: {sorted(have - need, key=str)}"


def test_the_ztunnel_has_no_api_rights_to_use():
    ztunnel = next(o for o in objects() if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "shoal-ztunnel")
    assert ztunnel["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
