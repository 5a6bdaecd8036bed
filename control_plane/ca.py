"""The mesh certificate authority.

It signs with one root at a time and publishes a trust bundle. The signer is
a self-signed root, or an intermediate given with its chain (`--ca-cert`
holding the intermediate, its issuers and the root); leaves then carry the
intermediates, and the bundle holds the root. Roots rotate in two phases
(`control_plane.rotation`): a new root is trusted first and signs one leaf
lifetime later; an old root stays trusted until the last leaf it signed has
expired. The CA holds the `Roots` and asks `rotation.advance` at each
signing, so a scheduled switch takes effect on time, whoever stores it.

Invariants:
- the signing root (or the root its chain ends at) is always in the bundle;
- a leaf is signed only for a CSR whose key is ECDSA P-256, whose signature is
  valid, and whose one and only SAN is the URI of the identity asked for, in
  this CA's trust domain (whether the caller may have that identity is decided
  by `control_plane.authz`, before the CA is asked);
- a leaf never outlives the root that signs it, nor lives longer than `leaf_ttl`.

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

from control_plane import rotation
from control_plane.errors import CaError
from control_plane.rotation import Roots
from shoal import identity
from shoal.identity import SpiffeId

DEFAULT_LEAF_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=5)  # leaves start a little in the past, for skewed peers
# Added to a leaf lifetime in each phase of a rotation: skewed clocks, and the time a new bundle
# takes to reach every proxy (a ConfigMap volume is refreshed about once a minute).
ROTATION_MARGIN = dt.timedelta(minutes=5)
CONTROL_PLANE_DNS = "shoal-control-plane.shoal-system.svc"

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
    key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)   # the certificate names it
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
    signer: str = ""  # the SHA-256 fingerprint of the root that signed it


class CertificateAuthority:
    """Signs mesh leaves with the root that signs now; publishes the trust bundle of now."""

    def __init__(self, roots: Root | Roots, trusted: list[x509.Certificate] | None = None, *,
                 trust_domain: str = identity.DEFAULT_TRUST_DOMAIN, leaf_ttl: dt.timedelta = DEFAULT_LEAF_TTL,
                 clock: Clock = utc_now, rotation_margin: dt.timedelta = ROTATION_MARGIN) -> None:
        self.trust_domain = trust_domain
        self.leaf_ttl = leaf_ttl
        self.clock = clock
        self.rotation_margin = rotation_margin
        self.roots = roots if isinstance(roots, Roots) else Roots.first(roots, trusted or [])
        self.roots.check()

    # -- bundle and rotation ---------------------------------------------------------

    @property
    def overlap(self) -> dt.timedelta:
        """How long a new root is trusted before it signs, and an old one stays after its last leaf."""
        return self.overlap_for(self.leaf_ttl, self.rotation_margin)

    @staticmethod
    def overlap_for(leaf_ttl: dt.timedelta, margin: dt.timedelta = ROTATION_MARGIN) -> dt.timedelta:
        return leaf_ttl + margin

    def current(self) -> Roots:
        """The roots at the clock's now: a switch or a retirement that fell due has taken effect."""
        self.roots = rotation.advance(self.roots, self.clock(), self.overlap)
        return self.roots

    @property
    def signer(self) -> Root:
        return self.current().signer

    @property
    def trusted(self) -> list[x509.Certificate]:
        return list(self.current().trusted)

    @property
    def bundle_pem(self) -> bytes:
        return self.current().bundle_pem

    def rotate(self, new_root: Root) -> None:
        """Phase 1 of a rotation, in memory: `new_root` is trusted now and signs after `overlap`."""
        self.roots = rotation.begin(self.current(), new_root, self.clock())

    def adopt(self, roots: Roots) -> bool:
        """Takes roots re-read from the RootStore (an operator rotated, another replica advanced);
        True if anything changed."""
        roots.check()
        roots = rotation.advance(roots, self.clock(), self.overlap)
        if roots == self.current():
            return False
        self.roots = roots
        return True

    def retire(self, fingerprint: str) -> None:
        """Takes a root out of the bundle at once (by hand; see rotation.retire)."""
        self.roots, _ = rotation.retire(self.current(), fingerprint)

    # -- signing ---------------------------------------------------------------------

    def sign(self, csr_pem: bytes, requested: SpiffeId, ttl: dt.timedelta | None = None) -> Issued:
        csr = self._check_csr(csr_pem, requested)
        ttl = min(ttl or self.leaf_ttl, self.leaf_ttl)
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(requested))])
        roots = self.current()    # one moment: the signer and the bundle that goes with the leaf
        cert = self._issue(roots.signer, csr.public_key(), san, ttl)
        chain = identity.certificates_pem([cert, *roots.signer.intermediates])
        return Issued(chain, roots.bundle_pem, cert.not_valid_after_utc, roots.signer.fingerprint)

    def issue_server(self, requested: SpiffeId, dns_names: list[str], ttl: dt.timedelta | None = None
                     ) -> identity.Credential:
        """A key and leaf for the control plane's own gRPC endpoint (SPIFFE URI plus DNS names)."""
        key = identity.new_key()
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(requested)),
                                           *(x509.DNSName(n) for n in dns_names)])
        roots = self.current()
        cert = self._issue(roots.signer, key.public_key(), san, min(ttl or self.leaf_ttl, self.leaf_ttl))
        return identity.Credential.from_pem(identity.key_pem(key),
                                            identity.certificates_pem([cert, *roots.signer.intermediates]),
                                            roots.bundle_pem)

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

    def _issue(self, signer: Root, public_key, san: x509.SubjectAlternativeName,
               ttl: dt.timedelta) -> x509.Certificate:
        now = self.clock()
        not_after = min(now + ttl, signer.cert.not_valid_after_utc)
        try:
            signer_ski = signer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer_ski)
        except x509.ExtensionNotFound:  # a plugged-in CA without SKI
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.cert.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(signer.cert.subject)
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
            .sign(signer.key, hashes.SHA256())
        )
