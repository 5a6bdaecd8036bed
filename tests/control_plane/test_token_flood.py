"""A flood of bad tokens does not stall the control plane (issue 9, item 8): verdicts are cached by
the token's digest (a refusal briefly), calls for one token share one check, TokenReview calls are
bounded (a few at once, a bounded queue, then UNAVAILABLE at once), the cache is bounded, and a
good token is still served.

The guard alone with a stand-in authenticator and a fake clock; then the real control plane
(support.plane) asking the real kubernetes client against support.kube_api.ApiDouble, through
Certificates.Sign over gRPC.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from kubernetes import client

from control_plane.authn import (TOKEN_AUDIENCE, AuthenticationFailed, AuthenticationUnavailable, Caller,
                                 GuardedAuthenticator, KubeAuthenticator)
from shoal import identity, tokens
from shoal.api import ca_pb2, ca_pb2_grpc
from shoal.config_client import open_channel

from support.kube_api import ApiDouble
from support.plane import running_plane, workload
from support.polling import eventually_async

ALICE = identity.SpiffeId("cluster.local", "shop", "alice")
NODE_SA = "system:serviceaccount:shoal-system:shoal-node"


class Inner:
    """A stand-in authenticator: `good` passes, anything else is refused; counts calls and how many
    run at once; `gate` (when set) holds every call until it opens."""

    def __init__(self, good: str = "good") -> None:
        self.good = good
        self.calls: list[str] = []
        self.running = 0
        self.most = 0
        self.gate: threading.Event | None = None
        self.unavailable = False
        self._lock = threading.Lock()

    def authenticate(self, token):
        with self._lock:
            self.calls.append(token)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if self.unavailable:
                raise AuthenticationUnavailable("TokenReview failed: 503 Service Unavailable")
            if token != self.good:
                raise AuthenticationFailed(f"token rejected (sha256 {tokens.fingerprint(token or '')})")
            return Caller(node="node1")
        finally:
            with self._lock:
                self.running -= 1


def test_a_refusal_is_cached_briefly_and_a_success_longer():
    async def main():
        now = [0.0]
        inner = Inner()
        guard = GuardedAuthenticator(inner, success_seconds=30, failure_seconds=5, clock=lambda: now[0])
        for _ in range(100):
            with pytest.raises(AuthenticationFailed, match="rejected"):
                await guard.authenticate("bad")
            assert await guard.authenticate("good") == Caller(node="node1")
        assert inner.calls == ["bad", "good"]
        now[0] = 5.0   # the refusal lapses: the token is checked again (it may have been added since)
        with pytest.raises(AuthenticationFailed):
            await guard.authenticate("bad")
        await guard.authenticate("good")
        assert inner.calls == ["bad", "good", "bad"]
        now[0] = 30.0
        await guard.authenticate("good")
        assert inner.calls == ["bad", "good", "bad", "good"]
    asyncio.run(main())


def test_concurrent_calls_for_one_token_share_one_check():
    async def main():
        inner = Inner()
        inner.gate = threading.Event()
        guard = GuardedAuthenticator(inner)
        calls = [asyncio.ensure_future(guard.authenticate(t)) for t in ["bad"] * 300 + ["good"] * 300]
        await asyncio.sleep(0.05)
        inner.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sorted(inner.calls) == ["bad", "good"]
        assert all(isinstance(r, AuthenticationFailed) for r in results[:300])
        assert all(r == Caller(node="node1") for r in results[300:])
    asyncio.run(main())


def test_checks_are_bounded_and_the_rest_are_refused_at_once():
    async def main():
        inner = Inner()
        inner.gate = threading.Event()
        guard = GuardedAuthenticator(inner, concurrency=3, backlog=5)
        flood = [asyncio.ensure_future(guard.authenticate(f"bad-{i}")) for i in range(1000)]
        await asyncio.sleep(0.1)
        # 3 checks run, 5 wait; the other 992 were refused without a check, as "retry later".
        refused = [f for f in flood if f.done()]
        assert len(refused) == 992
        assert all(isinstance(f.exception(), AuthenticationUnavailable) for f in refused)
        with pytest.raises(AuthenticationUnavailable, match="too many"):
            await guard.authenticate("good")
        inner.gate.set()
        await asyncio.gather(*flood, return_exceptions=True)
        assert inner.most == 3 and len(inner.calls) == 8
        assert await guard.authenticate("good") == Caller(node="node1")   # a retry is served
    asyncio.run(main())


def test_the_cache_is_bounded_and_an_unchecked_token_is_not_cached():
    async def main():
        inner = Inner()
        guard = GuardedAuthenticator(inner, max_entries=10)
        for i in range(50):
            with pytest.raises(AuthenticationFailed):
                await guard.authenticate(f"bad-{i}")
        assert guard.cached == 10
        with pytest.raises(AuthenticationFailed):
            await guard.authenticate("bad-49")     # among the newest: still cached
        with pytest.raises(AuthenticationFailed):
            await guard.authenticate("bad-0")      # the oldest went: checked again
        assert inner.calls.count("bad-49") == 1 and inner.calls.count("bad-0") == 2
        # The API server failed: no verdict on the token, so nothing is cached.
        inner.unavailable = True
        with pytest.raises(AuthenticationUnavailable):
            await guard.authenticate("good")
        inner.unavailable = False
        assert await guard.authenticate("good") == Caller(node="node1")
    asyncio.run(main())


# -- the real control plane against the Kubernetes API double ---------------------------------------

class CountingReviews:
    """Wraps ApiDouble.review: counts TokenReviews, and how many the API server holds at once;
    each takes `seconds`, and none answers while `held` is clear (an API server under load)."""

    def __init__(self, double: ApiDouble, seconds: float) -> None:
        self.review, self.seconds = double.review, seconds
        self.calls = 0
        self.running = 0
        self.most = 0
        self.held = threading.Event()
        self.held.set()
        self._lock = threading.Lock()
        double.review = self

    def __call__(self, spec: dict) -> dict:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.held.wait(30)
            time.sleep(self.seconds)
            return self.review(spec)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def double():
    d = ApiDouble()
    d.reviews["good-token"] = {"username": NODE_SA, "extra": {"authentication.kubernetes.io/node-name": ["node1"]}}
    d.audiences["good-token"] = [TOKEN_AUDIENCE]
    yield d
    d.close()


async def sign(stub, token: str) -> ca_pb2.SignResponse:
    request = ca_pb2.SignRequest(csr=identity.make_csr(identity.new_key(), ALICE).decode(), identity=str(ALICE))
    return await stub.Sign(request, metadata=tokens.metadata(token), timeout=60)


def kube_authenticator(double: ApiDouble) -> KubeAuthenticator:
    api = double.api()
    return KubeAuthenticator(client.AuthenticationV1Api(api), client.CoreV1Api(api))


def test_a_thousand_bad_tokens_make_a_few_token_reviews_and_a_good_one_is_served(tmp_path, double):
    reviews = CountingReviews(double, seconds=0.01)
    bad = [f"bad-token-{i % 10}" for i in range(1000)]   # ten misconfigured proxies retrying hard

    async def main():
        async with running_plane(tmp_path, [workload(1, node="node1", sa="alice")],
                                 authenticator=kube_authenticator(double)) as plane:
            channel = open_channel(plane.settings("node1"))
            stub = ca_pb2_grpc.CertificatesStub(channel)
            try:
                results = await asyncio.gather(*(sign(stub, t) for t in bad), sign(stub, "good-token"),
                                               return_exceptions=True)
            finally:
                await channel.close()
        return results

    results = asyncio.run(main())
    *flood, good = results
    assert isinstance(good, ca_pb2.SignResponse), good
    assert identity.spiffe_id_of(identity.load_certificates(good.chain.encode())[0]) == ALICE
    codes = {r.code() for r in flood}
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}, codes
    # One review per distinct token: the ten bad ones and the good one.
    assert reviews.calls == 11, reviews.calls


def test_a_flood_of_distinct_bad_tokens_is_bounded_and_a_good_token_still_gets_through(tmp_path, double):
    reviews = CountingReviews(double, seconds=0.02)
    bad = [f"bad-token-{i}" for i in range(1000)]

    async def main():
        async with running_plane(tmp_path, [workload(1, node="node1", sa="alice")],
                                 authenticator=kube_authenticator(double)) as plane:
            limit = plane.server.authenticator.concurrency
            channel = open_channel(plane.settings("node1"))
            stub = ca_pb2_grpc.CertificatesStub(channel)

            async def good_client():
                # As a proxy's certificate manager does: UNAVAILABLE is "retry after a backoff".
                while True:
                    try:
                        return await sign(stub, "good-token")
                    except grpc.aio.AioRpcError as e:
                        if e.code() is not grpc.StatusCode.UNAVAILABLE:
                            raise
                        await asyncio.sleep(0.05)
            try:
                reviews.held.clear()      # the API server stalls: checks pile up, and then are refused
                flood = [asyncio.ensure_future(sign(stub, t)) for t in bad]
                await eventually_async(lambda: any(call.done() for call in flood), 30,
                                       "a call refused at once while the reviews are stalled")
                refused_at_once = [call.exception() for call in flood if call.done()]
                reviews.held.set()
                good = await good_client()
                results = await asyncio.gather(*flood, return_exceptions=True)
            finally:
                reviews.held.set()
                await channel.close()
        return limit, refused_at_once, good, results

    limit, refused_at_once, good, results = asyncio.run(main())
    assert {e.code() for e in refused_at_once} == {grpc.StatusCode.UNAVAILABLE}   # "retry later", not "bad token"
    assert identity.spiffe_id_of(identity.load_certificates(good.chain.encode())[0]) == ALICE
    codes = {r.code() for r in results}
    assert codes <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE}, codes
    assert reviews.most <= limit, (reviews.most, limit)
    assert reviews.calls < len(bad)
