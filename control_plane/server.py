"""The control plane's servers: gRPC on 15012 (Config.Watch, Certificates.Sign)
over TLS, and HTTP on 15014. Everything it needs is passed in, so tests build
one on ephemeral loopback ports with a test CA and a state they drive.

gRPC TLS: the server presents a certificate from the mesh CA with the SPIFFE
ID `spiffe://<td>/ns/shoal-system/sa/shoal-control-plane` and the DNS name
`shoal-control-plane.shoal-system.svc`; clients verify it against the trust
bundle and set that name as the TLS target (`shoal.config_client`). The
certificate is reissued at half life without a restart (dynamic credentials).
Callers authenticate with bearer tokens (`control_plane.authn`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from control_plane import rotation
from control_plane.authn import Authenticator, GuardedAuthenticator
from control_plane.ca import CONTROL_PLANE_DNS, CertificateAuthority
from control_plane.http import HttpServer
from control_plane.metrics import Metrics
from control_plane.signer import SignService
from control_plane.state import ConfigState
from control_plane.watch import WatchService
from shoal import identity, log
from shoal.contracts import CONTROL_PLANE_GRPC_PORT, CONTROL_PLANE_HTTP_PORT
from shoal.api import ca_pb2_grpc
from shoal.model.addresses import canonical_or_none, join_host_port

logger = log.get("shoal.control_plane")

CONTROL_PLANE_NAMESPACE = "shoal-system"
CONTROL_PLANE_SERVICE_ACCOUNT = "shoal-control-plane"


@dataclass(frozen=True)
class Endpoints:
    grpc_host: str = "0.0.0.0"
    grpc_port: int = CONTROL_PLANE_GRPC_PORT
    http_host: str = "0.0.0.0"
    http_port: int = CONTROL_PLANE_HTTP_PORT


def split_address(value: str, default_port: int) -> tuple[str, int]:
    """A listen address as (host, port), an IPv6 host without its brackets:
    '0.0.0.0:15012' -> ('0.0.0.0', 15012), '[::]:15012' -> ('::', 15012) (both families),
    '[fd73::1]' and 'host' -> the default port; ':15012' and '15012' listen on all IPv4 addresses.
    An IPv6 address with a port must be bracketed (RFC 3986): '::1:15012' could name two things."""
    text = value.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"bad listen address {value!r}: expected [IPV6]:PORT, e.g. [::]:{default_port}")
        port = rest[1:] if rest else str(default_port)
        if canonical_or_none(host) is None or ":" not in host:
            raise ValueError(f"bad listen address {value!r}: brackets hold an IPv6 address, e.g. [::]:{default_port}")
    elif text.count(":") > 1:
        raise ValueError(f"bad listen address {value!r}: write an IPv6 address in brackets, "
                         f"e.g. [::]:{default_port} or [{text}]")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = ("", text) if text.isdigit() else (text, str(default_port))
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad listen address {value!r}: expected HOST:PORT, e.g. 0.0.0.0:{default_port}")
    return host or "0.0.0.0", int(port)


class ConfigServer:
    def __init__(self, *, state: ConfigState, authority: CertificateAuthority,
                 authenticator: Authenticator | GuardedAuthenticator,
                 metrics: Metrics | None = None, endpoints: Endpoints = Endpoints(),
                 root_namespace: str = "istio-system") -> None:
        self.state = state
        self.authority = authority
        self.metrics = metrics or Metrics()
        self.endpoints = endpoints
        self.synced = asyncio.Event()
        # Both services ask through one guard: one cache, one bound on checks (a flood of bad tokens).
        if not isinstance(authenticator, GuardedAuthenticator):
            authenticator = GuardedAuthenticator(authenticator)
        self.authenticator = authenticator
        self.watch = WatchService(state, authenticator, self.metrics, self.synced, root_namespace)
        self.signer = SignService(authority, state, authenticator, self.metrics, self.synced)
        self.http = HttpServer(ready=self.not_ready_reason, registry=self.metrics.registry, status=self.status)
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._credential: identity.Credential | None = None
        self._credential_signer = ""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.grpc_server = grpc.aio.server(options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ])
        self.grpc_server.add_generic_rpc_handlers((self.watch.handler(),))
        ca_pb2_grpc.add_CertificatesServicer_to_server(self.signer, self.grpc_server)
        credentials = grpc.dynamic_ssl_server_credentials(self._certificate_configuration(),
                                                          self._fetch_certificate_configuration)
        # gRPC takes '[::]:port' as both families (0.0.0.0 where there is no IPv6).
        address = join_host_port(self.endpoints.grpc_host, self.endpoints.grpc_port)
        try:
            self.grpc_port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise OSError(f"cannot listen for gRPC on {address}: {e}; is another control plane running?") from None
        await self.grpc_server.start()
        try:
            self.http_port = await self.http.start(self.endpoints.http_host, self.endpoints.http_port)
        except OSError as e:
            await self.grpc_server.stop(None)
            where = join_host_port(self.endpoints.http_host, self.endpoints.http_port)
            raise OSError(f"cannot listen for HTTP on {where}: {e.strerror or e}") from None
        logger.info("serving", grpc=join_host_port(self.endpoints.grpc_host, self.grpc_port),
                    http=join_host_port(self.endpoints.http_host, self.http_port))

    async def stop(self, grace: float = 1.0) -> None:
        await self.http.stop()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)

    def mark_synced(self) -> None:
        """The config source has delivered its first full state: proxies may now be served."""
        self.state.synced = True
        self.synced.set()

    # -- TLS -------------------------------------------------------------------------

    def _server_credential(self) -> identity.Credential:
        who = identity.format_spiffe_id(self.authority.trust_domain, CONTROL_PLANE_NAMESPACE,
                                        CONTROL_PLANE_SERVICE_ACCOUNT)
        self._credential_signer = self.authority.signer.fingerprint
        return self.authority.issue_server(who, [CONTROL_PLANE_DNS])

    def _certificate_configuration(self):
        self._credential = self._server_credential()
        return grpc.ssl_server_certificate_configuration(
            [(self._credential.key_pem, self._credential.chain_pem)])

    def _fetch_certificate_configuration(self):
        # Called by gRPC on each handshake; None keeps the current certificate. Reissued at half life,
        # and as soon as another root signs: by then every proxy's bundle has trusted the new root for
        # a leaf lifetime (control_plane.rotation), and the old root will leave the bundle.
        if (self._credential is not None and not self._credential.needs_renewal(self.authority.clock())
                and self._credential_signer == self.authority.signer.fingerprint):
            return None
        logger.info("reissuing the control plane's serving certificate")
        return self._certificate_configuration()

    # -- status -------------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        if self.grpc_server is None:
            return "gRPC is not serving yet"
        if not self.synced.is_set():
            return "waiting for the config source's first full list"
        return None

    def _roots_status(self) -> dict:
        roots = self.authority.current()
        return {"signer": roots.signer.fingerprint[:16],
                "trusted": [{"fingerprint": rotation.fingerprint(c)[:16], "subject": c.subject.rfc4514_string()}
                            for c in roots.trusted],
                "incoming": roots.incoming.fingerprint[:16] if roots.incoming else None,
                "incoming_signs_from": (roots.switch_at(self.authority.overlap).isoformat()
                                        if roots.incoming else None),
                "retiring": {fp[:16]: at.isoformat() for fp, at in roots.retiring}}

    def status(self) -> dict:
        return {
            "ready": self.not_ready_reason() or "ready",
            "trust_domain": self.authority.trust_domain,
            "roots": self._roots_status(),
            "resources": {str(t): {"count": j.live, "version": self.state.version(t)}
                          for t, j in self.state.journals.items()},
            "proxies": [{"scope": s.scope.describe(), "peer": s.peer, "in_sync": s.subscription.in_sync(),
                         "nacks": s.nacks} for s in sorted(self.watch.streams, key=lambda s: s.opened)],
            "certificates": self.signer.certificates(self.authority.clock()),
        }
