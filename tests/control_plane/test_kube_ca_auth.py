"""The Kubernetes halves of the CA and of authentication, through the real kubernetes
client against a small HTTP API double: Secret shoal-ca (read, create on first start,
409 race), the bundle ConfigMap, and TokenReview (node tokens, other service accounts)."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from control_plane import ca_store
from control_plane.authn import (
    TOKEN_AUDIENCE, AuthenticationFailed, AuthenticationUnavailable, GuardedAuthenticator, KubeAuthenticator,
)
from control_plane.ca import generate_root
from control_plane.rotation import Roots

from support.kube_api import CA_CONFIGMAP, CA_SECRET, ApiDouble

TD = "cluster.local"


@pytest.fixture
def double():
    d = ApiDouble()
    yield d
    d.close()


def test_secret_is_created_on_first_start_then_reused(double):
    core = client.CoreV1Api(double.api())
    roots = ca_store.load_or_create(ca_store.KubeSecretRootStore(core), TD)
    assert CA_SECRET in double.objects and set(double.objects[CA_SECRET]["data"]) == {"ca.crt", "ca.key", "bundle.pem"}
    assert "BEGIN CERTIFICATE" in double.objects[CA_CONFIGMAP]["data"]["root-cert.pem"]
    assert "PRIVATE KEY" not in double.objects[CA_CONFIGMAP]["data"]["root-cert.pem"]
    again = ca_store.load_or_create(ca_store.KubeSecretRootStore(client.CoreV1Api(double.api())), TD)
    assert again == roots
    assert [r.method for r in double.requests if r.path.startswith(CA_SECRET.rsplit("/", 1)[0])].count("POST") == 1


def test_losing_the_creation_race_uses_the_winners_root(double):
    core = client.CoreV1Api(double.api())
    winner = generate_root(TD)
    store = ca_store.KubeSecretRootStore(core)

    real_create = store.create

    def create_after_the_other_replica(roots):
        real_create(Roots.first(winner))            # the other replica gets there first
        return real_create(roots)                   # ours then gets 409
    store.create = create_after_the_other_replica
    roots = ca_store.load_or_create(store, TD)
    assert roots.signer.fingerprint == winner.fingerprint


def test_unreadable_secret_is_a_clear_error(double):
    double.objects[CA_SECRET] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shoal-ca"},
                              "data": {"ca.crt": "bm9wZQ=="}}
    with pytest.raises(ca_store.RootInvalid, match="lacks ca.crt or ca.key"):
        ca_store.KubeSecretRootStore(client.CoreV1Api(double.api())).load()


def _authenticator(double) -> KubeAuthenticator:
    api = double.api()
    return KubeAuthenticator(client.AuthenticationV1Api(api), client.CoreV1Api(api))


def _for_shoal(double, *tokens: str) -> None:
    """These tokens were projected with shoal's audience, as daemonset/ and the waypoint controller ask."""
    for token in tokens:
        double.audiences[token] = [TOKEN_AUDIENCE]


def test_token_review_node_and_service_account_callers(double):
    double.reviews["ztunnel-token"] = {"username": "system:serviceaccount:shoal-system:shoal-node",
                                       "extra": {"authentication.kubernetes.io/node-name": ["worker-3"]}}
    double.reviews["waypoint-token"] = {"username": "system:serviceaccount:shop:waypoint"}
    double.reviews["user-token"] = {"username": "alice"}
    _for_shoal(double, "ztunnel-token", "waypoint-token", "user-token")
    auth = _authenticator(double)
    assert auth.authenticate("ztunnel-token").node == "worker-3"
    wp = auth.authenticate("waypoint-token")
    assert (wp.namespace, wp.service_account, wp.node) == ("shop", "waypoint", "")
    with pytest.raises(AuthenticationFailed, match="not a service account"):
        auth.authenticate("user-token")
    with pytest.raises(AuthenticationFailed, match="invalid bearer token"):
        auth.authenticate("forged")

    async def twice_through_the_guard():  # as the gRPC services ask: the second answer is cached
        guard = GuardedAuthenticator(auth)
        await guard.authenticate("ztunnel-token")
        reviews = sum(1 for r in double.requests if r.path.endswith("/tokenreviews"))
        assert (await guard.authenticate("ztunnel-token")).node == "worker-3"
        assert sum(1 for r in double.requests if r.path.endswith("/tokenreviews")) == reviews
    asyncio.run(twice_through_the_guard())


