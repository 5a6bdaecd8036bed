"""AuthorizationPolicy and PeerAuthentication into the model."""

import pytest

from shoal.model import (
    Action,
    Authorization,
    Operation,
    PeerAuthentication,
    PeerAuthMode,
    PolicyScope,
    ResourceType,
    Rule,
    Source,
    TargetRef,
)
from translate_objects import added, deleted, from_yaml, translate

AUTHZ, PEER = ResourceType.AUTHORIZATION, ResourceType.PEER_AUTHENTICATION


def policy(spec_yaml, ns="default", name="p", version="v1"):
    return from_yaml(f"""
apiVersion: security.istio.io/{version}
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec_yaml}
""")[0]


AUTHZ_CASES = [
    ("allow principals to ports", """
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/productpage]}
    to:
    - operation: {ports: ["9080"]}
""", Authorization("p", "default", PolicyScope.WORKLOAD, Action.ALLOW,
                   (Rule((Source(principals=("cluster.local/ns/default/sa/productpage",)),),
                         (Operation(ports=(9080,)),)),),
                   selector=(("app", "ratings"),))),
    ("deny namespaces, paths and methods", """
  action: DENY
  rules:
  - from:
    - source: {namespaces: [untrusted], notNamespaces: [default]}
    to:
    - operation: {methods: [post, DELETE], paths: ["/admin*"], notPaths: [/admin/health]}
""", Authorization("p", "default", PolicyScope.NAMESPACE, Action.DENY,
                   (Rule((Source(namespaces=("untrusted",), not_namespaces=("default",)),),
                         (Operation(methods=("POST", "DELETE"), paths=("/admin*",), not_paths=("/admin/health",)),)),))),
    ("ip blocks are normalised", """
  rules:
  - from:
    - source: {ipBlocks: [198.19.1.5, 198.19.2.0/24], notIpBlocks: [198.19.2.7]}
""", Authorization("p", "default", PolicyScope.NAMESPACE, Action.ALLOW,
                   (Rule((Source(ip_blocks=("198.19.1.5/32", "198.19.2.0/24"), not_ip_blocks=("198.19.2.7/32",)),)),))),
    ("empty spec allows nothing (deny all)", "  {}",
     Authorization("p", "default", PolicyScope.NAMESPACE, Action.ALLOW, ())),
    ("one empty rule allows everything", "  rules: [{}]",
     Authorization("p", "default", PolicyScope.NAMESPACE, Action.ALLOW, (Rule(),))),
    ("targetRefs go to the waypoint", """
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
""", Authorization("p", "default", PolicyScope.TARGETS, Action.ALLOW, (Rule((), (Operation(methods=("GET",)),)),),
                   targets=(TargetRef("Service", "reviews", "default"),))),
]


@pytest.mark.parametrize("name, spec, expected", AUTHZ_CASES, ids=[c[0] for c in AUTHZ_CASES])
@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_authorization_policy(name, spec, expected, version):
    t, update = translate(policy(spec, version=version))
    assert not any(f.errors for f in update.findings.values())
    assert t.snapshot()[AUTHZ] == {"default/p": expected}


def test_root_namespace_policy_is_mesh_wide():
    for root in ("shoal-system", "istio-system"):
        t, _ = translate(policy("  action: DENY\n  rules: [{from: [{source: {namespaces: [evil]}}]}]", ns=root))
        assert t.snapshot()[AUTHZ][f"{root}/p"].scope == PolicyScope.MESH


def test_when_conditions_fail_closed():
    allow = policy("""
  rules:
  - from: [{source: {principals: [a]}}]
    when: [{key: "request.headers[x]", values: ["1"]}]
  - from: [{source: {principals: [b]}}]
""", name="allow")
    deny = policy("""
  action: DENY
  rules:
  - from: [{source: {principals: [a], requestPrincipals: ["*"]}}]
""", name="deny")
    t, update = translate(allow, deny)
    snap = t.snapshot()[AUTHZ]
    assert snap["default/allow"].rules == (Rule((Source(principals=("b",)),)),)
    assert snap["default/deny"].rules == (Rule((Source(principals=("a",)),)),)
    assert "this ALLOW rule is dropped" in update.findings[("AuthorizationPolicy", "default", "allow")].warnings[0]
    assert "this DENY rule applies without them" in update.findings[("AuthorizationPolicy", "default", "deny")].warnings[0]


