"""The mesh certificate authority.

One signing root and a trust bundle. The signer is a self-signed root, or an
intermediate given with its chain (`--ca-cert` holding the intermediate, its
issuers and the root); leaves then carry the intermediates, and the bundle
holds the root. The bundle holds the signing root plus any root being
rotated out: during a rotation leaves are signed by the new root
while leaves of the old one keep verifying, until the old root is removed.

Invariants:
- the signing root (or the root its chain ends at) is always in the bundle;
- a leaf is signed only for a CSR whose key is ECDSA P-256, whose signature is
  valid, and whose one and only SAN is the URI of the identity asked for, in
  this CA's trust domain (whether the caller may have that identity is decided
  by `control_plane.authz`, before the CA is asked);
- a leaf never outlives the root that signs it.

Roots are kept by a `RootStore` (`control_plane.ca_store`): files in the local
cluster, a Secret in Kubernetes, or read-only files given on the command line.
The clock is passed in so tests can move time.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.errors import ControlPlaneError
from shoal import identity
from shoal.identity import SpiffeId

DEFAULT_LEAF_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=5)  # leaves start a little in the past, for skewed peers
CONTROL_PLANE_DNS = "shoal-control-plane.shoal-system.svc"

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CaError(ControlPlaneError):
    """Base of the CA's errors."""


class CsrRefused(CaError):
    """The CSR is malformed, or does not match the identity it asks for."""


class RootInvalid(CaError):
    """A root certificate or key could not be used; the message says which and why."""


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@dataclass(frozen=True)
class Root:
    """The signing CA: its certificate and key and, when it is an intermediate
    (a plugged-in CA), the certificates above it up to a self-signed root."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    issuers: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """What a leaf's chain carries after the leaf: the signer and the issuers below the root."""
        return [c for c in [self.cert, *self.issuers] if not _self_signed(c)]

    @property
    def anchors(self) -> list[x509.Certificate]:
        """The self-signed root(s) this signer chains to: what goes in the trust bundle."""
        return [c for c in [self.cert, *self.issuers] if _self_signed(c)]

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """The signer and its issuers, as stored in ca.crt (a plain root: just itself)."""
        return identity.certificates_pem([self.cert, *self.issuers])

    def key_pem(self) -> bytes:
        return identity.key_pem(self.key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, *, source: str = "root") -> "Root":
        try:
            certs = identity.load_certificates(cert_pem)
            key = identity.load_key(key_pem)
        except (identity.IdentityError, ValueError, TypeError) as e:
            raise RootInvalid(f"{source}: cannot load the CA certificate/key: {e}") from None
        if not certs:
            raise RootInvalid(f"{source}: no certificate in the CA certificate file")
        cert = certs[0]
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise RootInvalid(f"{source}: the CA key does not belong to the CA certificate; check --ca-cert/--ca-key")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise RootInvalid(f"{source}: the certificate is not a CA (basicConstraints CA:TRUE is missing)")
        root = cls(cert, key, tuple(certs[1:]))
        if not root.anchors:
            raise RootInvalid(f"{source}: the CA certificate is an intermediate, but the file does not carry its "
                              "chain up to a self-signed root; append the issuers and the root to --ca-cert")
        return root


def generate_root(trust_domain: str, now: dt.datetime | None = None, ttl: dt.timedelta = ROOT_TTL) -> Root:
    now = now or utc_now()
    key = identity.new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"shoal mesh root {trust_domain} {secrets.token_hex(4)}"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain),
                                x509.DNSName("svc")],
            excluded_subtrees=None), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Root(cert, key)


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes  # leaf first
    bundle_pem: bytes
    not_after: dt.datetime