def test_node_token_without_node_falls_back_to_the_pod(double):
    double.reviews["old-style"] = {"username": "system:serviceaccount:shoal-system:shoal-node",
                                   "extra": {"authentication.kubernetes.io/pod-name": ["shoal-node-abcde"]}}
    double.objects["/api/v1/namespaces/shoal-system/pods/shoal-node-abcde"] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shoal-node-abcde", "namespace": "shoal-system"},
        "spec": {"nodeName": "worker-7", "containers": [{"name": "c"}]}}
    double.reviews["unbound"] = {"username": "system:serviceaccount:shoal-system:shoal-node"}
    _for_shoal(double, "old-style", "unbound")
    auth = _authenticator(double)
    assert auth.authenticate("old-style").node == "worker-7"
    with pytest.raises(AuthenticationFailed, match="not bound to a node"):
        auth.authenticate("unbound")


@pytest.mark.parametrize("code, check", [(401, "own credentials"), (403, "create tokenreviews"),
                                         (500, "reachable and healthy"), (429, "reachable and healthy")])
def test_a_failed_token_review_is_no_verdict_and_says_what_to_check(double, code, check):
    double.reviews["waypoint-token"] = {"username": "system:serviceaccount:shop:waypoint"}
    _for_shoal(double, "waypoint-token")
    auth = _authenticator(double)
    double.fail(code, path="/tokenreviews")        # no Retry-After: not asked again
    with pytest.raises(AuthenticationUnavailable, match=f"HTTP {code}.*{check}"):
        auth.authenticate("waypoint-token")
    assert auth.authenticate("waypoint-token").service_account == "waypoint"   # the next call is answered


def test_a_throttled_token_review_is_asked_again_after_retry_after(double):
    double.reviews["waypoint-token"] = {"username": "system:serviceaccount:shop:waypoint"}
    _for_shoal(double, "waypoint-token")
    double.fail(429, retry_after=0, path="/tokenreviews")
    double.fail(503, retry_after=0, path="/tokenreviews")
    assert _authenticator(double).authenticate("waypoint-token").service_account == "waypoint"
    assert sum(1 for r in double.requests if r.path.endswith("/tokenreviews")) == 3


def test_the_pod_of_a_node_token_that_cannot_be_read_is_no_verdict(double):
    double.reviews["old-style"] = {"username": "system:serviceaccount:shoal-system:shoal-node",
                                   "extra": {"authentication.kubernetes.io/pod-name": ["shoal-node-abcde"]}}
    _for_shoal(double, "old-style")
    double.fail(403, path="/pods/shoal-node-abcde")
    with pytest.raises(AuthenticationUnavailable, match="get pods"):
        _authenticator(double).authenticate("old-style")
    with pytest.raises(AuthenticationFailed, match="not bound to a node"):   # read, and gone: refused
        _authenticator(double).authenticate("old-style")


@pytest.mark.parametrize("code, says", [(403, "RBAC"), (401, "Unauthorized"), (500, "Internal Server Error")])
def test_a_secret_that_cannot_be_read_is_a_clear_ca_error(double, code, says):
    double.fail(code, method="GET", path="/secrets/shoal-ca")
    with pytest.raises(ca_store.CaError, match=f"cannot read Secret shoal-system/shoal-ca: {code}.*{says}"):
        ca_store.load_or_create(ca_store.KubeSecretRootStore(client.CoreV1Api(double.api())), TD)
    assert CA_SECRET not in double.objects           # nothing was created on a failed read


def test_a_write_refused_by_rbac_is_a_clear_ca_error(double):
    double.fail(403, method="POST", path="/secrets")
    with pytest.raises(ca_store.CaError, match="cannot create Secret shoal-system/shoal-ca: 403.*RBAC"):
        ca_store.load_or_create(ca_store.KubeSecretRootStore(client.CoreV1Api(double.api())), TD)
