"""TLS credentials an ingress gateway presents: a Kubernetes TLS Secret, addressed to one gateway.

`TlsCredential` carries a certificate chain and its private key (PEM) from
the Secret a Gateway server names (`credentialName`) to the gateway whose
pods that server selects, and to no other subscriber. The key is never
printed: `repr` and the proxies' dumps show its size only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TlsCredential:
    gateway: str                               # "namespace/service-account" of the gateway it is for
    port: int                                  # the Gateway server port it serves (HTTPS)
    secret: str                                # "namespace/name" of the Secret it came from
    hosts: tuple[str, ...]                     # the SNI names that pick it ("*.example.com" too)
    chain_pem: bytes = field(repr=False, default=b"")
    key_pem: bytes = field(repr=False, default=b"")

    @property
    def key(self) -> str:
        return f"{self.gateway}@{self.port}/{self.secret}"
