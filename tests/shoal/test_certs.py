"""The one certificate manager: fetch on demand, priority, renewal at half life, a valid one kept on
failure, `forget`, and the waypoint's one-identity case."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from shoal import identity
from shoal.certs import CertificateUnavailable, CertManager
from shoal.identity import parse_spiffe_id

from support.ca import TestCA
from support.polling import eventually_async

A = parse_spiffe_id("spiffe://cluster.local/ns/app/sa/a")
B = parse_spiffe_id("spiffe://cluster.local/ns/app/sa/b")
WAYPOINT = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/waypoint")


class FakeSigner:
    """Signs with a test CA, as the control plane's Certificates.Sign would; can fail or answer slowly."""

    def __init__(self, ca: TestCA, lifetime=dt.timedelta(hours=24), delay=0.0, not_before=None):
        self.ca, self.lifetime, self.delay, self.not_before = ca, lifetime, delay, not_before
        self.calls: list[identity.SpiffeId] = []
        self.failing = False
        self.sign_as: identity.SpiffeId | None = None   # answer with someone else's certificate

    async def __call__(self, key, who):
        self.calls.append(who)
        await asyncio.sleep(self.delay)
        if self.failing:
            raise ConnectionError("control plane down")
        csr = identity.make_csr(key, self.sign_as or who)
        chain = self.ca.sign_csr(csr, self.lifetime, self.not_before)
        return identity.Credential.from_pem(identity.key_pem(key), chain, self.ca.bundle_pem)


def test_concurrent_gets_share_one_fetch_and_contexts_are_cached():
    async def main():
        signer = FakeSigner(TestCA(), delay=0.02)
        certs = CertManager(signer)
        creds = await asyncio.gather(*(certs.get(A) for _ in range(5)))
        assert signer.calls == [A] and all(c is creds[0] for c in creds)
        assert creds[0].identity == A
        assert await certs.server_context(A) is await certs.server_context(A)
        assert await certs.client_context(A) is not await certs.server_context(A)
    asyncio.run(main())


def test_renewal_at_half_life_and_keep_valid_cert_when_renewal_fails():
    async def main():
        ca = TestCA()
        now = [dt.datetime.now(dt.timezone.utc)]
        signer = FakeSigner(ca, lifetime=dt.timedelta(hours=2))
        certs = CertManager(signer, clock=lambda: now[0], retry_seconds=0.01)
        certs.want(A)
        assert certs.due() == [A]
        first = await certs.get(A)
        assert certs.due() == []
        now[0] = first.renew_at() + dt.timedelta(seconds=1)
        assert certs.due() == [A]
        signer.failing = True
        with pytest.raises(ConnectionError):
            await certs._fetch(A)
        # Still valid: connections keep getting the old one.
        assert await certs.get(A) is first
        assert "control plane down" in certs.dump()[0]["last_error"]
        signer.failing = False
        now[0] += dt.timedelta(seconds=1)
        second = await certs._fetch(A)
        assert second is not first and certs.dump()[0]["state"] == "valid"
        # Past expiry with the control plane down: no certificate, clear error.
        signer.failing = True
        now[0] = second.not_after + dt.timedelta(seconds=1)
        with pytest.raises(CertificateUnavailable, match="control plane"):
            await certs.get(A)
    asyncio.run(main())


def test_background_loop_fetches_wanted_identities_and_a_waiting_connection_goes_first():
    async def main():
        signer = FakeSigner(TestCA(), delay=0.05)
        certs = CertManager(signer, background_concurrency=1)
        wanted = [parse_spiffe_id(f"spiffe://cluster.local/ns/app/sa/bg{i}") for i in range(4)]
        for who in wanted:
            certs.want(who)
        runner = asyncio.ensure_future(certs.run())
        await asyncio.sleep(0.01)
        await certs.get(B)  # not wanted by the background: fetched at once, not after the queue
        assert signer.calls.index(B) <= 1
        await asyncio.wait_for(asyncio.gather(*(certs.wait_issued(who) for who in wanted)), 10)
        assert {c["identity"] for c in certs.dump() if c["state"] == "valid"} >= {str(w) for w in wanted}
        runner.cancel()
    asyncio.run(main())


def test_forget_clears_every_trace_of_an_identity():
    async def main():
        signer = FakeSigner(TestCA())
        certs = CertManager(signer, retry_seconds=0.01)
        certs.want(A)
        await certs.server_context(A)
        signer.failing = True
        certs.want(B)
        with pytest.raises(CertificateUnavailable):
            await certs.get(B)
        certs.forget(A)
        certs.forget(B)
        for table in (certs.credentials, certs.last_error, certs._retry_at, certs._backoff, certs._issued):
            assert A not in table and B not in table, table
        assert certs.wanted == set() and certs._contexts == {} and certs.dump() == []
    asyncio.run(main())


def test_one_identity_first_fetch_retries_with_backoff_until_it_gets_one():
    """The waypoint's case: one identity, wanted from the start, waited for before serving."""
    async def main():
        signer = FakeSigner(TestCA())
        signer.failing = True
        certs = CertManager(signer, retry_seconds=0.01, max_retry_seconds=0.02)
        runner = asyncio.ensure_future(certs.run())
        waiter = asyncio.ensure_future(certs.wait_issued(WAYPOINT))
        await eventually_async(lambda: len(signer.calls) >= 3, 10, "three failed fetches")
        assert not waiter.done() and certs.valid(WAYPOINT) is None
        signer.failing = False
        cred = await asyncio.wait_for(waiter, 10)
        runner.cancel()
        assert cred.identity == WAYPOINT and WAYPOINT not in certs.last_error
    asyncio.run(main())


def test_a_renewal_that_fails_keeps_serving_the_valid_certificate():
    async def main():
        now = dt.datetime.now(dt.timezone.utc)
        signer = FakeSigner(TestCA(), lifetime=dt.timedelta(hours=1), not_before=now - dt.timedelta(minutes=40))
        certs = CertManager(signer, retry_seconds=0.01)
        first = await certs.get(WAYPOINT)
        assert first.needs_renewal() and not first.expired()
        certs.want(WAYPOINT)
        signer.failing = True
        runner = asyncio.ensure_future(certs.run())
        await eventually_async(lambda: len(signer.calls) >= 3, 10, "three failed renewals")
        runner.cancel()
        assert "control plane down" in certs.last_error[WAYPOINT]
        assert await certs.get(WAYPOINT) is first
    asyncio.run(main())


def test_a_certificate_for_another_identity_is_refused():
    async def main():
        signer = FakeSigner(TestCA())
        signer.sign_as = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/someone-else")
        certs = CertManager(signer)
        with pytest.raises(CertificateUnavailable, match="someone-else"):
            await certs.get(WAYPOINT)
        assert certs.valid(WAYPOINT) is None
    asyncio.run(main())
