"""SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"

# DNS-label-ish: what Kubernetes allows for namespaces and service accounts.
_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_TRUST_DOMAIN = r"[a-z0-9]([-a-z0-9._]*[a-z0-9])?"
_SPIFFE = re.compile(rf"^spiffe://(?P<td>{_TRUST_DOMAIN})/ns/(?P<ns>{_NAME})/sa/(?P<sa>{_NAME})$")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The form AuthorizationPolicy principals use: `<td>/ns/<ns>/sa/<sa>`."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
    """A workload identity (`str()` of it is the URI SAN its certificate carries)."""
    for what, value in (("trust domain", trust_domain), ("namespace", namespace),
                        ("service account", service_account)):
        if not value or "/" in value:
            raise ValueError(f"bad {what} {value!r} for a SPIFFE ID: must be non-empty and contain no '/'")
    return SpiffeId(trust_domain, namespace, service_account)


def parse_spiffe_id(uri: str) -> SpiffeId:
    """`spiffe://<td>/ns/<ns>/sa/<sa>` -> SpiffeId; ValueError naming what is wrong.

    The parts must be lower-case DNS names, as Kubernetes namespaces and
    service accounts are. `shoal.identity.parse_spiffe_id` is this, raising
    its own `InvalidSpiffeId` (still a ValueError).
    """
    m = _SPIFFE.match(uri or "")
    if not m:
        raise ValueError(
            f"{uri!r} is not a mesh identity; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
    return SpiffeId(m["td"], m["ns"], m["sa"])
