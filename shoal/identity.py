"""Workload identity: SPIFFE IDs, keys and CSRs, and mesh mTLS contexts.

Shared by the control plane (which signs), the ztunnel and the waypoint (which
request certificates and speak HBONE). Everything here is plain functions over
keys, certificates and PEM bytes; nothing does network I/O.

The proxies' side loads no `cryptography` (about 10 MiB resident per
process): their key and CSR come from libcrypto (`shoal.libcrypto`,
`new_workload_key()`), and what they read from certificates (validity, URI
SANs) from `shoal.x509_der`. The control plane, which signs and so needs a
whole X.509 library, keeps `cryptography` objects: `new_key()`,
`load_key()`, `load_certificates()` and `certificates_pem()` are theirs and
import it when called. `key_pem`, `make_csr`, `uri_sans` and `spiffe_id_of`
take either kind.

- `SpiffeId` (the model's) is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
  as `str()`; `parse_spiffe_id` refuses anything else.
- `new_workload_key()` (or `new_key()`) and `make_csr(key, spiffe_id)` produce what
  `Certificates.Sign` takes: an ECDSA P-256 key and a CSR whose only SAN is the identity's URI.
- `spiffe_id_of(cert)` reads the identity out of a certificate (a peer's, say).
- `server_context(...)` and `client_context(...)` build `ssl.SSLContext`s for
  mesh mTLS: TLS 1.3 only, ALPN `h2`, the peer's chain verified up to the mesh
  trust bundle. Host names are not checked (mesh certificates carry no DNS
  names); call `check_peer(ssl_object, expected)` after the handshake to check
  the peer's SPIFFE ID instead.
- `Credential` bundles a key, its chain and the trust bundle, and says when it
  is due for renewal (at half life, as DESIGN.md asks).
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal import x509_der
from shoal.errors import ShoalError
from shoal.libcrypto import EcKey
from shoal.model import identity as model_identity
from shoal.model.identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from shoal.x509_der import CertificateFacts

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["DEFAULT_TRUST_DOMAIN", "SpiffeId", "parse_spiffe_id", "format_spiffe_id", "new_key", "key_pem",
           "load_key", "make_csr", "new_workload_key", "read_certificates", "spiffe_id_of", "peer_spiffe_id",
           "check_peer", "Credential",
           "server_context", "client_context", "IdentityError", "InvalidSpiffeId", "InvalidCertificate",
           "PeerMismatch"]

ALPN = "h2"

class IdentityError(ShoalError):
    """Base of identity errors: malformed IDs, CSRs or certificates, peer mismatches."""

    response_flag = "UPE"   # a connection that ends on one failed on the peer's identity


class InvalidSpiffeId(IdentityError, ValueError):
    pass


class InvalidCertificate(IdentityError):
    pass


class PeerMismatch(IdentityError):
    """The peer's certificate names another identity than the one expected."""


def parse_spiffe_id(uri: str) -> SpiffeId:
    """`spiffe://<td>/ns/<ns>/sa/<sa>` -> SpiffeId; InvalidSpiffeId (a ValueError) otherwise.

    The model's parser (lower-case DNS-name parts), with this module's error type.
    """
    try:
        return model_identity.parse_spiffe_id(uri)
    except ValueError as e:
        raise InvalidSpiffeId(str(e)) from None


