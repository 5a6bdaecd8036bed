"""Workload certificates: fetched per identity, renewed at half life, kept while valid on failure.

One manager for both proxies. The ztunnel holds one identity per service
account with a pod on its node; the waypoint is the one-identity case (its
own Gateway's).

- `want(who)` says the identity is needed: it is fetched in the background
  (a few at a time) and kept fresh; `wait_issued(who)` waits for the first.
- `get(who)` is what a connection calls: a valid credential at once, or a
  fetch *now*, ahead of the background queue. Concurrent callers share one
  fetch.
- Renewal starts at half life. A failed fetch keeps the old credential
  while it is still valid, and retries with a doubling backoff.
- `forget(who)` drops every trace of an identity: credential, contexts,
  errors, backoff, the waiters' event.
- TLS contexts are built once per credential and cached.

The signer is passed in: `shoal.config_client.SignClient(settings).sign`
against the control plane, a test CA in tests. It returns a
`shoal.identity.Credential` for exactly the identity asked for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Awaitable, Callable

from shoal import identity, log
from shoal.identity import Credential, SpiffeId

logger = log.get("shoal.certs")

Signer = Callable[[object, SpiffeId], Awaitable[Credential]]   # (private key, identity) -> credential
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertificateUnavailable(identity.IdentityError):
    """No valid certificate for an identity; the message says why and what to check."""

    response_flag = "UAEX"


class CertManager:
    def __init__(self, signer: Signer, *, clock: Clock = utc_now, background_concurrency: int = 2,
                 retry_seconds: float = 1.0, max_retry_seconds: float = 30.0, fetch_timeout: float = 10.0) -> None:
        self.signer = signer
        self.clock = clock
        self.credentials: dict[SpiffeId, Credential] = {}
        self.wanted: set[SpiffeId] = set()
        self.last_error: dict[SpiffeId, str] = {}
        self._contexts: dict[tuple[SpiffeId, str], tuple[Credential, ssl.SSLContext]] = {}
        self._inflight: dict[SpiffeId, asyncio.Future] = {}
        self._retry_at: dict[SpiffeId, dt.datetime] = {}
        self._backoff: dict[SpiffeId, float] = {}
        self._issued: dict[SpiffeId, asyncio.Event] = {}
        self._background = asyncio.Semaphore(background_concurrency)
        self._wake = asyncio.Event()
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.fetch_timeout = fetch_timeout

    # what is held ---------------------------------------------------------------------

    def want(self, who: SpiffeId) -> None:
        if who not in self.wanted:
            self.wanted.add(who)
            self._wake.set()

    def forget(self, who: SpiffeId) -> None:
        self.wanted.discard(who)
        self.credentials.pop(who, None)
        self.last_error.pop(who, None)
        self._retry_at.pop(who, None)
        self._backoff.pop(who, None)
        self._issued.pop(who, None)
        for key in [k for k in self._contexts if k[0] == who]:
            del self._contexts[key]

    def valid(self, who: SpiffeId) -> Credential | None:
        cred = self.credentials.get(who)
        return cred if cred is not None and not cred.expired(self.clock()) else None

    async def wait_issued(self, who: SpiffeId) -> Credential:
        """Waits until `who` has a credential (wanted identities are fetched by `run()`)."""
        self.want(who)
        while (cred := self.valid(who)) is None:
            await self._issued.setdefault(who, asyncio.Event()).wait()
        return cred

    # for connections --------------------------------------------------------------------

    async def get(self, who: SpiffeId) -> Credential:
        cred = self.valid(who)
        if cred is not None:
            return cred
        try:
            return await self._fetch(who)
        except Exception as e:  # noqa: BLE001 - the boundary: any signer failure is told the same way
            raise CertificateUnavailable(f"no certificate for {who}: {e}; check that the control plane is "
                                         "reachable and that a pod with this identity runs on this node") from None

    async def server_context(self, who: SpiffeId) -> ssl.SSLContext:
        return self._context(who, "server", await self.get(who))

    async def client_context(self, who: SpiffeId) -> ssl.SSLContext:
        return self._context(who, "client", await self.get(who))

    def _context(self, who: SpiffeId, side: str, cred: Credential) -> ssl.SSLContext:
        key = (who, side)
        cached = self._contexts.get(key)
        if cached is not None and cached[0] is cred:
            return cached[1]
        ctx = identity.server_context(cred) if side == "server" else identity.client_context(cred)
        self._contexts[key] = (cred, ctx)
        return ctx

    # fetching ---------------------------------------------------------------------------

    def _fetch(self, who: SpiffeId) -> asyncio.Future:
        running = self._inflight.get(who)
        if running is not None:
            return running
        fut = asyncio.ensure_future(self._sign(who))
        self._inflight[who] = fut
        fut.add_done_callback(lambda _: self._inflight.pop(who, None))
        return fut

    async def _sign(self, who: SpiffeId) -> Credential:
        try:
            cred = await asyncio.wait_for(self.signer(identity.new_workload_key(), who), self.fetch_timeout)
            if cred.identity != who:
                raise identity.InvalidCertificate(f"the CA returned a certificate for {cred.identity}, not {who}")
        except Exception as e:
            message = str(e) or type(e).__name__
            self.last_error[who] = message
            delay = min(self._backoff.get(who, self.retry_seconds / 2) * 2, self.max_retry_seconds)
            self._backoff[who] = delay
            self._retry_at[who] = self.clock() + dt.timedelta(seconds=delay)
            old = self.valid(who)
            logger.warning("certificate fetch failed", identity=str(who), error=message, retry_in=delay,
                           keeping_old_until=old.not_after.isoformat() if old else None)
            self._wake.set()
            raise
        self.credentials[who] = cred
        self.last_error.pop(who, None)
        self._backoff.pop(who, None)
        self._retry_at.pop(who, None)
        issued = self._issued.pop(who, None)
        if issued is not None:
            issued.set()
        logger.info("certificate issued", identity=str(who), not_after=cred.not_after.isoformat())
        return cred

    def due(self) -> list[SpiffeId]:
        """Identities to fetch now: wanted and missing, or past half life; not while backing off."""
        now = self.clock()
        out = []
        for who in sorted(self.wanted, key=str):
            if who in self._inflight or self._retry_at.get(who, now) > now:
                continue
            cred = self.credentials.get(who)
            if cred is None or cred.needs_renewal(now):
                out.append(who)
        return out

    def next_wakeup(self) -> float:
        now = self.clock()
        times = [c.renew_at() for who, c in self.credentials.items() if who in self.wanted]
        times += list(self._retry_at.values())
        if not times:
            return 3600.0
        return max(0.05, min((t - now).total_seconds() for t in times))

    async def _background_fetch(self, who: SpiffeId) -> None:
        async with self._background:
            try:
                await self._fetch(who)
            except Exception:  # noqa: BLE001 - logged in _sign; retried after backoff
                pass
        self._wake.set()

    async def run(self) -> None:
        """Keeps every wanted identity's certificate fresh until cancelled."""
        tasks: set[asyncio.Task] = set()
        while True:
            for who in self.due():
                if who not in self._inflight:
                    task = asyncio.ensure_future(self._background_fetch(who))
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
        for who in sorted(self.wanted | set(self.credentials), key=str):
            cred = self.credentials.get(who)
            entry = {"identity": str(who), "state": "missing"}
            if cred is not None:
                entry.update(
                    state="expired" if cred.expired(now) else "valid",
                    not_before=cred.not_before.isoformat(), not_after=cred.not_after.isoformat(),
                    renew_at=cred.renew_at().isoformat(),
                    expires_in_seconds=int((cred.not_after - now).total_seconds()))
            if who in self.last_error:
                entry["last_error"] = self.last_error[who]
            out.append(entry)
        return out
