"""The CA: chains verify with the real openssl, CSRs that lie are refused, rotation."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from control_plane import ca_store
from control_plane.ca import CertificateAuthority, CsrRefused, Root, RootInvalid, generate_root
from shoal import identity
from shoal.identity import SpiffeId

TD = "cluster.local"
ALICE = SpiffeId(TD, "shop", "alice")
BOB = SpiffeId(TD, "shop", "bob")


def openssl_verify(tmp_path, bundle: bytes, chain: bytes, name: str = "leaf",
                   at: dt.datetime | None = None) -> subprocess.CompletedProcess:
    (tmp_path / f"{name}-bundle.pem").write_bytes(bundle)
    (tmp_path / f"{name}.pem").write_bytes(chain)
    when = ["-attime", str(int(at.timestamp()))] if at else []
    return subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", "sslclient", *when,
                           "-CAfile", str(tmp_path / f"{name}-bundle.pem"), str(tmp_path / f"{name}.pem")],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority(generate_root(TD), trust_domain=TD)


def test_issued_chain_passes_openssl_verify(authority, tmp_path):
    key = identity.new_key()
    issued = authority.sign(identity.make_csr(key, ALICE), ALICE)
    result = openssl_verify(tmp_path, issued.bundle_pem, issued.chain_pem)
    assert result.returncode == 0, result.stdout + result.stderr
    leaf = identity.load_certificates(issued.chain_pem)[0]
    assert identity.spiffe_id_of(leaf) == ALICE
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(hours=24) <= lifetime <= dt.timedelta(hours=24, minutes=6)


def test_a_leaf_from_another_root_fails_openssl_verify(authority, tmp_path):
    stranger = CertificateAuthority(generate_root(TD), trust_domain=TD)
    issued = stranger.sign(identity.make_csr(identity.new_key(), ALICE), ALICE)
    result = openssl_verify(tmp_path, authority.bundle_pem, issued.chain_pem)
    assert result.returncode != 0


def test_ttl_is_configurable_and_capped(tmp_path):
    authority = CertificateAuthority(generate_root(TD), trust_domain=TD, leaf_ttl=dt.timedelta(hours=1))
    key = identity.new_key()
    short = authority.sign(identity.make_csr(key, ALICE), ALICE, ttl=dt.timedelta(minutes=10))
    long = authority.sign(identity.make_csr(key, ALICE), ALICE, ttl=dt.timedelta(days=30))
    now = dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=9) < short.not_after - now <= dt.timedelta(minutes=10)
    assert dt.timedelta(minutes=59) < long.not_after - now <= dt.timedelta(hours=1)


def test_san_mismatch_is_refused(authority):
    csr = identity.make_csr(identity.new_key(), BOB)
    with pytest.raises(CsrRefused, match="differs from the identity requested"):
        authority.sign(csr, ALICE)


def test_extra_san_is_refused(authority):
    key = identity.new_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(ALICE)),
                                                       x509.DNSName("evil.example")]), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CsrRefused, match="evil.example"):
        authority.sign(csr, ALICE)


def test_non_p256_key_is_refused(authority):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(ALICE))]), critical=True)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CsrRefused, match="P-256"):
        authority.sign(csr, ALICE)


def test_other_trust_domain_and_garbage_are_refused(authority):
    other = SpiffeId("evil.local", "shop", "alice")
    with pytest.raises(CsrRefused, match="trust domain"):
        authority.sign(identity.make_csr(identity.new_key(), other), other)
    with pytest.raises(CsrRefused, match="not PEM"):
        authority.sign(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n", ALICE)


def test_rotation_trusts_first_signs_later_then_retires(tmp_path):
    now = [dt.datetime.now(dt.timezone.utc)]
    old_root = generate_root(TD, now[0])
    authority = CertificateAuthority(old_root, trust_domain=TD, leaf_ttl=dt.timedelta(hours=1),
                                     clock=lambda: now[0])
    key = identity.new_key()
    old_leaf = authority.sign(identity.make_csr(key, ALICE), ALICE)

    new_root = generate_root(TD, now[0])
    authority.rotate(new_root)
    since = now[0]
    # Phase 1: both trusted (in every answer), the old root still signs, up to the end.
    now[0] = since + authority.overlap - dt.timedelta(minutes=1)
    trusting_leaf = authority.sign(identity.make_csr(key, ALICE), ALICE)
    assert len(identity.load_certificates(trusting_leaf.bundle_pem)) == 2
    assert trusting_leaf.signer == old_root.fingerprint
    # Phase 2, one leaf lifetime and the margin after the new root was trusted: it signs.
    now[0] = since + authority.overlap
    new_leaf = authority.sign(identity.make_csr(key, ALICE), ALICE)
    assert new_leaf.signer == new_root.fingerprint
    at = now[0] + dt.timedelta(seconds=1)
    # Each leaf verifies against the other's bundle: no two valid certificates distrust each other.
    assert openssl_verify(tmp_path, new_leaf.bundle_pem, trusting_leaf.chain_pem, "old", at).returncode == 0
    assert openssl_verify(tmp_path, trusting_leaf.bundle_pem, new_leaf.chain_pem, "new", at).returncode == 0
    # The new leaf chains to the new root and not to the old one.
    assert openssl_verify(tmp_path, new_root.cert_pem(), new_leaf.chain_pem, "new-only", at).returncode == 0
    assert openssl_verify(tmp_path, old_root.cert_pem(), new_leaf.chain_pem, "old-only", at).returncode != 0
    with pytest.raises(Exception, match="signing root"):
        authority.retire(new_root.fingerprint)
    # By hand, at once (an emergency): the old root's leaves stop verifying.
    authority.retire(old_root.fingerprint)
    assert openssl_verify(tmp_path, authority.bundle_pem, trusting_leaf.chain_pem, "old2", at).returncode != 0
    assert openssl_verify(tmp_path, authority.bundle_pem, new_leaf.chain_pem, "new2", at).returncode == 0


def test_file_store_generates_once_and_reloads(tmp_path):
    store = ca_store.FileRootStore(tmp_path / "ca")
    roots = ca_store.load_or_create(store, TD)
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    again = ca_store.load_or_create(ca_store.FileRootStore(tmp_path / "ca"), TD)
    assert again == roots and again.signer.fingerprint == roots.signer.fingerprint
    assert [c.fingerprint(hashes.SHA256()) for c in again.trusted] == [roots.signer.cert.fingerprint(hashes.SHA256())]


def test_file_store_missing_key_is_a_clear_error(tmp_path):
    store = ca_store.FileRootStore(tmp_path / "ca")
    ca_store.load_or_create(store, TD)
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(RootInvalid, match="ca.key is missing|ca.crt/ca.key is missing"):
        store.load()


def test_given_files_must_match(tmp_path):
    a, b = generate_root(TD), generate_root(TD)
    (tmp_path / "a.crt").write_bytes(a.cert_pem())
    (tmp_path / "b.key").write_bytes(b.key_pem())
    with pytest.raises(RootInvalid, match="does not belong"):
        ca_store.GivenFilesRootStore(tmp_path / "a.crt", tmp_path / "b.key").load()
    (tmp_path / "a.key").write_bytes(a.key_pem())
    roots = ca_store.GivenFilesRootStore(tmp_path / "a.crt", tmp_path / "a.key").load()
    assert roots.signer.fingerprint == a.fingerprint
    with pytest.raises(RootInvalid, match="cannot read"):
        ca_store.GivenFilesRootStore(tmp_path / "none.crt", tmp_path / "a.key").load()


def test_a_leaf_is_not_accepted_as_root():
    authority = CertificateAuthority(generate_root(TD), trust_domain=TD)
    key = identity.new_key()
    leaf = authority.sign(identity.make_csr(key, ALICE), ALICE)
    with pytest.raises(RootInvalid, match="not a CA"):
        Root.from_pem(leaf.chain_pem, identity.key_pem(key))


def _ca(name: str, issuer: Root | None, path_length: int) -> Root:
    """An operator's own CA certificates (no SKI on purpose: not every CA has one)."""
    from cryptography.x509.oid import NameOID
    key = identity.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(issuer.key if issuer else key, hashes.SHA256()))
    return Root(cert, key)