def test_policy_change_and_delete_are_incremental():
    t, _ = translate(policy("  action: DENY\n  rules: [{}]"), policy("  rules: [{}]", name="other"))
    t.apply_event(added(policy("  action: ALLOW\n  rules: [{}]")))
    update = t.flush()
    assert set(update.delta.upserted[AUTHZ]) == {"default/p"} and update.delta.upserted[AUTHZ]["default/p"].action == Action.ALLOW
    t.apply_event(deleted(policy("  {}")))
    assert t.flush().delta.removed[AUTHZ] == {"default/p"}


def test_bad_policy_is_skipped_and_reported_others_stay():
    bad = policy("  action: AUDIT", name="bad")
    t, update = translate(bad, policy("  rules: [{}]", name="good"))
    assert set(t.snapshot()[AUTHZ]) == {"default/good"}
    assert update.findings[("AuthorizationPolicy", "default", "bad")].errors == (
        "AuthorizationPolicy default/bad: spec.action: action AUDIT is not supported by shoal; use ALLOW or DENY",)


def peer(spec_yaml, ns="default", name="pa", version="v1beta1"):
    return from_yaml(f"""
apiVersion: security.istio.io/{version}
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec_yaml}
""")[0]


@pytest.mark.parametrize("ns, spec, expected", [
    ("istio-system", "  mtls: {mode: STRICT}",
     PeerAuthentication("pa", "istio-system", PolicyScope.MESH, PeerAuthMode.STRICT)),
    ("shoal-system", "  mtls: {mode: PERMISSIVE}",
     PeerAuthentication("pa", "shoal-system", PolicyScope.MESH, PeerAuthMode.PERMISSIVE)),
    ("shop", "  mtls: {mode: STRICT}", PeerAuthentication("pa", "shop", PolicyScope.NAMESPACE, PeerAuthMode.STRICT)),
    ("shop", "  selector: {matchLabels: {app: db}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls: {5432: {mode: STRICT}}",
     PeerAuthentication("pa", "shop", PolicyScope.WORKLOAD, PeerAuthMode.PERMISSIVE, (("app", "db"),),
                        ((5432, PeerAuthMode.STRICT),))),
    ("shop", "  mtls: {mode: DISABLE}", PeerAuthentication("pa", "shop", PolicyScope.NAMESPACE, PeerAuthMode.DISABLE)),
    ("shop", "  selector: {matchLabels: {app: db}}",
     PeerAuthentication("pa", "shop", PolicyScope.WORKLOAD, PeerAuthMode.UNSET, (("app", "db"),))),
])
@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_peer_authentication(ns, spec, expected, version):
    t, update = translate(peer(spec, ns=ns, version=version))
    assert not any(f.errors for f in update.findings.values())
    assert t.snapshot()[PEER] == {f"{ns}/pa": expected}


@pytest.mark.parametrize("spec, error", [
    ("  mtls: {mode: STRICTER}", "spec.mtls.mode: unknown mode 'STRICTER'; use STRICT, PERMISSIVE, DISABLE or UNSET"),
    ("  portLevelMtls: {80: {mode: STRICT}}", "spec.portLevelMtls: needs a selector"),
    ("  mtls: {mod: STRICT}", "spec.mtls.mod: unknown field"),
])
def test_bad_peer_authentication(spec, error):
    t, update = translate(peer(spec))
    assert t.snapshot()[PEER] == {}
    (errors,) = [f.errors for f in update.findings.values()]
    assert any(e.startswith(f"PeerAuthentication default/pa: {error}") for e in errors), errors


def test_root_namespaces_are_configurable():
    from control_plane.translate import Translator
    t = Translator(root_namespaces=("mesh-root",))
    for ns in ("mesh-root", "istio-system"):
        t.apply_event(added(policy("  rules: [{}]", ns=ns)))
    t.flush()
    scopes = {k: a.scope for k, a in t.snapshot()[AUTHZ].items()}
    assert scopes == {"mesh-root/p": PolicyScope.MESH, "istio-system/p": PolicyScope.NAMESPACE}
