"""Roots rotate without an outage (issue 9, item 7): the schedule as a pure function of time, the
property that no two valid certificates ever distrust each other (Hypothesis, a fake clock), and
the bundle the control plane publishes over time: the local cluster's bundle file and the
root-cert ConfigMap, as the root keeper stores and publishes them."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st
from kubernetes import client

from control_plane import ca_store, rotation
from control_plane.app import RootKeeper, describe_roots, publish_bundle
from control_plane.ca import CaError, CertificateAuthority, generate_root
from control_plane.rotation import Roots, RotationRefused, fingerprint
from shoal import identity
from shoal.identity import SpiffeId

from support.kube_api import CA_CONFIGMAP, ApiDouble

TD = "cluster.local"
ALICE = SpiffeId(TD, "shop", "alice")
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
OVERLAP = dt.timedelta(hours=24, minutes=5)
SECOND = dt.timedelta(seconds=1)

R1, R2, R3 = (generate_root(TD, T0 - dt.timedelta(days=1)) for _ in range(3))


def fp(root) -> str:
    return root.fingerprint


def test_the_new_root_is_trusted_first_signs_one_overlap_later_and_the_old_one_leaves_one_after_that():
    begun = rotation.begin(Roots.first(R1), R2, T0)
    assert begun == Roots(R1, (R1.cert, R2.cert), incoming=R2, incoming_since=T0)
    switched = Roots(R2, (R1.cert, R2.cert), retiring=((fp(R1), T0 + 2 * OVERLAP),))
    done = Roots(R2, (R2.cert,))
    timeline = [
        (T0, begun),
        (T0 + OVERLAP - SECOND, begun),             # every certificate issued before T0 may still be valid
        (T0 + OVERLAP, switched),                   # none is: the new root signs
        (T0 + 2 * OVERLAP - SECOND, switched),      # the old root's last leaf may still be valid
        (T0 + 2 * OVERLAP, done),
        (T0 + 9 * OVERLAP, done),
    ]
    for at, expected in timeline:
        assert rotation.advance(begun, at, OVERLAP) == expected, at
    # Stepping through gives what a control plane down for the whole time finds on its return.
    assert rotation.advance(rotation.advance(begun, T0 + OVERLAP, OVERLAP), T0 + 2 * OVERLAP, OVERLAP) == done
    assert rotation.advance(done, T0 + 9 * OVERLAP, OVERLAP) is done    # nothing to store


def test_a_second_rotation_while_the_first_old_root_retires_trusts_three():
    switched = rotation.advance(rotation.begin(Roots.first(R1), R2, T0), T0 + OVERLAP, OVERLAP)
    again = rotation.begin(switched, R3, T0 + OVERLAP + SECOND)
    assert again == Roots(R2, (R1.cert, R2.cert, R3.cert), incoming=R3, incoming_since=T0 + OVERLAP + SECOND,
                          retiring=((fp(R1), T0 + 2 * OVERLAP),))
    at = T0 + 2 * OVERLAP + SECOND
    assert rotation.advance(again, at, OVERLAP) == Roots(R3, (R2.cert, R3.cert),
                                                          retiring=((fp(R2), at + OVERLAP),))


def test_rotation_refusals_and_retiring_by_hand():
    begun = rotation.begin(Roots.first(R1), R2, T0)
    with pytest.raises(RotationRefused, match="under way"):
        rotation.begin(begun, R3, T0 + SECOND)
    with pytest.raises(RotationRefused, match="trusted already"):
        rotation.begin(Roots.first(R1), R1, T0)
    with pytest.raises(CaError, match="signing root"):
        rotation.retire(begun, fp(R1)[:12])
    with pytest.raises(CaError, match="at least 8"):
        rotation.retire(begun, "abc")
    # Retiring the incoming root cancels the rotation: it signed nothing.
    cancelled, cert = rotation.retire(begun, fp(R2)[:12])
    assert cancelled == Roots.first(R1) and cert == R2.cert
    # A rotated-out root, by hand before its time (an emergency).
    switched = rotation.advance(begun, T0 + OVERLAP, OVERLAP)
    assert rotation.retire(switched, fp(R1)[:12])[0] == Roots(R2, (R2.cert,))


# -- the property: any two certificates valid at the same moment trust each other ------------------

LEAF_TTL = dt.timedelta(hours=1)
KEY = identity.new_key()
CSR = identity.make_csr(KEY, ALICE)

actions = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.integers(1, 3 * 3600)),
    st.tuples(st.just("sign"), st.integers(60, 3600)),
    st.tuples(st.just("rotate"), st.just(0)),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(actions)
def test_no_two_valid_certificates_ever_distrust_each_other(steps):
    now = [T0]
    authority = CertificateAuthority(generate_root(TD, T0), trust_domain=TD, leaf_ttl=LEAF_TTL,
                                     clock=lambda: now[0])
    issued = []   # (not_after, the root that signed it, the roots its bundle trusts)
    for action, amount in steps:
        if action == "wait":
            now[0] += dt.timedelta(seconds=amount)
        elif action == "sign":
            leaf = authority.sign(CSR, ALICE, dt.timedelta(seconds=amount))
            bundle = {fingerprint(c) for c in identity.load_certificates(leaf.bundle_pem)}
            issued.append((leaf.not_after, leaf.signer, bundle))
        else:
            try:
                authority.rotate(generate_root(TD, now[0]))
            except RotationRefused:
                pass
        valid = [leaf for leaf in issued if leaf[0] > now[0]]
        published = {fingerprint(c) for c in authority.trusted}
        for not_after, signer, bundle in valid:
            assert signer in published, "a valid leaf's root left the published bundle"
            for _, other_signer, _ in valid:
                assert other_signer in bundle, "a holder of a valid certificate distrusts another valid one"
        roots = authority.current()
        idle = published - {fingerprint(c) for c in roots.signer.anchors} - (
            {fingerprint(c) for c in roots.incoming.anchors} if roots.incoming else set())
        assert idle == {f for f, _ in roots.retiring}, "a rotated-out root stays with no date to leave"


# -- the bundle the control plane publishes, over time -----------------------------------------------

class Keeping:
    """A store, a CA on a fake clock, and the root keeper between them, as the control plane wires them."""

    def __init__(self, store: ca_store.RootStore, publish=None) -> None:
        self.now = T0
        self.store = store
        self.authority = CertificateAuthority(ca_store.load_or_create(store, TD, self.now), trust_domain=TD,
                                              leaf_ttl=LEAF_TTL, clock=lambda: self.now)
        self.keeper = RootKeeper(store, self.authority, publish)
        self.keeper.step()

    def at(self, when: dt.datetime) -> None:
        self.now = when
        self.keeper.step()

    def answer_bundle(self) -> list[str]:
        return [fingerprint(c) for c in identity.load_certificates(self.authority.sign(CSR, ALICE).bundle_pem)]


def fingerprints(pem: bytes | str) -> list[str]:
    return [fingerprint(c) for c in identity.load_certificates(pem if isinstance(pem, bytes) else pem.encode())]


def test_the_bundle_file_over_a_rotation(tmp_path):
    bundle_file = tmp_path / "ca" / "bundle.pem"
    store = ca_store.FileRootStore(tmp_path / "ca")
    keeping = Keeping(store, lambda pem: publish_bundle(bundle_file, pem))
    old = keeping.authority.signer
    assert fingerprints(bundle_file.read_bytes()) == [fp(old)]

    began = T0 + dt.timedelta(minutes=1)
    new = ca_store.begin_rotation(store, TD, began).incoming      # what `--rotate-ca` does
    assert fingerprints(bundle_file.read_bytes()) == [fp(old), fp(new)]   # trusted at once, on disk
    keeping.at(began + SECOND)
    assert keeping.answer_bundle() == [fp(old), fp(new)]          # and in every Sign answer
    assert keeping.authority.sign(CSR, ALICE).signer == fp(old)    # but not signing yet
    with pytest.raises(RotationRefused, match="under way"):
        ca_store.begin_rotation(store, TD, began + SECOND)

    overlap = keeping.authority.overlap
    keeping.at(began + overlap - SECOND)
    assert keeping.authority.sign(CSR, ALICE).signer == fp(old)
    keeping.at(began + overlap)
    assert keeping.authority.sign(CSR, ALICE).signer == fp(new)
    stored = store.load()
    assert stored.signer == new and stored.retiring == ((fp(old), began + 2 * overlap),)
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == new.chain_pem()
    assert not (tmp_path / "ca" / "incoming.key").exists()
    assert fingerprints(bundle_file.read_bytes()) == [fp(old), fp(new)]

    keeping.at(began + 2 * overlap - SECOND)
    assert fingerprints(bundle_file.read_bytes()) == [fp(old), fp(new)]
    keeping.at(began + 2 * overlap)
    assert fingerprints(bundle_file.read_bytes()) == [fp(new)]
    assert keeping.answer_bundle() == [fp(new)]
    assert store.load() == Roots.first(new) == keeping.authority.current()
    assert not (tmp_path / "ca" / "rotation.json").exists()
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0


def test_the_keeper_stores_what_fell_due_on_the_latest_roots_not_its_own(tmp_path):
    store = ca_store.FileRootStore(tmp_path / "ca")
    keeping = Keeping(store)
    old = keeping.authority.signer
    overlap = keeping.authority.overlap
    first = ca_store.begin_rotation(store, TD, T0).incoming
    keeping.at(T0 + overlap)                      # first signs; old retires at T0 + 2 overlap
    # The operator begins the next rotation just before the keeper stores the old root's retirement.
    second = ca_store.begin_rotation(store, TD, T0 + 2 * overlap - SECOND).incoming
    keeping.at(T0 + 2 * overlap)
    stored = store.load()
    assert stored == Roots(first, (first.cert, second.cert), incoming=second,
                           incoming_since=T0 + 2 * overlap - SECOND)
    assert fp(old) not in fingerprints(stored.bundle_pem)
    text = describe_roots(stored, overlap)
    assert f"signing root:  {fp(first)[:16]}" in text and "incoming: trusted since" in text


def test_the_root_cert_configmap_over_a_rotation():
    double = ApiDouble()
    try:
        store = ca_store.KubeSecretRootStore(client.CoreV1Api(double.api()))
        keeping = Keeping(store)
        old = keeping.authority.signer

        def published() -> list[str]:
            return fingerprints(double.objects[CA_CONFIGMAP]["data"]["root-cert.pem"])
        assert published() == [fp(old)]
        new = ca_store.begin_rotation(store, TD, T0).incoming
        assert published() == [fp(old), fp(new)]
        keeping.at(T0 + SECOND)
        assert keeping.answer_bundle() == [fp(old), fp(new)]
        overlap = keeping.authority.overlap
        keeping.at(T0 + overlap)
        assert store.load().signer == new and published() == [fp(old), fp(new)]
        keeping.at(T0 + 2 * overlap)
        assert published() == [fp(new)] and store.load() == Roots.first(new)
        assert "PRIVATE KEY" not in double.objects[CA_CONFIGMAP]["data"]["root-cert.pem"]
    finally:
        double.close()


def test_given_files_cannot_rotate(tmp_path):
    root = generate_root(TD)
    (tmp_path / "ca.crt").write_bytes(root.chain_pem())
    (tmp_path / "ca.key").write_bytes(root.key_pem())
    store = ca_store.GivenFilesRootStore(tmp_path / "ca.crt", tmp_path / "ca.key")
    with pytest.raises(CaError, match="replacing them and restarting"):
        ca_store.begin_rotation(store, TD)
