"""Certificates.Sign over gRPC: authenticate, authorize against the config state, sign."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc

from control_plane import authz
from control_plane.authn import AuthenticationFailed, AuthenticationUnavailable, Caller, GuardedAuthenticator
from control_plane.ca import CertificateAuthority, CsrRefused
from control_plane.metrics import Metrics
from control_plane.state import ConfigState
from shoal import identity, log, tokens
from shoal.api import ca_pb2, ca_pb2_grpc

logger = log.get("shoal.control_plane.ca")


class SignService(ca_pb2_grpc.CertificatesServicer):
    def __init__(self, authority: CertificateAuthority, state: ConfigState, authenticator: GuardedAuthenticator,
                 metrics: Metrics, ready: asyncio.Event) -> None:
        self.authority = authority
        self.state = state
        self.authenticator = authenticator
        self.metrics = metrics
        self.ready = ready
        # What each ztunnel was last issued, per identity: `shoal check` on Kubernetes reads it (/debug/config),
        # where the proxies' own admin ports are out of reach; a proxy that stops renewing shows as near expiry.
        self.issued: dict[tuple[Caller, str], tuple[identity.SpiffeId, dt.datetime]] = {}

    async def _refuse(self, context, code: grpc.StatusCode, reason_label: str, message: str, **fields) -> None:
        self.metrics.csr_refused.labels(reason_label).inc()
        logger.warning("certificate refused", reason=message, peer=context.peer(), **fields)
        await context.abort(code, message)

    async def Sign(self, request: ca_pb2.SignRequest, context: grpc.aio.ServicerContext) -> ca_pb2.SignResponse:
        try:
            caller = await self.authenticator.authenticate(tokens.bearer(context.invocation_metadata()))
        except AuthenticationUnavailable as e:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "unavailable", str(e))
        except AuthenticationFailed as e:
            self.metrics.auth_failures.labels("Sign").inc()
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", str(e))
        try:
            requested = identity.parse_spiffe_id(request.identity)
        except identity.InvalidSpiffeId as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad-identity", str(e))
        if not self.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the control plane has not synced its config yet; retry shortly")
        reason = authz.may_sign(caller, requested, self.state)
        if reason:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "not-authorized", reason,
                               caller=caller.describe(), identity=str(requested))
        ttl = dt.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        try:
            issued = self.authority.sign(request.csr.encode(), requested, ttl)
        except CsrRefused as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad-csr", str(e),
                               caller=caller.describe(), identity=str(requested))
        self.metrics.csr_signed.inc()
        if caller.is_node:
            self.issued[(caller, str(requested))] = (requested, issued.not_after)
        logger.info("certificate signed", identity=str(requested), caller=caller.describe(),
                    not_after=issued.not_after.isoformat())
        return ca_pb2.SignResponse(chain=issued.chain_pem.decode(), bundle=issued.bundle_pem.decode(),
                                   not_after=int(issued.not_after.timestamp()))

    def certificates(self, now: dt.datetime) -> list[dict]:
        """The certificates ztunnels hold for pods still scheduled on their node: each one's identity and how
        long it has left (a ztunnel renews at half life, so an hour left means its renewals fail). Those no
        longer needed (the pod left the node) are forgotten."""
        out = []
        for key, (requested, not_after) in sorted(self.issued.items(), key=lambda item: (item[0][0].node, item[0][1])):
            caller = key[0]
            if authz.may_sign(caller, requested, self.state) is not None:
                del self.issued[key]
                continue
            out.append({"proxy": f"ztunnel on {caller.node}", "identity": str(requested),
                        "expires_in_seconds": int((not_after - now).total_seconds())})
        return out
