"""Workload certificates: fetched per identity on the node, renewed at half life.

- `want(uri)` says a pod with that identity is on the node: it is fetched in
  the background (a few at a time).
- `get(uri)` is what a connection calls: it returns a valid credential at
  once, or fetches it *now*, ahead of the background queue (priority for a
  waiting connection). Concurrent callers share one fetch.
- Renewal starts at half life. A failed renewal keeps the old credential
  while it is still valid, and retries with backoff.
- TLS contexts are built once per credential and cached.

The signer is passed in: `grpc_signer(...)` talks to the control plane's
`Certificates.Sign` with the node's bootstrap token; tests pass a test CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Awaitable, Callable

from shoal import identity, log

from ztunnel.errors import ZtunnelError

logger = log.get("ztunnel.certs")

Signer = Callable[[bytes, str], Awaitable[tuple[bytes, bytes]]]  # (csr PEM, identity URI) -> (chain, bundle)
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertificateUnavailable(ZtunnelError):
    """No valid certificate for an identity; the message says why and what to check."""

    response_flag = "UAEX"


class CertManager:
    def __init__(self, signer: Signer, *, clock: Clock = utc_now, background_concurrency: int = 2,
                 retry_seconds: float = 1.0, max_retry_seconds: float = 30.0, fetch_timeout: float = 10.0) -> None:
        self.signer = signer
        self.clock = clock
        self.credentials: dict[str, identity.Credential] = {}
        self.wanted: set[str] = set()
        self.last_error: dict[str, str] = {}
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._retry_at: dict[str, dt.datetime] = {}
        self._backoff: dict[str, float] = {}
        self._background = asyncio.Semaphore(background_concurrency)
        self._wake = asyncio.Event()
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.fetch_timeout = fetch_timeout

    # what the node holds -------------------------------------------------------------

    def want(self, uri: str) -> None:
        if uri not in self.wanted:
            self.wanted.add(uri)
            self._wake.set()

    def forget(self, uri: str) -> None:
        self.wanted.discard(uri)
        self.credentials.pop(uri, None)
        for key in [k for k in self._contexts if k[0] == uri]:
            del self._contexts[key]

    def valid(self, uri: str) -> identity.Credential | None:
        cred = self.credentials.get(uri)
        return cred if cred is not None and not cred.expired(self.clock()) else None

    # for connections ------------------------------------------------------------------

    async def get(self, uri: str) -> identity.Credential:
        cred = self.valid(uri)
        if cred is not None:
            return cred
        try:
            return await self._fetch(uri)
        except Exception as e:
            raise CertificateUnavailable(f"no certificate for {uri}: {e}; check that the control plane is "
                                         "reachable and that a pod with this identity runs on this node") from None

    async def server_context(self, uri: str) -> ssl.SSLContext:
        cred = await self.get(uri)
        return self._context(uri, "server", cred)

    async def client_context(self, uri: str) -> ssl.SSLContext:
        cred = await self.get(uri)
        return self._context(uri, "client", cred)

    def _context(self, uri: str, side: str, cred: identity.Credential) -> ssl.SSLContext:
        key = (uri, side)
        cached = self._contexts.get(key)
        if cached is not None and cached[0] is cred:
            return cached[1]
        ctx = identity.server_context(cred) if side == "server" else identity.client_context(cred)
        self._contexts[key] = (cred, ctx)
        return ctx

    # fetching -------------------------------------------------------------------------

    def _fetch(self, uri: str) -> asyncio.Future:
        running = self._inflight.get(uri)
        if running is not None:
            return running
        fut = asyncio.ensure_future(self._sign(uri))
        self._inflight[uri] = fut
        fut.add_done_callback(lambda _: self._inflight.pop(uri, None))
        return fut

    async def _sign(self, uri: str) -> identity.Credential:
        spiffe = identity.parse_spiffe_id(uri)
        key = identity.new_key()
        csr = identity.make_csr(key, spiffe)
        try:
            chain, bundle = await asyncio.wait_for(self.signer(csr, uri), self.fetch_timeout)
            cred = identity.Credential.from_pem(identity.key_pem(key), chain, bundle)
            if str(cred.identity) != uri:
                raise identity.InvalidCertificate(f"the CA returned a certificate for {cred.identity}, not {uri}")
        except Exception as e:
            message = str(e) or type(e).__name__
            self.last_error[uri] = message
            delay = min(self._backoff.get(uri, self.retry_seconds / 2) * 2, self.max_retry_seconds)
            self._backoff[uri] = delay
            self._retry_at[uri] = self.clock() + dt.timedelta(seconds=delay)
            old = self.valid(uri)
            logger.warning("certificate fetch failed", identity=uri, error=message, retry_in=delay,
                           keeping_old_until=old.not_after.isoformat() if old else None)
            raise
        self.credentials[uri] = cred
        self.last_error.pop(uri, None)
        self._backoff.pop(uri, None)
        self._retry_at.pop(uri, None)
        logger.info("certificate issued", identity=uri, not_after=cred.not_after.isoformat())
        return cred

    def due(self) -> list[str]:
        """Identities to fetch now: wanted and missing, or past half life; not while backing off."""
        now = self.clock()
        out = []
        for uri in sorted(self.wanted):
            if uri in self._inflight or self._retry_at.get(uri, now) > now:
                continue
            cred = self.credentials.get(uri)
            if cred is None or cred.needs_renewal(now):
                out.append(uri)
        return out

    def next_wakeup(self) -> float:
        now = self.clock()
        times = [c.renew_at() for u, c in self.credentials.items() if u in self.wanted]
        times += list(self._retry_at.values())
        if not times:
            return 3600.0
        return max(0.05, min((t - now).total_seconds() for t in times))

    async def _background_fetch(self, uri: str) -> None:
        async with self._background:
            try:
                await self._fetch(uri)
            except Exception:
                pass  # logged in _sign; retried after backoff
        self._wake.set()

    async def run(self) -> None:
        """Keeps every wanted identity's certificate fresh until cancelled."""
        tasks: set[asyncio.Task] = set()
        while True:
            for uri in self.due():
                if uri not in self._inflight:
                    task = asyncio.ensure_future(self._background_fetch(uri))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.next_wakeup())
            except asyncio.TimeoutError:
                pass

    def dump(self) -> list[dict]:
        now = self.clock()
        out = []
        for uri in sorted(self.wanted | set(self.credentials)):
            cred = self.credentials.get(uri)
            entry = {"identity": uri, "state": "missing"}
            if cred is not None:
                entry.update(
                    state="expired" if cred.expired(now) else "valid",
                    not_before=cred.not_before.isoformat(), not_after=cred.not_after.isoformat(),
                    renew_at=cred.renew_at().isoformat(),
                    expires_in_seconds=int((cred.not_after - now).total_seconds()))
            if uri in self.last_error:
                entry["last_error"] = self.last_error[uri]
            out.append(entry)
        return out


def grpc_signer(settings) -> Signer:
    """A signer that calls the control plane's Certificates.Sign (TLS, bearer node token), on one channel.

    `settings` is a `shoal.config_client.ClientSettings`.
    """
    import grpc

    from shoal import tokens
    from shoal.api import ca_pb2, ca_pb2_grpc
    from shoal.config_client import open_channel

    state: dict = {}

    async def sign(csr_pem: bytes, uri: str) -> tuple[bytes, bytes]:
        if "stub" not in state:
            state["stub"] = ca_pb2_grpc.CertificatesStub(open_channel(settings))
        try:
            reply = await state["stub"].Sign(ca_pb2.SignRequest(csr=csr_pem.decode(), identity=uri),
                                             metadata=tokens.metadata(settings.current_token()),
                                             timeout=settings.call_timeout)
        except grpc.aio.AioRpcError as e:
            raise CertificateUnavailable(f"control plane {settings.target} did not sign: "
                                         f"{e.code().name}: {e.details()}") from None
        return reply.chain.encode(), reply.bundle.encode()

    return sign
