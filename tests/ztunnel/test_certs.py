"""Certificate fetching, priority, renewal at half life and keeping a valid one on failure."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from ztunnel.certs import CertificateUnavailable, CertManager

from zt_testca import TestCA

A = "spiffe://cluster.local/ns/app/sa/a"
B = "spiffe://cluster.local/ns/app/sa/b"


class FakeSigner:
    def __init__(self, ca: TestCA, lifetime=dt.timedelta(hours=24), delay=0.0):
        self.ca, self.lifetime, self.delay = ca, lifetime, delay
        self.calls: list[str] = []
        self.failing = False

    async def __call__(self, csr, uri):
        self.calls.append(uri)
        await asyncio.sleep(self.delay)
        if self.failing:
            raise ConnectionError("control plane down")
        return self.ca.sign_csr(csr, self.lifetime), self.ca.bundle_pem


def test_concurrent_gets_share_one_fetch_and_contexts_are_cached():
    async def main():
        signer = FakeSigner(TestCA(), delay=0.02)
        certs = CertManager(signer)
        creds = await asyncio.gather(*(certs.get(A) for _ in range(5)))
        assert signer.calls == [A] and all(c is creds[0] for c in creds)
        assert str(creds[0].identity) == A
        assert await certs.server_context(A) is await certs.server_context(A)
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
        for i in range(4):
            certs.want(f"spiffe://cluster.local/ns/app/sa/bg{i}")
        runner = asyncio.ensure_future(certs.run())
        await asyncio.sleep(0.01)
        await certs.get(B)  # not wanted by the background: fetched at once, not after the queue
        assert signer.calls.index(B) <= 1
        await asyncio.sleep(0.4)
        assert {c["identity"] for c in certs.dump() if c["state"] == "valid"} >= {
            f"spiffe://cluster.local/ns/app/sa/bg{i}" for i in range(4)}
        runner.cancel()
    asyncio.run(main())