class CertificateAuthority:
    """Signs mesh leaves with the signing root; publishes the trust bundle."""

    def __init__(self, signer: Root, trusted: list[x509.Certificate] | None = None, *,
                 trust_domain: str = identity.DEFAULT_TRUST_DOMAIN,
                 leaf_ttl: dt.timedelta = DEFAULT_LEAF_TTL, clock: Clock = utc_now) -> None:
        self.trust_domain = trust_domain
        self.leaf_ttl = leaf_ttl
        self.clock = clock
        self.signer = signer
        self._trusted: dict[str, x509.Certificate] = {}
        for cert in [*signer.anchors, *(trusted or [])]:
            self._trusted[cert.fingerprint(hashes.SHA256()).hex()] = cert

    # -- bundle and rotation ---------------------------------------------------------

    @property
    def trusted(self) -> list[x509.Certificate]:
        return list(self._trusted.values())

    @property
    def bundle_pem(self) -> bytes:
        return identity.certificates_pem(self.trusted)

    def rotate(self, new_root: Root) -> None:
        """Signs with `new_root` from now on; the old roots stay trusted until `retire`d."""
        for cert in new_root.anchors:
            self._trusted[cert.fingerprint(hashes.SHA256()).hex()] = cert
        self.signer = new_root

    def replace_roots(self, signer: Root, trusted: list[x509.Certificate]) -> bool:
        """Adopts roots re-read from the RootStore (an operator rotated them); True if anything changed."""
        new = {c.fingerprint(hashes.SHA256()).hex(): c for c in [*signer.anchors, *trusted]}
        if signer.fingerprint == self.signer.fingerprint and new.keys() == self._trusted.keys():
            return False
        self.signer, self._trusted = signer, new
        return True

    def retire(self, fingerprint: str) -> None:
        if fingerprint in {c.fingerprint(hashes.SHA256()).hex() for c in self.signer.anchors}:
            raise CaError("cannot retire the signing root; rotate to a new root first")
        if self._trusted.pop(fingerprint, None) is None:
            raise CaError(f"no trusted root with fingerprint {fingerprint}")

    # -- signing ---------------------------------------------------------------------

    def sign(self, csr_pem: bytes, requested: SpiffeId, ttl: dt.timedelta | None = None) -> Issued:
        csr = self._check_csr(csr_pem, requested)
        ttl = min(ttl or self.leaf_ttl, self.leaf_ttl)
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(requested))])
        cert = self._issue(csr.public_key(), san, ttl)
        chain = identity.certificates_pem([cert, *self.signer.intermediates])
        return Issued(chain, self.bundle_pem, cert.not_valid_after_utc)

    def issue_server(self, requested: SpiffeId, dns_names: list[str], ttl: dt.timedelta | None = None
                     ) -> identity.Credential:
        """A key and leaf for the control plane's own gRPC endpoint (SPIFFE URI plus DNS names)."""
        key = identity.new_key()
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(requested)),
                                           *(x509.DNSName(n) for n in dns_names)])
        cert = self._issue(key.public_key(), san, ttl or self.leaf_ttl)
        return identity.Credential.from_pem(identity.key_pem(key),
                                            identity.certificates_pem([cert, *self.signer.intermediates]),
                                            self.bundle_pem)

    def _check_csr(self, csr_pem: bytes, requested: SpiffeId) -> x509.CertificateSigningRequest:
        if requested.trust_domain != self.trust_domain:
            raise CsrRefused(f"identity {requested} is outside this mesh's trust domain {self.trust_domain!r}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise CsrRefused(f"the CSR is not PEM PKCS#10: {e}") from None
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError):
            valid = False
        if not valid:
            raise CsrRefused("the CSR's signature does not verify with its own key")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise CsrRefused("the CSR's key is not ECDSA P-256; mesh keys are P-256 (shoal.identity.new_key)")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CsrRefused(f"the CSR has no SAN; it must carry exactly the URI {str(requested)}") from None
        names = list(san)
        if names != [x509.UniformResourceIdentifier(str(requested))]:
            shown = ", ".join(str(getattr(n, "value", n)) for n in names) or "none"
            raise CsrRefused(f"the CSR's SAN ({shown}) differs from the identity requested ({str(requested)})")
        return csr

    def _issue(self, public_key, san: x509.SubjectAlternativeName, ttl: dt.timedelta) -> x509.Certificate:
        now = self.clock()
        not_after = min(now + ttl, self.signer.cert.not_valid_after_utc)
        try:
            signer_ski = self.signer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer_ski)
        except x509.ExtensionNotFound:  # a plugged-in CA without SKI
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer.cert.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signer.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(san, critical=True)  # the subject is empty (RFC 5280 4.2.1.6)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(authority_key_id, critical=False)
            .sign(self.signer.key, hashes.SHA256())
        )
