"""The waypoint's own certificate: fetched from the control plane, renewed at half life.

A waypoint may sign only its own identity (`spiffe://td/ns/<ns>/sa/<gateway>`).
A failed renewal keeps the current certificate while it is valid and retries
with backoff. TLS contexts are built once per credential: `server_context()`
for the HBONE listener, `client_context()` for HBONE to endpoints.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Awaitable, Callable

from shoal import identity, log

from waypoint.errors import WaypointError

logger = log.get("waypoint.certs")

Fetch = Callable[[object, identity.SpiffeId], Awaitable[identity.Credential]]   # (key, who) -> credential


class NoCertificate(WaypointError):
    response_flag = "UAEX"


class Certificates:
    def __init__(self, fetch: Fetch, who: identity.SpiffeId, *, retry_seconds: float = 1.0,
                 max_retry_seconds: float = 30.0) -> None:
        self.fetch = fetch
        self.who = who
        self.credential: identity.Credential | None = None
        self.ready = asyncio.Event()
        self.last_error = ""
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self._contexts: tuple[identity.Credential, ssl.SSLContext, ssl.SSLContext] | None = None

    def _current(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        cred = self.credential
        if cred is None or cred.expired():
            raise NoCertificate(f"no valid certificate for {self.who} yet: {self.last_error or 'not fetched'}; "
                                "check that the control plane is reachable")
        if self._contexts is None or self._contexts[0] is not cred:
            self._contexts = (cred, identity.server_context(cred), identity.client_context(cred))
        return self._contexts[1], self._contexts[2]

    def server_context(self) -> ssl.SSLContext:
        return self._current()[0]

    def client_context(self) -> ssl.SSLContext:
        return self._current()[1]

    async def renew(self) -> None:
        cred = await self.fetch(identity.new_key(), self.who)
        if cred.identity != self.who:
            raise identity.InvalidCertificate(f"the CA returned a certificate for {cred.identity}, not {self.who}")
        self.credential = cred
        self.last_error = ""
        self.ready.set()
        logger.info("certificate issued", identity=str(self.who), not_after=cred.not_after.isoformat())

    async def run(self) -> None:
        """Keeps the certificate fresh until cancelled."""
        backoff = self.retry_seconds
        while True:
            cred = self.credential
            if cred is not None and not cred.needs_renewal():
                wait = (cred.renew_at() - dt.datetime.now(dt.timezone.utc)).total_seconds()
                await asyncio.sleep(max(wait, 0.05))
                continue
            try:
                await self.renew()
                backoff = self.retry_seconds
            except Exception as e:  # noqa: BLE001 - any failure: keep the old one, retry later
                self.last_error = str(e) or type(e).__name__
                logger.warning("certificate fetch failed; retrying", identity=str(self.who), error=self.last_error,
                               retry_in=backoff, keeping_old_until=cred.not_after.isoformat() if cred else None)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_retry_seconds)
