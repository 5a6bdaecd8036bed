"""The trust bundle on disk: read when it changes, a bad file never replaces a good bundle."""

from __future__ import annotations

import asyncio
import os

import pytest

from shoal.trust_bundle import TrustBundle, TrustBundleMissing

from support.ca import TestCA


def test_reads_again_when_the_file_changes_and_keeps_the_good_one_over_a_bad_one(tmp_path):
    path = tmp_path / "bundle.pem"
    first, second = TestCA("first root").bundle_pem, TestCA("second root").bundle_pem
    path.write_bytes(first)
    bundle = TrustBundle(path)
    assert bundle.current() == first and bundle.generation == 1
    assert bundle.current() == first and bundle.generation == 1      # unchanged: not read again
    path.write_bytes(second)
    os.utime(path, ns=(1, 1))                                          # a new mtime even within one tick
    assert bundle.current() == second and bundle.generation == 2
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    os.utime(path, ns=(2, 2))
    assert bundle.current() == second and bundle.generation == 2     # the bad file is not taken
    path.unlink()
    assert bundle.current() == second                                 # gone: keep serving the last good one


def test_no_bundle_ever_says_what_to_do(tmp_path):
    bundle = TrustBundle(tmp_path / "missing.pem")
    with pytest.raises(TrustBundleMissing, match="start the control plane"):
        bundle.current()
    (tmp_path / "missing.pem").write_bytes(b"")
    with pytest.raises(TrustBundleMissing, match="empty"):
        bundle.current()


def test_wait_returns_once_the_control_plane_wrote_it(tmp_path):
    path = tmp_path / "bundle.pem"
    pem = TestCA().bundle_pem

    async def main():
        waiter = asyncio.ensure_future(TrustBundle(path).wait(seconds=10, every=0.01))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        path.write_bytes(pem)
        assert await asyncio.wait_for(waiter, 10) == pem
        with pytest.raises(TrustBundleMissing):
            await TrustBundle(tmp_path / "never.pem").wait(seconds=0.05, every=0.01)
    asyncio.run(main())
