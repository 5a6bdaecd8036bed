"""Inbound: HBONE on 15008 and captured plaintext on 15006, inside each enrolled pod.

HBONE: the TLS server presents the certificate of the pod the listener
belongs to (each listener lives in one pod's netns, so the destination is
known without SNI), requires a client chain to the mesh root, then for each
CONNECT: checks the target is this pod, authorizes (L4 policy), connects to
the app keeping the client's IP (IP_TRANSPARENT) and answers 200 — or
401/403/503 with a reason.

Plaintext: PeerAuthentication STRICT refuses it (RST); PERMISSIVE forwards
it, after the same authorization with no principal, with telemetry.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING

from shoal import hbone, identity, log
from shoal.hbone_io import HboneSession, TunnelStream
from shoal.hbone_relay import TcpSide, relay
from shoal.model import PeerAuthMode, PolicyScope

from ztunnel import authz, sockets
from ztunnel.telemetry import ConnectionRecord

if TYPE_CHECKING:
    from ztunnel.proxy import Pod, Ztunnel

logger = log.get("ztunnel.inbound")


def _principal(spiffe) -> str:
    return f"{spiffe.trust_domain}/ns/{spiffe.namespace}/sa/{spiffe.service_account}"


class Inbound:
    def __init__(self, ztunnel: "Ztunnel") -> None:
        self.z = ztunnel

    # --- HBONE (15008) ----------------------------------------------------------------

    async def hbone_connection(self, pod: "Pod", conn: socket.socket, address) -> None:
        loop = asyncio.get_running_loop()
        z = self.z
        try:
            ctx = await z.certs.server_context(pod.identity)
            _, session = await loop.connect_accepted_socket(
                lambda: HboneSession(False, on_request=lambda s, st: self._tunnel(pod, s, st)), conn, ssl=ctx,
                ssl_handshake_timeout=z.config.connect_timeout)
        except Exception as e:
            # A client without a mesh certificate, or no certificate for this pod: one record, one log line.
            record = ConnectionRecord("inbound", address[:2], conn.getsockname()[:2] if conn.fileno() >= 0 else ("", 0),
                                      destination_workload=z.workload_of(pod), destination_principal=pod.identity,
                                      mtls=True)
            message = (f"TLS handshake failed: {getattr(e, 'reason', None) or e}; the client must present a mesh "
                       "certificate that chains to the mesh root" if isinstance(e, (ssl.SSLError, ConnectionError))
                       else str(e))
            record.fail("UPE" if isinstance(e, (ssl.SSLError, ConnectionError)) else "UAEX", message)
            z.begin(record)
            z.end(record)
            conn.close()
            return
        try:
            await session.lost
        except asyncio.CancelledError:
            session.close()
            raise

    async def _tunnel(self, pod: "Pod", session: HboneSession, stream: TunnelStream) -> None:
        z = self.z
        try:
            peer = _peer_identity(session)
        except identity.IdentityError as e:
            session.refuse(stream, 401, f"client certificate carries no mesh identity: {e}")
            return
        source_ip = session.peer_address[0]
        workload = z.workload_of(pod)
        source_workload = next((w for w in (z.state.workload_by_ip(source_ip),) if w is not None), None)
        try:
            host, port = hbone.parse_authority(stream.authority)
        except hbone.BadAuthority as e:
            session.refuse(stream, 400, str(e))
            return
        record = ConnectionRecord("inbound", (source_ip, session.peer_address[1]), (host, port),
                                  source_workload=source_workload, destination_workload=workload,
                                  source_principal=str(peer), destination_principal=pod.identity, mtls=True,
                                  service=_service_of(z, workload, port))
        z.begin(record)
        app = None
        try:
            if workload.ips and host not in workload.ips:
                reason = f"{host} is not this pod ({', '.join(workload.ips)}); check the client's outbound decision"
                record.fail("NR", reason)
                session.refuse(stream, 400, reason)
                return
            verdict = authorize_inbound(z.state, workload, authz.Connection(
                source_ip=source_ip, destination_port=port, source_principal=_principal(peer),
                source_namespace=peer.namespace))
            if not verdict:
                record.fail("UAEX", f"policy denied: {verdict.reason}")
                session.refuse(stream, 403, verdict.reason)
                return
            try:
                sock = await _connect_app(pod, host, port, source_ip, z.config.connect_timeout)
            except sockets.ConnectFailed as e:
                record.fail("UF", str(e))
                session.refuse(stream, 503, str(e))
                return
            record.upstream = "%s:%d" % sock.getpeername()[:2]
            _, app = await asyncio.get_running_loop().create_connection(TcpSide, sock=sock)
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
        except Exception as e:
            record.fail("DC" if stream.reset else "UF", str(e) if stream.reset else f"{type(e).__name__}: {e}")
            stream.abort()
            if app is not None:
                app.abort()
        finally:
            z.end(record)

    # --- plaintext (15006) ----------------------------------------------------------------

    async def plaintext(self, pod: "Pod", conn: socket.socket, address) -> None:
        z = self.z
        workload = z.workload_of(pod)
        try:
            destination = sockets.original_destination(conn)
        except OSError as e:
            conn.close()
            logger.warning("no original destination on an inbound connection", error=str(e))
            return
        record = ConnectionRecord("inbound_plaintext", address[:2], destination, destination_workload=workload,
                                  source_workload=z.state.workload_by_ip(address[0]),
                                  destination_principal=pod.identity,
                                  service=_service_of(z, workload, destination[1]))
        z.begin(record)
        app = client = None
        try:
            if destination[1] in (sockets.INBOUND_PLAINTEXT_PORT, hbone.PORT, sockets.OUTBOUND_PORT):
                raise ConnectionRefusedError(f"plaintext to the ztunnel's own port {destination[1]}; refusing to loop")
            mode = peer_auth_inbound(z.state, workload, destination[1])
            if mode is PeerAuthMode.STRICT:
                record.fail("UAEX", "plaintext refused: PeerAuthentication is STRICT for this workload; "
                            "the client must be in the mesh")
                _reset(conn)
                return
            verdict = authorize_inbound(z.state, workload, authz.Connection(
                source_ip=address[0], destination_port=destination[1]))
            if not verdict:
                record.fail("UAEX", f"policy denied: {verdict.reason}")
                _reset(conn)
                return
            loop = asyncio.get_running_loop()
            _, client = await loop.connect_accepted_socket(TcpSide, conn)
            sock = await _connect_app(pod, destination[0], destination[1], address[0], z.config.connect_timeout)
            record.upstream = "%s:%d" % sock.getpeername()[:2]
            _, app = await loop.create_connection(TcpSide, sock=sock)
            record.meter = lambda: (client.bytes_received, client.bytes_sent)
            await relay(client, app)
            record.bytes_received, record.bytes_sent = client.bytes_received, client.bytes_sent
        except asyncio.CancelledError:
            record.fail("DC", "connection closed: pod removed or ztunnel draining")
            if client is not None:
                client.abort()
            raise
        except Exception as e:
            record.fail("UF", str(e))
            if client is not None:
                record.bytes_received = client.bytes_received
                client.abort()
            else:
                _reset(conn)
        finally:
            z.end(record)


def authorize_inbound(state, workload, conn: authz.Connection) -> authz.Verdict:
    """L4 authorization for a connection to `workload`, failing closed while its labels are unknown.

    A pod can be handed over by its node agent before the control plane's
    Workload (with its labels) arrives. Policies that select by labels
    cannot be evaluated for it yet; if any exist in its namespace, refuse
    rather than skip them.
    """
    if workload.uid not in state.workloads and any(
            p.scope is PolicyScope.WORKLOAD and p.namespace == workload.namespace
            for p in state.authorizations.values()):
        return authz.Verdict(False, "", "this workload's labels are not in the config yet and label-selected "
                                        "policies exist in its namespace; retry in a moment")
    return authz.authorize(state.policies_for(workload), conn)


def peer_auth_inbound(state, workload, port: int) -> PeerAuthMode:
    """PeerAuthentication mode; STRICT while the workload's labels are unknown and a
    label-selected PeerAuthentication exists in its namespace (fail closed)."""
    if workload.uid not in state.workloads and any(
            p.scope is PolicyScope.WORKLOAD and p.namespace == workload.namespace
            for p in state.peer_authentications.values()):
        return PeerAuthMode.STRICT
    return state.peer_auth_mode(workload, port)


async def _connect_app(pod: "Pod", host: str, port: int, client_ip: str, timeout: float):
    """Connects to the app in its pod, from the client's IP when the pod allows it.

    `pod.app_via_loopback` is set at enrollment when the pod's inbound capture
    would steer the ztunnel's own connections to the pod IP back into 15006
    (see ztunnel.proxy.probe_capture); then the app is reached on 127.0.0.1.
    """
    if pod.app_via_loopback:
        return await sockets.connect(pod.sockets, ("127.0.0.1", port), timeout=timeout)
    return await sockets.connect(pod.sockets, (host, port), timeout=timeout,
                                 transparent_source=client_ip if pod.transparent else None)


def _peer_identity(session: HboneSession):
    cached = getattr(session, "peer_identity", None)
    if cached is None:
        cached = session.peer_identity = identity.peer_spiffe_id(session.ssl_object)
    return cached


def _service_of(z: "Ztunnel", workload, port: int) -> str:
    """The service this connection most likely came through: the one whose endpoint targets this port."""
    services = [s for s in z.state.services_of(workload)
                if any(e.workload_uid == workload.uid and e.target_port == port for e in s.endpoints)]
    return services[0].hostname if len(services) == 1 else ""


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()
