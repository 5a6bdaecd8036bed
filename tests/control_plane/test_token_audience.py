"""TokenReview for shoal's own audience: a token that proxies present must have been issued
for `shoal`, and the review must confirm it. A pod's ordinary token (audience: the API server)
of the node's service account once passed as a node credential, so any pod running as
shoal-node, or anything that read such a token, could get certificates for the node's pods.

Through the real kubernetes client against support.kube_api.ApiDouble, whose TokenReview
answers as the API server does: a token is good for the audiences it was issued for.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from control_plane.authn import TOKEN_AUDIENCE, AuthenticationFailed, KubeAuthenticator

from support.kube_api import ApiDouble

NODE_SA = "system:serviceaccount:shoal-system:shoal-node"


@pytest.fixture
def double():
    d = ApiDouble()
    d.reviews["projected"] = {"username": NODE_SA, "extra": {"authentication.kubernetes.io/node-name": ["worker-1"]}}
    d.audiences["projected"] = [TOKEN_AUDIENCE]
    d.reviews["default-token"] = {"username": NODE_SA,
                                  "extra": {"authentication.kubernetes.io/node-name": ["worker-1"]}}
    d.reviews["waypoint-default-token"] = {"username": "system:serviceaccount:shop:waypoint"}
    yield d
    d.close()


def authenticator(double: ApiDouble) -> KubeAuthenticator:
    api = double.api()
    return KubeAuthenticator(client.AuthenticationV1Api(api), client.CoreV1Api(api))


def test_a_token_projected_for_shoal_is_a_node_credential(double):
    assert authenticator(double).authenticate("projected").node == "worker-1"


@pytest.mark.parametrize("token", ["default-token", "waypoint-default-token"])
def test_a_token_for_the_api_server_is_no_credential(double, token):
    with pytest.raises(AuthenticationFailed, match=f"audience '{TOKEN_AUDIENCE}'"):
        authenticator(double).authenticate(token)


def test_a_review_that_does_not_confirm_the_audience_is_a_refusal(double):
    # An authenticator that ignores audiences says "authenticated" and names none: the token was
    # then checked against the API server's audience only.
    double.audience_aware = False
    with pytest.raises(AuthenticationFailed, match="did not confirm the audience 'shoal'"):
        authenticator(double).authenticate("default-token")


def test_the_control_plane_always_asks_for_an_audience():
    assert KubeAuthenticator(None, None).audiences == (TOKEN_AUDIENCE,)
    with pytest.raises(ValueError, match="audience"):
        KubeAuthenticator(None, None, audiences=())
