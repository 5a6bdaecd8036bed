"""The waypoint's own certificate: fetched, retried with backoff, kept through a failed renewal."""

import asyncio
import datetime as dt

import pytest

from shoal import identity

from waypoint.certs import Certificates, NoCertificate
from zt_testca import TestCA

WHO = identity.parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/waypoint")


def signer(ca: TestCA, fail_first: int = 0, lifetime=dt.timedelta(hours=24), not_before=None):
    calls = []

    async def fetch(key, who):
        calls.append(who)
        if len(calls) <= fail_first:
            raise RuntimeError("control plane unreachable")
        chain = ca.sign_csr(identity.make_csr(key, who), lifetime, not_before)
        return identity.Credential.from_pem(identity.key_pem(key), chain, ca.bundle_pem)
    return fetch, calls


def test_first_fetch_retries_until_it_gets_one():
    ca = TestCA()
    fetch, calls = signer(ca, fail_first=2)
    certs = Certificates(fetch, WHO, retry_seconds=0.01)

    async def main():
        with pytest.raises(NoCertificate):
            certs.server_context()
        task = asyncio.create_task(certs.run())
        await asyncio.wait_for(certs.ready.wait(), 5)
        task.cancel()
        assert len(calls) == 3 and certs.credential.identity == WHO and certs.last_error == ""
        assert certs.server_context() is certs.server_context()   # built once per credential
        certs.client_context()
    asyncio.run(main())


def test_a_failed_renewal_keeps_the_valid_certificate():
    ca = TestCA()
    now = dt.datetime.now(dt.timezone.utc)
    fetch, _ = signer(ca, not_before=now - dt.timedelta(minutes=40), lifetime=dt.timedelta(hours=1))

    async def main():
        old = Certificates(fetch, WHO)
        await old.renew()
        assert old.credential.needs_renewal() and not old.credential.expired()
        failing, calls = signer(ca, fail_first=100)
        old.fetch = failing
        task = asyncio.create_task(old.run())
        await asyncio.sleep(0.1)
        task.cancel()
        kept = old.credential
        assert calls and "unreachable" in old.last_error
        assert kept is not None and old.server_context() is not None    # still serving with it
    asyncio.run(main())


def test_a_certificate_for_another_identity_is_refused():
    ca = TestCA()

    async def wrong(key, who):
        other = identity.parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/someone-else")
        chain = ca.sign_csr(identity.make_csr(key, other))
        return identity.Credential.from_pem(identity.key_pem(key), chain, ca.bundle_pem)

    async def main():
        certs = Certificates(wrong, WHO)
        with pytest.raises(identity.InvalidCertificate):
            await certs.renew()
        assert certs.credential is None and not certs.ready.is_set()
    asyncio.run(main())
