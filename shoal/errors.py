"""The root of every exception shoal raises on purpose.

Each part has one subclass of `ShoalError` as its own root (`ZtunnelError`,
`WaypointError`, `ControlPlaneError`, `NodeAgentError`, `HboneError`,
`IdentityError`, `StoreError`, ...), and every error it raises derives from
that. A message says what happened and what to check. Foreign exceptions
(OSError, ssl.SSLError, grpc, h2, kubernetes) are translated into these at
one boundary per part, so a caller catches `ShoalError` and no library's
exception escapes a part unexplained.

`response_flag` is the Istio/Envoy response flag that telemetry reports when
the error ends a connection or request ("UF": upstream failure, by default).
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of all of shoal's errors."""

    response_flag = "UF"
