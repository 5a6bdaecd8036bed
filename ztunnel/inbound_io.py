"""Inbound, the I/O half: HBONE on 15008 and captured plaintext on 15006, inside each enrolled pod.

HBONE: the TLS server presents the certificate of the pod the listener
belongs to (each listener lives in one pod's netns, so the destination is
known without SNI) and requires a client chain to the mesh root. For each
CONNECT, `ztunnel.inbound.decide_inbound` says yes (connect to the app,
keeping the client's IP, then answer 200) or no (401/403/400/503 with the
reason in `shoal-reason`).

Plaintext: the same decision, with PeerAuthentication; a refusal is a RST.
Either way one ConnectionRecord, one access-log line.

Drain: `go_away()` sends a graceful GOAWAY on every HBONE connection this
ztunnel serves, so peers open new tunnels on new connections (which land on
the ztunnel that took over the listeners) while the tunnels they have run on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field

from shoal import hbone, identity, native_io, netns, sockets
from shoal.certs import CertManager
from shoal.hbone_io import HboneSession, TunnelStream, accept_session, serve_until_lost
from shoal.hbone_relay import TcpSide, relay
from shoal.model.addresses import canonical_address, join_address
from shoal.proxy_state import ProxyState

from ztunnel.connections import ConnectionTracker
from ztunnel.inbound import InboundConnection, InboundPlan, Refusal, decide_inbound
from ztunnel.pods import Pod, PodRegistry
from ztunnel.telemetry import ConnectionRecord



@dataclass(eq=False)
class InboundDriver:
    state: ProxyState
    pods: PodRegistry
    certs: CertManager
    tracker: ConnectionTracker
    connect_timeout: float
    sessions: set[HboneSession] = field(default_factory=set)  # the HBONE connections served now
    going_away: bool = False

    def go_away(self) -> None:
        """Drain: a graceful GOAWAY to every HBONE peer, now and on any connection accepted from here on."""
        self.going_away = True
        for session in list(self.sessions):
            session.go_away()

    # --- HBONE (15008) ----------------------------------------------------------------

    async def hbone(self, pod: Pod, conn: socket.socket, address) -> None:
        try:
            context = await self.certs.server_context(pod.identity)
            session = await accept_session(conn, context, lambda s, st: self._tunnel(pod, s, st),
                                           handshake_timeout=self.connect_timeout)
        except Exception as e:  # noqa: BLE001 - a client without a mesh certificate: one record, one line
            here = sockets.local_address(conn) if conn.fileno() >= 0 else ("", 0)
            record = ConnectionRecord("inbound", address[:2], here, destination_workload=self.pods.workload_of(pod),
                                      destination_principal=str(pod.identity), mtls=True)
            tls = isinstance(e, (ssl.SSLError, ConnectionError))
            message = (f"TLS handshake failed: {getattr(e, 'reason', None) or e}; the client must present a mesh "
                       "certificate that chains to the mesh root" if tls else str(e))
            self.tracker.refused(record, "UPE" if tls else "UAEX", message)
            conn.close()
            return
        if self.going_away:
            session.go_away()
        await serve_until_lost(session, self.sessions)

    async def _tunnel(self, pod: Pod, session: HboneSession, stream: TunnelStream) -> None:
        peer, problem = _peer_identity(session)
        source = canonical_address(session.peer_address)   # a dual-stack listener's IPv4 peer is ::ffff:a.b.c.d
        target = canonical_address(hbone.parse_authority(stream.authority))   # the HBONE core refused any other authority
        workload = self.pods.workload_of(pod)
        decision = decide_inbound(self.state, workload, InboundConnection(
            source[0], target, mtls=True, peer=peer, peer_problem=problem), pod.reach)
        record = ConnectionRecord("inbound", source[:2], target,
                                  source_workload=self.state.workload_by_ip(source[0], canonical=True),
                                  destination_workload=workload, source_principal=str(peer) if peer else "",
                                  destination_principal=str(pod.identity), mtls=True,
                                  service=decision.service if decision else "")
        self.tracker.begin(record)
        app = None
        try:
            if stream.reset:  # the client gave up before an answer: connect nothing for it
                record.fail("DC", "the client reset the tunnel before it was answered")
                return
            if isinstance(decision, Refusal):
                record.fail(decision.response_flag, decision.reason)
                session.refuse(stream, decision.status, decision.reason)
                return
            try:
                sock = await self._connect_app(pod, decision)
            except sockets.ConnectFailed as e:
                record.fail("UF", str(e))
                session.refuse(stream, 503, str(e))
                return
            record.upstream = join_address(sock.getpeername())
            _, app = await native_io.open_tcp(TcpSide, sock, accepted=False)
            session.accept(stream)  # TunnelBroken if the client gave up meanwhile
            record.meter = lambda: (stream.bytes_received, stream.bytes_sent)
            await relay(stream, app)
            record.bytes_received, record.bytes_sent = stream.bytes_received, stream.bytes_sent
            if stream.reset or app.reset:
                record.response_flags = "UC" if app.reset else "DC"
        except asyncio.CancelledError:
            record.fail("DC", "connection closed: pod removed or ztunnel draining")
            stream.abort()
            if app is not None:
                app.abort()
            raise
        except Exception as e:  # noqa: BLE001 - reported on the connection, never fatal to the proxy
            record.fail("DC" if stream.reset else "UF", str(e) if stream.reset else f"{type(e).__name__}: {e}")
            stream.abort()
            if app is not None:
                app.abort()
        finally:
            self.tracker.end(record)

    # --- plaintext (15006) ----------------------------------------------------------------

    async def plaintext(self, pod: Pod, conn: socket.socket, address) -> None:
        workload = self.pods.workload_of(pod)
        destination = sockets.captured_destination(conn, "inbound")
        if destination is None:
            return
        decision = decide_inbound(self.state, workload, InboundConnection(address[0], destination), pod.reach)
        record = ConnectionRecord("inbound_plaintext", address[:2], destination, destination_workload=workload,
                                  # accept_forever canonicalised the address
                                  source_workload=self.state.workload_by_ip(address[0], canonical=True),
                                  destination_principal=str(pod.identity),
                                  service=decision.service if decision else "")
        if isinstance(decision, Refusal):
            self.tracker.refused(record, decision.response_flag, decision.reason)
            sockets.reset(conn)
            return
        self.tracker.begin(record)
        app = client = None
        try:
            _, client = await native_io.open_tcp(TcpSide, conn, accepted=True)
            sock = await self._connect_app(pod, decision)
            record.upstream = join_address(sock.getpeername())
            _, app = await native_io.open_tcp(TcpSide, sock, accepted=False)
            record.meter = lambda: (client.bytes_received, client.bytes_sent)
            await relay(client, app)
            record.bytes_received, record.bytes_sent = client.bytes_received, client.bytes_sent
        except asyncio.CancelledError:
            record.fail("DC", "connection closed: pod removed or ztunnel draining")
            if client is not None:
                client.abort()
            raise
        except Exception as e:  # noqa: BLE001 - reported on the connection, never fatal to the proxy
            record.fail("UF", str(e))
            if client is not None:
                record.bytes_received = client.bytes_received
                client.abort()
            else:
                sockets.reset(conn)
        finally:
            self.tracker.end(record)

    async def _connect_app(self, pod: Pod, plan: InboundPlan) -> socket.socket:
        if plan.via_loopback:
            # Over 127.0.0.1 a socket bound to loopback alone would answer: it must stay out of the mesh's reach.
            port = plan.connect[1]
            listening = await asyncio.get_running_loop().run_in_executor(None, netns.tcp_listeners,
                                                                         pod.netns_fd, port)
            if not any(not address.startswith("127.") and address != "::1" for address in listening):
                raise sockets.ConnectFailed(f"nothing listens on port {port} beyond the pod's loopback; an app "
                                            "bound to 127.0.0.1 is not reachable from the mesh", "refused")
        return await sockets.connect(pod.sockets, plan.connect, timeout=self.connect_timeout,
                                     transparent_source=plan.transparent_source)


def _peer_identity(session: HboneSession) -> tuple[identity.SpiffeId | None, str]:
    """The client's SPIFFE ID (read once per TLS connection), or None and why."""
    cached = getattr(session, "peer_identity", None)
    if cached is None:
        try:
            cached = session.peer_identity = (identity.peer_spiffe_id(session.ssl_object), "")
        except identity.IdentityError as e:
            cached = session.peer_identity = (None, str(e))
    return cached