def test_a_plugged_in_intermediate_signs_and_chains_to_its_root(tmp_path):
    operator_root = _ca("example corp root", None, 1)
    inter = _ca("cluster-a intermediate", operator_root, 0)
    (tmp_path / "ca.crt").write_bytes(inter.cert_pem() + operator_root.cert_pem())
    (tmp_path / "ca.key").write_bytes(inter.key_pem())
    roots = ca_store.GivenFilesRootStore(tmp_path / "ca.crt", tmp_path / "ca.key").load()
    authority = CertificateAuthority(roots, trust_domain=TD)
    assert [c.subject for c in authority.trusted] == [operator_root.cert.subject]
    issued = authority.sign(identity.make_csr(identity.new_key(), ALICE), ALICE)
    chain = identity.load_certificates(issued.chain_pem)
    assert len(chain) == 2 and chain[1] == inter.cert
    (tmp_path / "bundle.pem").write_bytes(issued.bundle_pem)
    (tmp_path / "chain.pem").write_bytes(issued.chain_pem)
    (tmp_path / "leaf.pem").write_bytes(identity.certificates_pem(chain[:1]))
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem"), "-untrusted",
                         str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Without its intermediate the leaf does not verify: the chain must carry it.
    assert openssl_verify(tmp_path, issued.bundle_pem, identity.certificates_pem(chain[:1]), "bare").returncode != 0
    # An intermediate given without its root is refused with what to do.
    (tmp_path / "only.crt").write_bytes(inter.cert_pem())
    with pytest.raises(RootInvalid, match="append the issuers and the root"):
        ca_store.GivenFilesRootStore(tmp_path / "only.crt", tmp_path / "ca.key").load()
