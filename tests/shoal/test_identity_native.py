"""The proxies' key, CSR and certificate reading without `cryptography`: libcrypto (shoal.libcrypto)
and the DER reader (shoal.x509_der), held to what `cryptography` reads from the same bytes, and to the
control plane's CA, which checks the CSR."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.ca import CertificateAuthority, generate_root
from shoal import identity, x509_der
from shoal.identity import InvalidCertificate, parse_spiffe_id
from shoal.libcrypto import EcKey

from support.ca import TestCA

WEB = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/web")


def leaf(ca: TestCA, sans: list[x509.GeneralName], not_before: dt.datetime, lifetime: dt.timedelta) -> bytes:
    """A DER leaf with exactly `sans` (no SAN extension when empty), signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + lifetime))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_the_workload_key_and_csr_are_what_the_control_planes_ca_signs():
    key = identity.new_workload_key()
    csr_pem = identity.make_csr(key, WEB)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid and csr.signature_hash_algorithm.name == "sha256"
    assert isinstance(csr.public_key().curve, ec.SECP256R1)
    assert csr.subject == x509.Name([])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(str(WEB))]
    assert len(csr.extensions) == 1
    # The same shape as the cryptography-made CSR (version, subject, key, the one extension request).
    made_before = x509.load_pem_x509_csr(identity.make_csr(identity.new_key(), WEB))
    assert [a.oid for a in csr.attributes] == [a.oid for a in made_before.attributes]
    # The key's PEM is PKCS#8 and is the CSR's key.
    loaded = serialization.load_pem_private_key(identity.key_pem(key), password=None)
    assert identity.key_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert loaded.public_key().public_numbers() == csr.public_key().public_numbers()

    authority = CertificateAuthority(generate_root("cluster.local"), trust_domain="cluster.local")
    issued = authority.sign(csr_pem, WEB)
    credential = identity.Credential.from_pem(identity.key_pem(key), issued.chain_pem, issued.bundle_pem)
    assert credential.identity == WEB and not credential.expired()
    assert credential.not_after == issued.not_after


def test_two_keys_differ_and_a_key_signs_many_requests():
    a, b = identity.new_workload_key(), identity.new_workload_key()
    assert identity.key_pem(a) != identity.key_pem(b)
    first, second = identity.make_csr(a, WEB), identity.make_csr(a, WEB)
    assert (x509.load_pem_x509_csr(first).public_key().public_numbers()
            == x509.load_pem_x509_csr(second).public_key().public_numbers())


