"""What a caller may do, decided from the current config state. Pure functions.

- A node credential (ztunnel) may get a certificate for an identity only while
  a workload with that identity is scheduled on its node, and may watch only
  as that node.
- A service-account credential (waypoint) may get a certificate for its own
  identity only, and may watch only as a waypoint of its own namespace.

Each function returns None when allowed, or the reason it is not.
"""

from __future__ import annotations

from control_plane.authn import Caller
from control_plane.state import ConfigState
from control_plane.subscription import Scope
from shoal.identity import SpiffeId


def may_sign(caller: Caller, requested: SpiffeId, state: ConfigState) -> str | None:
    if caller.is_node:
        if state.runs_on(caller.node, requested.namespace, requested.service_account):
            return None
        return (f"{caller.describe()} asked for {requested}, but no pod with service account "
                f"{requested.namespace}/{requested.service_account} is scheduled on {caller.node}")
    if (requested.namespace, requested.service_account) == (caller.namespace, caller.service_account):
        return None
    return f"{caller.describe()} may only get its own identity, not {requested}"


def may_watch(caller: Caller, scope: Scope) -> str | None:
    if caller.is_node:
        if not scope.is_waypoint and scope.node == caller.node:
            return None
        return f"{caller.describe()} may only watch as node {caller.node}, not as {scope.describe()}"
    if scope.is_waypoint and scope.waypoint_namespace == caller.namespace:
        return None
    return f"{caller.describe()} may only watch as a waypoint of namespace {caller.namespace}, not as {scope.describe()}"
