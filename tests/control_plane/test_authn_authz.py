"""Local credentials (bootstrap tokens, service-account tokens) and the authorization rules, table-driven."""

from __future__ import annotations

import json
import os

import pytest

from control_plane import authz
from control_plane.authn import AuthenticationFailed, Caller, LocalAuthenticator
from control_plane.state import ConfigState
from control_plane.subscription import Scope
from shoal import tokens
from shoal.identity import SpiffeId

from support.plane import workload

TD = "cluster.local"


def test_bootstrap_tokens_are_reloaded_when_the_file_changes(tmp_path):
    path = tmp_path / "bootstrap-tokens.json"
    path.write_text(json.dumps({"t1": "node1"}))
    auth = LocalAuthenticator(path, tokens.token_key(tmp_path, create=True))
    assert auth.authenticate("t1") == Caller(node="node1")
    path.write_text(json.dumps({"t1": "node1", "t3": "node3"}))
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert auth.authenticate("t3") == Caller(node="node3")
    path.write_text("{half written")
    os.utime(path, (2, 2))
    assert auth.authenticate("t3") == Caller(node="node3")  # the previous map is kept
    with pytest.raises(AuthenticationFailed, match="unknown token") as info:
        auth.authenticate("stolen-token-value")
    assert "stolen-token-value" not in str(info.value)
    with pytest.raises(AuthenticationFailed, match="no credential"):
        auth.authenticate(None)


def test_service_account_tokens_are_bound_to_the_cluster_key(tmp_path):
    key = tokens.token_key(tmp_path, create=True)
    assert oct((tmp_path / "ca" / "token.key").stat().st_mode & 0o777) == "0o600"
    auth = LocalAuthenticator(tmp_path / "none.json", key)
    token = tokens.local_service_account_token(tmp_path, "shop", "wp.v1")
    assert auth.authenticate(token) == Caller(namespace="shop", service_account="wp.v1")
    other_key = tokens.mint_service_account_token(os.urandom(32), "shop", "wp.v1")
    with pytest.raises(AuthenticationFailed):
        auth.authenticate(other_key)
    tampered = token.replace(":shop:", ":bank:")
    with pytest.raises(AuthenticationFailed):
        auth.authenticate(tampered)


def test_bearer_metadata_round_trip():
    assert tokens.bearer(tokens.metadata("abc")) == "abc"
    assert tokens.bearer((("authorization", "Basic x"),)) is None
    assert tokens.bearer(()) is None


STATE = ConfigState()
STATE.apply([workload(1, node="node1", sa="reviews"), workload(2, node="node2", sa="ratings")])
NODE1, WAYPOINT = Caller(node="node1"), Caller(namespace="shop", service_account="wp")


@pytest.mark.parametrize("caller, requested, allowed", [
    (NODE1, SpiffeId(TD, "shop", "reviews"), True),
    (NODE1, SpiffeId(TD, "shop", "ratings"), False),       # on node2 only
    (NODE1, SpiffeId(TD, "bank", "reviews"), False),       # same SA name, other namespace
    (WAYPOINT, SpiffeId(TD, "shop", "wp"), True),
    (WAYPOINT, SpiffeId(TD, "shop", "reviews"), False),
    (WAYPOINT, SpiffeId(TD, "bank", "wp"), False),
])
def test_may_sign(caller, requested, allowed):
    assert (authz.may_sign(caller, requested, STATE) is None) is allowed


@pytest.mark.parametrize("caller, scope, allowed", [
    (NODE1, Scope(node="node1"), True),
    (NODE1, Scope(node="node2"), False),
    (NODE1, Scope(waypoint_namespace="shop", waypoint_name="wp"), False),
    (WAYPOINT, Scope(waypoint_namespace="shop", waypoint_name="wp"), True),
    (WAYPOINT, Scope(waypoint_namespace="bank", waypoint_name="wp"), False),
    (WAYPOINT, Scope(node="node1"), False),
])
def test_may_watch(caller, scope, allowed):
    assert (authz.may_watch(caller, scope) is None) is allowed