def test_the_der_reader_agrees_with_cryptography_on_a_ca_issued_chain():
    ca = TestCA()
    credential = ca.credential(str(WEB), lifetime=dt.timedelta(hours=3))
    ours = identity.read_certificates(credential.chain_pem + ca.bundle_pem)
    theirs = x509.load_pem_x509_certificates(credential.chain_pem + ca.bundle_pem)
    assert len(ours) == len(theirs) == 2
    for facts, cert in zip(ours, theirs):
        assert facts.der == cert.public_bytes(serialization.Encoding.DER)
        assert (facts.not_before, facts.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
        assert identity.uri_sans(facts) == identity.uri_sans(cert)
    assert identity.spiffe_id_of(ours[0].der) == identity.spiffe_id_of(theirs[0]) == WEB
    assert credential.not_after - credential.not_before == dt.timedelta(hours=3)


def test_a_server_certificate_with_dns_names_has_its_one_spiffe_id():
    ca = TestCA()
    now = dt.datetime.now(dt.timezone.utc)
    der = leaf(ca, [x509.UniformResourceIdentifier(str(WEB)), x509.DNSName("svc.example")], now, dt.timedelta(hours=1))
    assert identity.spiffe_id_of(der) == WEB


@pytest.mark.parametrize("garbage", [b"", b"\x30", b"\x30\x03\x02\x01", b"not a certificate at all",
                                     b"\x30\x82\x00\x05\x02\x01\x01\x05\x00", b"\x04\x02ab"])
def test_garbage_der_is_refused(garbage):
    with pytest.raises(InvalidCertificate, match="not DER X.509"):
        identity.spiffe_id_of(garbage)


def test_a_truncated_or_extended_certificate_is_refused():
    der = leaf(TestCA(), [x509.UniformResourceIdentifier(str(WEB))], dt.datetime.now(dt.timezone.utc),
               dt.timedelta(hours=1))
    for broken in (der[:-1], der[:len(der) // 2], der + b"\x00"):
        with pytest.raises(InvalidCertificate):
            identity.spiffe_id_of(broken)


def test_no_uri_san_or_two_are_refused():
    ca, now = TestCA(), dt.datetime.now(dt.timezone.utc)
    none = leaf(ca, [], now, dt.timedelta(hours=1))
    dns_only = leaf(ca, [x509.DNSName("a.example")], now, dt.timedelta(hours=1))
    two = leaf(ca, [x509.UniformResourceIdentifier(str(WEB)),
                    x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/other")], now, dt.timedelta(hours=1))
    for der in (none, dns_only):
        with pytest.raises(InvalidCertificate, match="0 SPIFFE URI SANs"):
            identity.spiffe_id_of(der)
    with pytest.raises(InvalidCertificate, match="2 SPIFFE URI SANs"):
        identity.spiffe_id_of(two)


def test_an_expired_credential_is_expired_and_due():
    ca = TestCA()
    key = identity.new_workload_key()
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    chain = ca.sign_csr(identity.make_csr(key, WEB), dt.timedelta(hours=1), not_before=start)
    credential = identity.Credential.from_pem(identity.key_pem(key), chain, ca.bundle_pem)
    assert credential.expired() and credential.needs_renewal()
    assert credential.not_after == start.replace(microsecond=0) + dt.timedelta(hours=1)
    fresh = identity.Credential.from_pem(identity.key_pem(key), ca.sign_csr(identity.make_csr(key, WEB)),
                                         ca.bundle_pem)
    assert not fresh.expired() and not fresh.needs_renewal()


def test_pem_lists_without_certificates_are_refused():
    with pytest.raises(InvalidCertificate, match="no PEM CERTIFICATE block"):
        identity.read_certificates(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InvalidCertificate, match="PEM block 1"):
        identity.read_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidCertificate):
        identity.Credential.from_pem(b"", b"junk", TestCA().bundle_pem)


def test_generalized_and_utc_times_are_read():
    ca = TestCA()
    late = dt.datetime(2051, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)   # 2050 on: GeneralizedTime
    facts = x509_der.read_der(leaf(ca, [x509.UniformResourceIdentifier(str(WEB))], late, dt.timedelta(days=1)))
    assert facts.not_before == late and facts.not_after == late + dt.timedelta(days=1)
    early = dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    facts = x509_der.read_der(leaf(ca, [x509.UniformResourceIdentifier(str(WEB))], early, dt.timedelta(days=1)))
    assert facts.not_before == early


def test_a_libcrypto_key_is_freed_and_its_pem_survives():
    pem = EcKey.generate().pem()
    assert serialization.load_pem_private_key(pem, password=None).curve.name == "secp256r1"


def test_a_failed_push_of_the_uri_name_frees_the_name_it_made(monkeypatch):
    from shoal import libcrypto

    freed = []
    real_free = libcrypto._lib.GENERAL_NAME_free
    monkeypatch.setattr(libcrypto._lib, "OPENSSL_sk_push", lambda stack, item: 0)
    monkeypatch.setattr(libcrypto._lib, "GENERAL_NAME_free", lambda name: (freed.append(name), real_free(name)))
    with pytest.raises(libcrypto.LibcryptoError, match="OPENSSL_sk_push"):
        EcKey.generate().csr_pem(str(WEB))
    assert len(freed) == 1 and freed[0]


def der_element(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def content_of(element: bytes) -> bytes:
    _, start, end = x509_der._element(element, 0, len(element))
    return element[start:end]


def with_tbs_fields(der: bytes, change) -> bytes:
    """The certificate `der` with its to-be-signed fields (each element's bytes) passed through `change`."""
    _, start, end = x509_der._element(der, 0, len(der))
    tbs = x509_der._children(der, start, end)[0]
    fields = [der[at:field_end] for at, field_end in _starts_and_ends(der, tbs[1], tbs[2])]
    return der_element(0x30, der_element(0x30, b"".join(change(fields))) + der[tbs[2]:end])


def _starts_and_ends(der: bytes, at: int, end: int):
    while at < end:
        field_end = x509_der._element(der, at, end)[2]
        yield at, field_end
        at = field_end


def test_ambiguous_certificate_structure_is_refused():
    der = leaf(TestCA(), [x509.UniformResourceIdentifier(str(WEB))], dt.datetime.now(dt.timezone.utc),
               dt.timedelta(hours=1))
    assert with_tbs_fields(der, lambda fields: fields) == der
    broken = {
        "two extension fields": with_tbs_fields(der, lambda f: f + f[-1:]),
        "an unknown field": with_tbs_fields(der, lambda f: f[:-1] + [der_element(0xA4, b"")] + f[-1:]),
        "bytes after the extensions": with_tbs_fields(
            der, lambda f: f[:-1] + [der_element(0xA3, content_of(f[-1]) + b"\x05\x00")]),
        "a multi-byte tag": with_tbs_fields(der, lambda f: f + [b"\xbf\x1f\x00"]),
    }
    for bad in broken.values():
        with pytest.raises(InvalidCertificate, match="not DER X.509"):
            identity.spiffe_id_of(bad)


def test_a_second_uri_of_another_scheme_is_refused():
    # An X.509-SVID has one URI SAN: a reader that took the other URI would see another identity.
    ca, now = TestCA(), dt.datetime.now(dt.timezone.utc)
    for other in ("https://shop.example/web", "SPIFFE://cluster.local/ns/shop/sa/admin"):
        der = leaf(ca, [x509.UniformResourceIdentifier(str(WEB)), x509.UniformResourceIdentifier(other)], now,
                   dt.timedelta(hours=1))
        with pytest.raises(InvalidCertificate, match="1 SPIFFE URI SANs among 2 URI SANs"):
            identity.spiffe_id_of(der)


def with_san(der: bytes, names: bytes) -> bytes:
    """`der` with its extensions replaced by one subject alternative name holding the GeneralNames `names`."""
    extension = der_element(0x30, der_element(0x06, x509_der.SUBJECT_ALT_NAME) + der_element(0x01, b"\xff")
                            + der_element(0x04, der_element(0x30, names)))
    return with_tbs_fields(der, lambda f: f[:-1] + [der_element(0xA3, der_element(0x30, extension))])


def test_subject_alternative_names_are_read_strictly():
    der = leaf(TestCA(), [x509.UniformResourceIdentifier(str(WEB))], dt.datetime.now(dt.timezone.utc),
               dt.timedelta(hours=1))
    uri = der_element(0x86, str(WEB).encode())
    good = with_san(der, der_element(0x82, b"web.shop") + der_element(0x87, bytes(4)) + uri)
    assert identity.spiffe_id_of(good) == WEB
    assert identity.spiffe_id_of(with_san(der, der_element(0x87, bytes(16)) + uri)) == WEB
    broken = {
        "empty subject alternative name": b"",
        "unknown kind \\(tag 0x89\\)": der_element(0x89, b"x") + uri,
        "IP address name of 5 bytes": der_element(0x87, bytes(5)) + uri,
        "DNS name that is not ASCII": der_element(0x82, "wéb".encode()) + uri,
        "URI name that is not ASCII": der_element(0x86, "spiffe://cluster.local/ns/shop/sa/wéb".encode()),
    }
    for why, names in broken.items():
        with pytest.raises(InvalidCertificate, match=why):
            identity.spiffe_id_of(with_san(der, names))


def test_a_pem_block_without_its_end_line_is_refused():
    ca = TestCA()
    pem = ca.sign_csr(identity.make_csr(identity.new_workload_key(), WEB))
    assert identity.read_certificates(pem)
    cut = pem + b"-----BEGIN CERTIFICATE-----\n" + pem.split(b"\n")[1] + b"\n"      # truncated third block
    with pytest.raises(InvalidCertificate, match="lacks its END CERTIFICATE line"):
        identity.read_certificates(cut)
    inner = b"-----BEGIN CERTIFICATE-----\nAAAA\n" + pem                          # an unended block before a whole one
    with pytest.raises(InvalidCertificate, match="lacks its END CERTIFICATE line"):
        identity.read_certificates(inner)


def test_a_libcrypto_without_the_openssl_3_calls_is_refused_by_name():
    from shoal import libcrypto

    with pytest.raises(libcrypto.LibcryptoError, match="libc.so.6 has no EVP_PKEY_CTX_new_from_name: .*OpenSSL 3.0"):
        libcrypto._bind("libc.so.6")


def test_a_process_killed_while_loading_its_key_leaves_no_key_on_disk(tmp_path):
    # ssl reads the key from a file; killed in the middle of that call, the process must leave no copy of
    # the private key in the temporary directory (or anywhere on disk).
    import subprocess
    import sys

    credential = TestCA().credential(str(WEB))
    script = (
        "import os, ssl, sys\n"
        "from shoal import identity\n"
        "ssl.SSLContext.load_cert_chain = lambda self, *a, **k: os._exit(3)   # killed mid-call\n"
        "cred = identity.Credential.from_pem(*(bytes.fromhex(x) for x in sys.argv[1:]))\n"
        "identity.server_context(cred)\n")
    args = [credential.key_pem.hex(), credential.chain_pem.hex(), credential.bundle_pem.hex()]
    done = subprocess.run([sys.executable, "-c", script, *args], env={**os.environ, "TMPDIR": str(tmp_path)},
                          capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr.decode()
    assert [p for p in tmp_path.rglob("*")] == []


def test_version_and_criticality_are_read_as_der_writes_them():
    der = leaf(TestCA(), [x509.UniformResourceIdentifier(str(WEB))], dt.datetime.now(dt.timezone.utc),
               dt.timedelta(hours=1))
    version = der_element(0xA0, der_element(0x02, b"\x02"))
    names = der_element(0x86, str(WEB).encode())
    extension = lambda critical: der_element(0xA3, der_element(0x30, der_element(  # noqa: E731
        0x30, der_element(0x06, x509_der.SUBJECT_ALT_NAME) + critical + der_element(0x04, der_element(0x30, names)))))
    broken = {
        "v1 is left out": lambda f: [der_element(0xA0, der_element(0x02, b"\x00"))] + f[1:],
        "holds the INTEGER 1": lambda f: [der_element(0xA0, der_element(0x02, b"\x03"))] + f[1:],
        "extensions in a v1 certificate": lambda f: f[1:],
        "extensions in a v2 certificate": lambda f: [der_element(0xA0, der_element(0x02, b"\x01"))] + f[1:],
        "TRUE as 0xff": lambda f: f[:-1] + [extension(der_element(0x01, b"\x01"))],
        "criticality: expected tag 0x01": lambda f: f[:-1] + [extension(der_element(0x02, b"\x01"))],
    }
    assert identity.spiffe_id_of(with_tbs_fields(der, lambda f: f[:-1] + [extension(der_element(0x01, b"\xff"))])) == WEB
    assert identity.spiffe_id_of(with_tbs_fields(der, lambda f: f[:-1] + [extension(b"")])) == WEB
    assert with_tbs_fields(der, lambda f: [version] + f[1:]) == der    # a v3 certificate, as cryptography writes it
    for why, change in broken.items():
        with pytest.raises(InvalidCertificate, match=why):
            identity.spiffe_id_of(with_tbs_fields(der, change))
