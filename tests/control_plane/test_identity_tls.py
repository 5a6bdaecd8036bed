"""shoal.identity: SPIFFE IDs, CSRs, and real mTLS handshakes with the contexts it builds."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from control_plane.ca import CertificateAuthority, generate_root
from shoal import identity, model
from shoal.identity import SpiffeId

TD = "cluster.local"


def credential(authority: CertificateAuthority, who: SpiffeId) -> identity.Credential:
    key = identity.new_key()
    issued = authority.sign(identity.make_csr(key, who), who)
    return identity.Credential.from_pem(identity.key_pem(key), issued.chain_pem, issued.bundle_pem)


@pytest.mark.parametrize("uri", [
    "spiffe://cluster.local/ns/default/sa/default",
    "spiffe://example.org/ns/shop-1/sa/reviews.v2",
])
def test_parse_and_format_round_trip(uri):
    sid = identity.parse_spiffe_id(uri)
    assert str(sid) == uri
    assert identity.format_spiffe_id(sid.trust_domain, sid.namespace, sid.service_account) == sid


@pytest.mark.parametrize("uri", [
    "", "http://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a", "spiffe://cluster.local/ns/A/sa/b",
    "spiffe://cluster.local/ns/a/sa/b/extra", "spiffe://cluster.local/sa/b/ns/a", "spiffe:///ns/a/sa/b",
])
def test_parse_refuses_non_identities(uri):
    with pytest.raises(identity.InvalidSpiffeId, match="expected spiffe://"):
        identity.parse_spiffe_id(uri)
    # The model's parser is the same grammar, with a plain ValueError.
    with pytest.raises(ValueError, match="expected spiffe://"):
        model.parse_spiffe_id(uri)


def test_csr_carries_exactly_the_uri_san():
    from cryptography import x509
    who = SpiffeId(TD, "ns1", "sa1")
    csr = x509.load_pem_x509_csr(identity.make_csr(identity.new_key(), who))
    assert identity.uri_sans(csr) == [str(who)]
    assert csr.is_signature_valid


def test_credential_renews_at_half_life():
    authority = CertificateAuthority(generate_root(TD), trust_domain=TD)
    cred = credential(authority, SpiffeId(TD, "a", "b"))
    assert not cred.needs_renewal()
    assert cred.needs_renewal(cred.renew_at())
    assert cred.expired(cred.not_after)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    result: dict = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["server_peer"] = identity.peer_spiffe_id(tls)
                result["server_alpn"] = tls.selected_alpn_protocol()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            result["server_error"] = e

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client_ctx.wrap_socket(raw) as tls:
                result["version"] = tls.version()
                result["client_peer"] = identity.peer_spiffe_id(tls)
                result["data"] = tls.recv(2)
                result["tls"] = tls
    finally:
        thread.join(5)
        listener.close()
    return result


def test_mutual_tls_between_two_identities():
    authority = CertificateAuthority(generate_root(TD), trust_domain=TD)
    server_id, client_id = SpiffeId(TD, "shop", "server"), SpiffeId(TD, "shop", "client")
    r = _handshake(identity.server_context(credential(authority, server_id)),
                   identity.client_context(credential(authority, client_id)))
    assert r["version"] == "TLSv1.3"
    assert r["server_alpn"] == "h2"
    assert r["server_peer"] == client_id and r["client_peer"] == server_id
    assert r["data"] == b"ok"


def test_a_client_from_another_mesh_is_rejected():
    authority = CertificateAuthority(generate_root(TD), trust_domain=TD)
    stranger = CertificateAuthority(generate_root(TD), trust_domain=TD)
    with pytest.raises(ssl.SSLError):
        _handshake(identity.server_context(credential(authority, SpiffeId(TD, "a", "s"))),
                   identity.client_context(credential(stranger, SpiffeId(TD, "a", "c"))))


def test_check_peer_names_both_identities():
    authority = CertificateAuthority(generate_root(TD), trust_domain=TD)
    server_id = SpiffeId(TD, "shop", "server")

    class FakeSsl:  # getpeercert is all check_peer reads
        def getpeercert(self, binary_form=False):
            from cryptography.hazmat.primitives import serialization
            chain = credential(authority, server_id).chain_pem
            return identity.load_certificates(chain)[0].public_bytes(serialization.Encoding.DER)

    assert identity.check_peer(FakeSsl(), server_id) == server_id
    with pytest.raises(identity.PeerMismatch, match="spiffe://cluster.local/ns/shop/sa/server.*expected"):
        identity.check_peer(FakeSsl(), SpiffeId(TD, "shop", "other"))


def test_mutual_tls_through_a_plugged_in_intermediate():
    from test_ca import _ca
    operator_root = _ca("example corp root", None, 1)
    inter = _ca("cluster-a intermediate", operator_root, 0)
    from control_plane.ca import Root
    authority = CertificateAuthority(Root(inter.cert, inter.key, (operator_root.cert,)), trust_domain=TD)
    server_id, client_id = SpiffeId(TD, "shop", "server"), SpiffeId(TD, "shop", "client")
    r = _handshake(identity.server_context(credential(authority, server_id)),
                   identity.client_context(credential(authority, client_id)))
    assert r["server_peer"] == client_id and r["client_peer"] == server_id
