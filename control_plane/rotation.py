"""The mesh's roots over time: which signs, which are trusted, and what is scheduled.

A root rotates in two phases, so that no two valid certificates ever
distrust each other:

1. `begin`: the new root is added to the trust bundle (the bundle file, the
   root-cert ConfigMap, the `bundle` of every Certificates.Sign answer) but
   does not sign yet. Proxies take the new bundle with their next
   certificate; every certificate issued before the new root was trusted
   expires within one leaf lifetime.
2. `overlap` (one leaf lifetime and a margin for skewed clocks and for a
   ConfigMap to reach the pods) after it was added, the new root signs.
   The old root stays in the bundle until the last leaf it signed expires,
   one `overlap` after that, and then leaves it.

Everything here is a pure function of the stored `Roots`, the time and the
overlap; the CA (`control_plane.ca`) asks `advance` at each signing, and the
control plane's root keeper (`control_plane.app`) stores and publishes what
changed. Several replicas reach the same answer from the same store.

Invariants of a `Roots` (`check()`):
- the signer's anchors and the incoming root's anchors are in `trusted`;
- `incoming` and `incoming_since` are set together;
- a retiring root is trusted, and is neither the signer's nor the incoming one's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from control_plane.errors import CaError
from shoal import identity


class Root(Protocol):
    """What the schedule needs of a root (`control_plane.ca.Root`, which imports this module)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def anchors(self) -> list[x509.Certificate]: ...


class RotationRefused(CaError):
    """A rotation cannot start now; the message says why and when it can."""


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class Roots:
    signer: Root
    trusted: tuple[x509.Certificate, ...]                 # the trust bundle, in order
    incoming: Root | None = None                          # trusted, and signs from incoming_since + overlap
    incoming_since: dt.datetime | None = None
    retiring: tuple[tuple[str, dt.datetime], ...] = ()    # (fingerprint, when it leaves the bundle)

    @classmethod
    def first(cls, signer: Root, trusted: list[x509.Certificate] | tuple = ()) -> "Roots":
        """A signer and whatever else is trusted (a bundle given with it), nothing scheduled."""
        return cls(signer, unique([*signer.anchors, *trusted]))

    def check(self) -> None:
        held = {fingerprint(c) for c in self.trusted}
        for root, what in ((self.signer, "signing"), (self.incoming, "incoming")):
            if root is not None and not {fingerprint(c) for c in root.anchors} <= held:
                raise CaError(f"the {what} root is missing from the trust bundle")
        if (self.incoming is None) != (self.incoming_since is None):
            raise CaError("an incoming root needs the time it was first trusted, and only it")
        busy = {fingerprint(c) for c in self.signer.anchors}
        if self.incoming is not None:
            busy |= {fingerprint(c) for c in self.incoming.anchors}
        for fp, _ in self.retiring:
            if fp not in held or fp in busy:
                raise CaError(f"root {fp[:16]} is scheduled to retire but is not a trusted, idle root")

    def switch_at(self, overlap: dt.timedelta) -> dt.datetime | None:
        """When the incoming root starts signing (None when no rotation is under way)."""
        return self.incoming_since + overlap if self.incoming_since is not None else None

    def retire_at(self, fp: str) -> dt.datetime | None:
        return dict(self.retiring).get(fp)

    @property
    def bundle_pem(self) -> bytes:
        return identity.certificates_pem(list(self.trusted))


def begin(roots: Roots, new: Root, now: dt.datetime) -> Roots:
    """Phase 1: `new` is trusted from `now` and will sign once `overlap` has passed."""
    if roots.incoming is not None:
        raise RotationRefused(f"a rotation is under way: root {roots.incoming.fingerprint[:16]} has been trusted "
                              f"since {roots.incoming_since.isoformat(timespec='seconds')} and will sign once "
                              "every certificate issued before has expired; rotate again after that")
    known = {fingerprint(c) for c in roots.trusted}
    if any(fingerprint(c) in known for c in new.anchors):
        raise RotationRefused(f"root {new.fingerprint[:16]} is trusted already; rotate to a new root")
    return replace(roots, trusted=unique([*roots.trusted, *new.anchors]), incoming=new, incoming_since=now)


def advance(roots: Roots, now: dt.datetime, overlap: dt.timedelta) -> Roots:
    """The roots as they stand at `now`: the incoming root signs once its time came; a retiring root
    leaves once the last leaf it signed has expired. Returns `roots` itself when nothing changed."""
    out = roots
    switch = roots.switch_at(overlap)
    if switch is not None and now >= switch:
        # The old signer signed its last leaf at `switch`; a leaf lives at most `overlap` - margin.
        keep = {fingerprint(c) for c in roots.incoming.anchors}
        leaving = tuple((fingerprint(c), switch + overlap) for c in roots.signer.anchors if fingerprint(c) not in keep)
        out = replace(out, signer=roots.incoming, incoming=None, incoming_since=None,
                      retiring=_sorted(out.retiring + leaving))
    gone = {fp for fp, at in out.retiring if at <= now}
    if gone:
        out = replace(out, trusted=tuple(c for c in out.trusted if fingerprint(c) not in gone),
                      retiring=tuple(r for r in out.retiring if r[0] not in gone))
    return out


def retire(roots: Roots, prefix: str) -> tuple[Roots, x509.Certificate]:
    """Takes a root (by the start of its SHA-256 fingerprint) out of the bundle at once, by hand: an
    operator's emergency. Retiring the incoming root cancels the rotation (it signed nothing)."""
    prefix = prefix.lower()
    matches = [c for c in roots.trusted if fingerprint(c).startswith(prefix)]
    if len(prefix) < 8 or len(matches) != 1:
        raise CaError(f"fingerprint {prefix!r} must name exactly one trusted root (give at least 8 hex digits)")
    cert = matches[0]
    fp = fingerprint(cert)
    if fp in {fingerprint(c) for c in roots.signer.anchors}:
        raise CaError("that is the signing root; rotate to a new root first")
    out = replace(roots, trusted=tuple(c for c in roots.trusted if fingerprint(c) != fp),
                  retiring=tuple(r for r in roots.retiring if r[0] != fp))
    if roots.incoming is not None and fp in {fingerprint(c) for c in roots.incoming.anchors}:
        out = replace(out, incoming=None, incoming_since=None)
    return out, cert


def unique(certs) -> tuple[x509.Certificate, ...]:
    return tuple({fingerprint(c): c for c in certs}.values())


def _sorted(retiring) -> tuple[tuple[str, dt.datetime], ...]:
    return tuple(sorted(dict(retiring).items(), key=lambda r: (r[1], r[0])))
