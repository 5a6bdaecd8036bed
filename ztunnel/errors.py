"""The ztunnel's one exception hierarchy.

Every error the ztunnel raises is a `ZtunnelError`; each carries the Istio
response flag that telemetry reports for a connection it ended, and a
message saying what happened and what to check. Foreign exceptions (OSError,
ssl.SSLError, shoal.hbone errors) are translated where they are caught
(`ztunnel.proxy.classify`).
"""

from __future__ import annotations


class ZtunnelError(Exception):
    response_flag = "UF"   # upstream failure, unless a subclass says otherwise
