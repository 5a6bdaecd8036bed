"""The ztunnel's one exception hierarchy.

Every error the ztunnel raises is a `ZtunnelError`; each carries the Istio
response flag that telemetry reports for a connection it ended, and a
message saying what happened and what to check. Foreign exceptions (OSError,
ssl.SSLError) are translated where they are caught: `shoal.sockets` for
socket calls, `shoal.hbone_pool` for HBONE connections, and
`ztunnel.outbound_io.classify` for what ends a connection.
"""

from __future__ import annotations

from shoal.errors import ShoalError


class ZtunnelError(ShoalError):
    """Base of the ztunnel's errors (`response_flag` "UF" unless a subclass says otherwise)."""


class StartupError(ZtunnelError):
    """The ztunnel cannot start; the message says what is missing."""
