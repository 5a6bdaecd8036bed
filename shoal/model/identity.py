"""SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"


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


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The URI SAN of a workload identity."""
    for what, value in (("trust domain", trust_domain), ("namespace", namespace),
                        ("service account", service_account)):
        if not value or "/" in value:
            raise ValueError(f"bad {what} {value!r} for a SPIFFE ID: must be non-empty and contain no '/'")
    return str(SpiffeId(trust_domain, namespace, service_account))


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Parse `spiffe://td/ns/NS/sa/SA`; raise ValueError naming what is wrong."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise ValueError(f"not a SPIFFE ID (must start with {prefix}): {uri!r}")
    parts = uri[len(prefix):].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        raise ValueError(f"not a workload SPIFFE ID (want spiffe://<td>/ns/<ns>/sa/<sa>): {uri!r}")
    return SpiffeId(parts[0], parts[2], parts[4])