def format_spiffe_id(trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
    """A validated SpiffeId (str() of it is the URI)."""
    return parse_spiffe_id(str(SpiffeId(trust_domain, namespace, service_account)))


# -- keys and CSRs --------------------------------------------------------------

def new_workload_key() -> EcKey:
    """An ECDSA P-256 key made by libcrypto: the proxies' (no `cryptography` loaded)."""
    return EcKey.generate()


def new_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key as a `cryptography` object (the control plane's; it signs with it)."""
    from cryptography.hazmat.primitives.asymmetric import ec   # noqa: PLC0415 - not in the proxies

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: EcKey | ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted."""
    if isinstance(key, EcKey):
        return key.pem()
    from cryptography.hazmat.primitives import serialization   # noqa: PLC0415

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization   # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec   # noqa: PLC0415

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidCertificate("the private key is not an ECDSA key; mesh keys are ECDSA P-256")
    return key


def make_csr(key: EcKey | ec.EllipticCurvePrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR for `identity`: empty subject, the SPIFFE URI as its only SAN (critical), ECDSA SHA-256."""
    if isinstance(key, EcKey):
        return key.csr_pem(str(identity))
    from cryptography import x509   # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization   # noqa: PLC0415

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# -- certificates ---------------------------------------------------------------

def read_certificates(pem: bytes) -> list[CertificateFacts]:
    """The validity and URI SANs of every certificate of a PEM list (the proxies' reading);
    InvalidCertificate if it holds none or one is not a certificate."""
    try:
        return x509_der.read_pem(pem)
    except x509_der.CertificateFormatError as e:
        raise InvalidCertificate(f"not a PEM certificate list: {e}") from None


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """`cryptography` certificates (the control plane's; it imports `cryptography`)."""
    from cryptography import x509   # noqa: PLC0415

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise InvalidCertificate(f"not a PEM certificate list: {e}") from None
    return certs


def certificates_pem(certs: list[x509.Certificate]) -> bytes:
    from cryptography.hazmat.primitives import serialization   # noqa: PLC0415

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def uri_sans(cert: CertificateFacts | x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    if isinstance(cert, CertificateFacts):
        return list(cert.uris)
    from cryptography import x509   # noqa: PLC0415
    from cryptography.x509.oid import ExtensionOID   # noqa: PLC0415

    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(cert: CertificateFacts | x509.Certificate | bytes) -> SpiffeId:
    """The SPIFFE ID of a certificate (DER bytes as `SSLObject.getpeercert(binary_form=True)`
    returns them, `CertificateFacts`, or a `cryptography` object)."""
    if isinstance(cert, (bytes, bytearray, memoryview)):
        try:
            cert = x509_der.read_der(bytes(cert))
        except x509_der.CertificateFormatError as e:
            raise InvalidCertificate(f"peer certificate is not DER X.509: {e}") from None
    # An X.509-SVID has exactly one URI SAN, its SPIFFE ID: a second URI of another scheme (or the
    # scheme in capitals) would make the identity depend on which URI a reader takes.
    uris = uri_sans(cert)
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(uris) != 1 or len(spiffe) != 1:
        raise InvalidCertificate(f"certificate has {len(spiffe)} SPIFFE URI SANs among {len(uris)} URI SANs; a "
                                 "mesh certificate (an X.509-SVID) has exactly one URI SAN, its SPIFFE ID")
    return parse_spiffe_id(spiffe[0])


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerMismatch("the peer presented no certificate")
    return spiffe_id_of(der)


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: SpiffeId | set[SpiffeId]) -> SpiffeId:
    """Checks the peer's SPIFFE ID after the handshake; returns it, raises PeerMismatch."""
    got = peer_spiffe_id(ssl_object)
    allowed = expected if isinstance(expected, (set, frozenset)) else {expected}
    if got not in allowed:
        want = ", ".join(sorted(str(x) for x in allowed))
        raise PeerMismatch(f"peer is {got}, expected {want}: check the destination's service account "
                           "and that both sides trust the same mesh root")
    return got


# -- credentials and TLS contexts -------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """A workload's key, its certificate chain (leaf first) and the trust bundle, all PEM."""

    identity: SpiffeId
    key_pem: bytes
    chain_pem: bytes
    bundle_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_pem(cls, key_pem_bytes: bytes, chain_pem: bytes, bundle_pem: bytes) -> "Credential":
        chain = read_certificates(chain_pem)
        if not chain:
            raise InvalidCertificate("empty certificate chain")
        leaf = chain[0]
        read_certificates(bundle_pem)
        return cls(spiffe_id_of(leaf), key_pem_bytes, chain_pem, bundle_pem, leaf.not_before, leaf.not_after)

    def renew_at(self) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) / 2

    def needs_renewal(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.renew_at()

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.not_after


def _base_context(purpose: ssl.Purpose, bundle_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # mesh certificates carry SPIFFE URIs, checked by check_peer
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    ctx.set_alpn_protocols([ALPN])
    return ctx


def load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem_bytes: bytes) -> None:
    """Loads a certificate chain and its key into `ctx` without writing the key to a disk."""
    # ssl loads key material only from files. Anonymous memory files (memfd, read through /proc/self/fd)
    # are never on a disk: a process killed during the call leaves no private key behind, as a
    # temporary directory would.
    fds: list[int] = []
    try:
        for content in (chain_pem, key_pem_bytes):
            fds.append(os.memfd_create("shoal-tls", os.MFD_CLOEXEC))
            view = memoryview(content)
            while view:
                view = view[os.write(fds[-1], view):]
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)


def server_context(credential: Credential) -> ssl.SSLContext:
    """TLS 1.3, ALPN h2, requires a client certificate that chains to the bundle."""
    ctx = _base_context(ssl.Purpose.CLIENT_AUTH, credential.bundle_pem)
    load_chain(ctx, credential.chain_pem, credential.key_pem)
    return ctx


def client_context(credential: Credential | None, bundle_pem: bytes | None = None) -> ssl.SSLContext:
    """TLS 1.3, ALPN h2, verifies the server's chain to the bundle; presents
    `credential` as the client certificate when given."""
    bundle = credential.bundle_pem if credential else bundle_pem
    if bundle is None:
        raise IdentityError("client_context needs a credential or a trust bundle")
    ctx = _base_context(ssl.Purpose.SERVER_AUTH, bundle)
    if credential is not None:
        load_chain(ctx, credential.chain_pem, credential.key_pem)
    return ctx
