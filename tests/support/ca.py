"""A throwaway mesh CA for the proxies' tests: a self-signed P-256 root that signs CSRs and makes
whole credentials. The control plane's own CA (control_plane.ca) is tested on its own."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal import identity


class TestCA:
    __test__ = False

    def __init__(self, name: str = "shoal test root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def sign_csr(self, csr_pem: bytes, lifetime: dt.timedelta = dt.timedelta(hours=24),
                 not_before: dt.datetime | None = None) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + lifetime)
            .add_extension(x509.SubjectAlternativeName(list(san)), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def credential(self, uri: str, lifetime: dt.timedelta = dt.timedelta(hours=24)) -> identity.Credential:
        spiffe = identity.parse_spiffe_id(uri)
        key = identity.new_key()
        chain = self.sign_csr(identity.make_csr(key, spiffe), lifetime)
        return identity.Credential.from_pem(identity.key_pem(key), chain, self.bundle_pem)

    async def sign(self, key, who: identity.SpiffeId) -> identity.Credential:
        """A `shoal.certs` signer: signs `who` with `key`, as the control plane's Certificates.Sign would."""
        chain = self.sign_csr(identity.make_csr(key, who))
        return identity.Credential.from_pem(identity.key_pem(key), chain, self.bundle_pem)
