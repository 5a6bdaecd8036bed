"""Outbound, the I/O half: carries out the Plan that `ztunnel.outbound.decide` made.

Per captured connection (15001 in the source pod's netns): read the
original destination, decide a Plan, then do it: plain TCP from the pod's
netns, or a stream on a pooled HBONE connection (`shoal.hbone_pool`) that
presents the pod's certificate and checks the server's SPIFFE ID. A service
endpoint that cannot be reached is reported to the balancer and another one
tried. Every failure ends up, classified, in the access log and the
response flags (`classify`, this part's one boundary for foreign errors).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from shoal import contracts, log, native_io, sockets
from shoal.certs import CertificateUnavailable
from shoal.errors import ShoalError
from shoal.hbone_io import TunnelRefused
from shoal.hbone_pool import Key, Pool
from shoal.hbone_relay import Side, TcpSide, relay
from shoal.identity import PeerMismatch
from shoal.model.addresses import join_address
from shoal.proxy_state import ProxyState

from ztunnel.connections import ConnectionTracker
from ztunnel.outbound import Balancer, OutboundError, Plan, decide
from ztunnel.pods import Pod, PodRegistry
from ztunnel.telemetry import ConnectionRecord, client_address

logger = log.get("ztunnel.outbound")

MAX_ENDPOINT_ATTEMPTS = 3  # per connection to a service: the first endpoint and two others


def classify(error: BaseException) -> tuple[str, str]:
    """(response flag, message saying what to check) for a failed connection."""
    if isinstance(error, TunnelRefused):
        what = "policy denied" if error.status in (401, 403) else "refused"
        return error.response_flag, f"{what}: {error}"
    if isinstance(error, sockets.ConnectFailed):
        return error.response_flag, f"{error.kind}: {error}"
    if isinstance(error, PeerMismatch):
        return error.response_flag, f"TLS identity mismatch: {error}"
    if isinstance(error, ShoalError):
        return error.response_flag, str(error)
    if isinstance(error, ssl.SSLError):
        return "UPE", (f"TLS failed: {error.reason or error}; check that both sides trust the same mesh root "
                       "and that the certificate is valid")
    if isinstance(error, asyncio.TimeoutError):
        return "UF", "timed out; check that the destination's ztunnel is reachable on 15008"
    return "UF", f"{type(error).__name__}: {error}"


def endpoint_failed(error: BaseException) -> bool:
    """Failures that count against an endpoint (policy refusals do not: the endpoint is fine)."""
    if isinstance(error, TunnelRefused):
        return error.status not in (401, 403)
    if isinstance(error, (OutboundError, CertificateUnavailable)):  # ours to fix, not the endpoint's
        return False
    return isinstance(error, (ShoalError, ssl.SSLError, asyncio.TimeoutError))


@dataclass(eq=False)
class OutboundDriver:
    state: ProxyState
    pods: PodRegistry
    pool: Pool
    balancer: Balancer
    tracker: ConnectionTracker
    connect_timeout: float

    async def handle(self, pod: Pod, conn: socket.socket, address) -> None:
        source = self.pods.workload_of(pod)
        destination = sockets.captured_destination(conn, "outbound")
        if destination is None:
            return
        record = ConnectionRecord("outbound", client_address(address, source), destination, source_workload=source,
                                  source_principal=str(pod.identity))
        self.tracker.begin(record, count_now=False)
        app: TcpSide | None = None
        endpoint = None
        try:
            if destination[1] == contracts.OUTBOUND_PORT and destination[0] in ("127.0.0.1", "::1",
                                                                                sockets.local_address(conn)[0]):
                raise OutboundError("connection to the outbound capture port itself; refusing to loop")
            plan = decide(self.state, source, destination[0], destination[1], self.balancer)
            _, app = await native_io.open_tcp(TcpSide, conn, accepted=True)  # holds the app's bytes
            upstream, plan = await self._open_with_retries(pod, source, destination, plan, record)
            self.tracker.opened(record)
            endpoint = plan.endpoint
            if endpoint is not None:
                self.balancer.succeeded(endpoint)
                self.balancer.opened(endpoint)
            record.meter = lambda: (app.bytes_received, app.bytes_sent)
            await relay(app, upstream)
            record.bytes_received, record.bytes_sent = app.bytes_received, app.bytes_sent
            if app.reset or getattr(upstream, "reset", False):
                record.response_flags = "UC" if not app.reset else "DC"
        except asyncio.CancelledError:
            record.fail("DC", "connection closed: pod removed or ztunnel draining")
            if app is not None:
                app.abort()
            raise
        except Exception as e:  # noqa: BLE001 - every failure is reported on the connection, never fatal
            flag, message = classify(e)
            record.fail(flag, message)
            if app is not None:
                record.bytes_received = app.bytes_received
                app.abort()
            else:
                sockets.reset(conn)
            logger.info("outbound connection failed", src=join_address(address), dst=join_address(destination),
                        error=message)
        finally:
            if endpoint is not None:
                self.balancer.closed(endpoint)
            self.tracker.end(record)

    async def _open_with_retries(self, pod: Pod, source, destination, plan: Plan,
                                 record: ConnectionRecord) -> tuple[Side, Plan]:
        for attempt in range(1, MAX_ENDPOINT_ATTEMPTS + 1):
            self._describe(record, plan)
            try:
                return await self._open_upstream(pod, plan), plan
            except Exception as e:
                if plan.endpoint is None or not endpoint_failed(e):
                    raise
                self.balancer.failed(plan.endpoint)
                # A service endpoint that cannot be reached: try another one, as a kube-proxy would not.
                retry = decide(self.state, source, destination[0], destination[1], self.balancer)
                if attempt == MAX_ENDPOINT_ATTEMPTS or retry.endpoint == plan.endpoint:
                    raise
                logger.info("endpoint failed; trying another", service=plan.service,
                            failed=join_address(plan.endpoint), error=classify(e)[1])
                plan = retry
        raise AssertionError("unreachable")

    def _describe(self, record: ConnectionRecord, plan: Plan) -> None:
        record.plan, record.service = plan.kind.value, plan.service
        # Through a waypoint the plan names no destination workload: the connection's peer is the waypoint.
        # A plan's addresses are canonical (decide's own, or the store's).
        record.destination_workload = (self.state.workloads.get(plan.destination_workload)
                                       or self.state.workload_by_ip(plan.connect[0], canonical=True))
        record.upstream = join_address(plan.connect)
        record.mtls = plan.uses_hbone
        record.destination_principal = str(plan.expected_identity) if plan.expected_identity else ""

    async def _open_upstream(self, pod: Pod, plan: Plan) -> Side:
        """The upstream side of a plan: a stream on a pooled HBONE connection, or plain TCP."""
        if plan.uses_hbone:
            key = Key(pod.info.uid, plan.source_identity, plan.connect, plan.expected_identity)
            return await self.pool.open_stream(key, plan.authority, self.connect_timeout)
        sock = await sockets.connect(pod.sockets, plan.connect, timeout=self.connect_timeout)
        _, upstream = await native_io.open_tcp(TcpSide, sock, accepted=False)
        return upstream
