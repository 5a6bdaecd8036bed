"""L4 authorization at the ztunnel: what it knows of a connection, evaluated by `shoal.authz`.

The ztunnel never sees HTTP, so every connection is judged `l4_only`: an
ALLOW rule that needs HTTP fields matches nothing, a DENY rule with them
denies on its other fields (fail closed), as Istio's ztunnel does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from shoal import authz
from shoal.authz import RequestFacts, Verdict
from shoal.model import Authorization

__all__ = ["Connection", "Verdict", "authorize"]


@dataclass(frozen=True)
class Connection:
    """What an L4 enforcer knows about one connection to a workload."""

    source_ip: str
    destination_port: int                 # the port on the workload (the target port)
    source_principal: str | None = None   # from the verified client certificate, None for plaintext
    source_namespace: str | None = None


def authorize(policies: Iterable[Authorization], conn: Connection) -> Verdict:
    return authz.authorize(policies, RequestFacts(conn.source_ip, conn.source_principal, conn.source_namespace,
                                                   conn.destination_port, l4_only=True))
