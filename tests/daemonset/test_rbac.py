"""RBAC grants exactly the API calls the code makes: no verb more, none missing.

`shoal.kube_calls.API_CALLS` lists every Kubernetes API call of the parts that
run with a service account (the control plane, and the node agent as
shoal-node); tests/shoal/test_kube_calls.py keeps it in step with the code by
running every adapter against the API double. Here the grants of each service
account (its ClusterRoles cluster-wide, its Roles in shoal-system, with their
resourceNames) must equal what its calls need.

The CLI (`shoal install`, `shoal waypoint` against a cluster) runs with the
user's own credentials and is not part of this.
"""

from __future__ import annotations

import copy

import pytest

from shoal import kube_calls

from .test_manifests import objects

NAMESPACE = "shoal-system"
ACCOUNTS = {"shoal-control-plane": kube_calls.CONTROL_PLANE, "shoal-node": kube_calls.NODE_AGENT}
# The control plane's own objects, which it reads and updates by name, in shoal-system only.
BY_NAME = {("secrets", "shoal-ca"), ("configmaps", "shoal-ca-root-cert")}


def granted(account: str, manifests: list[dict] | None = None) -> set[tuple]:
    """(group, resource, verb, resourceName or None, namespace or None) for every grant bound to `account`."""
    manifests = objects() if manifests is None else manifests
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in manifests if o["kind"] in ("Role", "ClusterRole")}
    out = set()
    for binding in manifests:
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


def mismatch(account: str, manifests: list[dict] | None = None) -> tuple[set, set]:
    """(calls RBAC forbids, grants no call needs) for `account`."""
    need = {(group, resource, verb) for (group, resource), verbs in kube_calls.verbs(ACCOUNTS[account]).items()
            for verb in verbs}
    have = {(group, resource, verb) for group, resource, verb, _, _ in granted(account, manifests)}
    return need - have, have - need


@pytest.mark.parametrize("account", sorted(ACCOUNTS))
def test_each_service_account_is_granted_exactly_what_its_calls_need(account):
    forbidden, unneeded = mismatch(account)
    assert not forbidden, f"{account} makes calls RBAC forbids: {sorted(forbidden)}"
    assert not unneeded, f"{account} is granted what no call needs: {sorted(unneeded)}"


def test_the_control_planes_own_objects_are_read_and_updated_by_name_in_its_namespace_only():
    for group, resource, verb, name, namespace in granted("shoal-control-plane"):
        if (group, resource, verb) == ("", "secrets", "get"):
            # Also the ingress gateways' TLS Secrets, by the names Gateways give: in shoal-system only.
            assert namespace == NAMESPACE, f"get secrets is granted beyond shoal-system ({namespace=})"
        elif group == "" and resource in ("secrets", "configmaps") and verb in ("get", "update"):
            assert (resource, name) in BY_NAME and namespace == NAMESPACE, \
                f"{verb} {resource} is granted beyond the control plane's own objects ({name=}, {namespace=})"


def test_the_tls_secret_reader_is_get_only_and_bound_by_the_operator():
    """The ClusterRole an operator binds in a namespace whose certificates a Gateway names: get, nothing else."""
    manifests = objects()
    (role,) = [o for o in manifests
               if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal-tls-secret-reader"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert not [b for b in manifests if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and b["roleRef"]["name"] == "shoal-tls-secret-reader"], "bound cluster-wide by the install"


def test_the_grants_check_is_in_force():
    """A control: a verb added to a role, or one taken away, is seen."""
    manifests = copy.deepcopy(objects())
    role = next(o for o in manifests if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal-node")
    role["rules"][0]["verbs"].append("get")
    assert mismatch("shoal-node", manifests) == (set(), {("", "pods", "get"), ("", "namespaces", "get")})
    role["rules"][0]["verbs"] = ["list"]
    assert mismatch("shoal-node", manifests)[0] == {("", "pods", "watch"), ("", "namespaces", "watch")}


def test_the_ztunnel_has_no_api_rights_to_use():
    ztunnel = next(o for o in objects() if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "shoal-ztunnel")
    assert ztunnel["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not any(c.component == "ztunnel" for c in kube_calls.API_CALLS)
