"""The ztunnel's I/O: enrolled pods, their listeners, and the outbound half.

For every pod the node agent hands over (with its netns fd), the ztunnel
opens three listeners *inside the pod's netns*: 15001 (captured outbound),
15006 (captured inbound plaintext) and 15008 (HBONE). Connections accepted
there are carried out here (outbound) and in `ztunnel.inbound`.

Outbound, per connection: read the original destination, `outbound.decide`
a Plan (pure), then do it: plain TCP from the pod's netns, or a stream on a
pooled HBONE connection that presents the pod's certificate and checks the
server's SPIFFE ID. Errors are classed (refused, timed out, TLS identity
mismatch, policy denied) and end up in the access log and response flags.
"""

from __future__ import annotations

import asyncio
import os
import time
import socket
import ssl
from dataclasses import dataclass, field

from shoal import handoff, hbone, identity, log, transparent
from shoal.hbone_io import HboneSession, RelayError, TunnelRefused
from shoal.hbone_relay import TcpSide, relay
from shoal.model import Protocol, Workload

from ztunnel import sockets
from ztunnel.certs import CertificateUnavailable, CertManager
from ztunnel.config import Config
from ztunnel.inbound import Inbound
from ztunnel.outbound import Balancer, OutboundError, decide
from ztunnel.pool import Key, Pool
from ztunnel.state import ProxyState
from ztunnel.telemetry import ConnectionRecord, Metrics

logger = log.get("ztunnel.proxy")

MAX_ENDPOINT_ATTEMPTS = 3  # per connection to a service: the first endpoint and two others


@dataclass
class Pod:
    info: handoff.Workload
    netns_fd: int
    identity: str
    listeners: dict[int, socket.socket] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)
    connections: set[asyncio.Task] = field(default_factory=set)
    transparent: bool = False
    app_via_loopback: bool = False
    sockets: "sockets.SocketFactory | None" = None

    def __post_init__(self) -> None:
        self.sockets = sockets.SocketFactory(self.netns_fd)


def classify(error: BaseException) -> tuple[str, str]:
    """(response flag, message saying what to check) for a failed connection."""
    if isinstance(error, sockets.ConnectFailed):
        flag = {"refused": "UF", "timed_out": "UF", "unreachable": "UF"}[error.kind]
        return flag, f"{error.kind}: {error}"
    if isinstance(error, identity.PeerMismatch):
        return "UPE", f"TLS identity mismatch: {error}"
    if isinstance(error, ssl.SSLError):
        return "UPE", (f"TLS handshake failed: {error.reason or error}; check that both sides trust the same "
                       "mesh root and that the certificate is valid")
    if isinstance(error, TunnelRefused):
        what = "policy denied" if error.status in (401, 403) else "refused"
        return error.response_flag, f"{what}: {error}"
    if isinstance(error, (OutboundError, CertificateUnavailable, RelayError)):
        return getattr(error, "response_flag", "UF"), str(error)
    if isinstance(error, asyncio.TimeoutError):
        return "UF", "timed out; check that the destination's ztunnel is reachable on 15008"
    return "UF", f"{type(error).__name__}: {error}"


class Ztunnel:
    """The whole proxy of one node: state, certificates, pool, pods."""

    def __init__(self, config: Config, state: ProxyState, certs: CertManager, metrics: Metrics | None = None) -> None:
        self.config = config
        self.state = state
        self.certs = certs
        self.metrics = metrics or Metrics()
        self.balancer = Balancer(config.balancing)
        self.pool = Pool(self._connect_hbone, max_streams=config.pool_max_streams, idle_timeout=config.pool_idle_seconds)
        self.pods: dict[str, Pod] = {}
        self.active: set[ConnectionRecord] = set()
        self.inbound = Inbound(self)

    # --- the node agent's hand-off (shoal.handoff.WorkloadHandler) ---------------------

    async def add_workload(self, workload: handoff.Workload, netns_fd: int) -> socket.socket | None:
        held = self.pods.get(workload.uid)
        if held is not None:
            os.close(netns_fd)
            return held.listeners.get(sockets.INBOUND_PLAINTEXT_PORT)
        uri = str(identity.format_spiffe_id(self.config.trust_domain, workload.namespace, workload.service_account))
        pod = Pod(workload, netns_fd, uri)
        try:
            captured = await probe_capture(self.state, pod)
        except (OSError, sockets.SocketError) as e:
            logger.warning("could not probe the pod's inbound capture; assuming it spares the ztunnel",
                           pod=f"{workload.namespace}/{workload.name}", error=str(e))
            captured = False
        if captured:
            pod.app_via_loopback = True
            logger.warning("inbound capture in this pod catches the ztunnel's own connections to the pod IP "
                           "(eBPF sk_lookup sees them as arriving on eth0); reaching the app over 127.0.0.1, "
                           "so the app sees 127.0.0.1 instead of the client's IP",
                           pod=f"{workload.namespace}/{workload.name}")
        try:
            for port in (sockets.OUTBOUND_PORT, sockets.INBOUND_PLAINTEXT_PORT, hbone.PORT):
                pod.listeners[port] = sockets.listener(netns_fd, port)
        except sockets.SocketError:
            for sock in pod.listeners.values():
                sock.close()
            pod.sockets.close()
            os.close(netns_fd)
            raise
        if self.config.preserve_source_ip and not pod.app_via_loopback:
            try:
                await asyncio.get_running_loop().run_in_executor(None, transparent.install, netns_fd)
                pod.transparent = True
            except Exception as e:
                logger.warning("source IP will not be preserved for this pod", pod=f"{workload.namespace}/{workload.name}",
                               error=str(e))
        self.pods[workload.uid] = pod
        self.certs.want(uri)
        handlers = {sockets.OUTBOUND_PORT: self._outbound, sockets.INBOUND_PLAINTEXT_PORT: self.inbound.plaintext,
                    hbone.PORT: self.inbound.hbone_connection}
        loop = asyncio.get_running_loop()
        for port, sock in pod.listeners.items():
            pod.tasks.append(loop.create_task(self._accept_loop(pod, sock, handlers[port])))
        logger.info("pod enrolled", pod=f"{workload.namespace}/{workload.name}", uid=workload.uid, identity=uri,
                    source_ip_preserved=pod.transparent and not pod.app_via_loopback)
        return pod.listeners[sockets.INBOUND_PLAINTEXT_PORT]

    async def del_workload(self, uid: str, *, leaving_mesh: bool = True) -> None:
        """Stops serving the pod. `leaving_mesh` False (ztunnel shutdown) keeps the pod's
        source-IP rules: the next ztunnel (SO_REUSEPORT takeover) relies on them."""
        pod = self.pods.pop(uid, None)
        if pod is None:
            return
        for task in pod.tasks + list(pod.connections):
            task.cancel()
        for sock in pod.listeners.values():
            sock.close()
        pod.sockets.close()
        self.pool.drop_pod(uid)
        if pod.transparent and leaving_mesh:
            try:
                await asyncio.get_running_loop().run_in_executor(None, transparent.remove, pod.netns_fd)
            except Exception as e:
                logger.warning("could not remove source-IP rules", uid=uid, error=str(e))
        os.close(pod.netns_fd)
        if not any(p.identity == pod.identity for p in self.pods.values()):
            self.certs.forget(pod.identity)
        logger.info("pod removed", pod=f"{pod.info.namespace}/{pod.info.name}", uid=uid)

    async def close(self) -> None:
        for uid in list(self.pods):
            await self.del_workload(uid, leaving_mesh=False)
        self.pool.close()

    def stop_accepting(self) -> None:
        """Drain: close every listener (a new ztunnel with SO_REUSEPORT takes new connections)."""
        for pod in self.pods.values():
            for task in pod.tasks:
                task.cancel()
            for sock in pod.listeners.values():
                sock.close()

    async def drain(self, seconds: float, urgent: asyncio.Event | None = None) -> bool:
        """After stop_accepting(): waits for open connections to finish, up to `seconds`
        (or until `urgent` is set), then cuts the rest. True when nothing had to be cut."""
        deadline = time.monotonic() + seconds
        while self.active and time.monotonic() < deadline and not (urgent is not None and urgent.is_set()):
            await asyncio.sleep(0.05)
        clean = not self.active
        if not clean:
            logger.warning("drain deadline reached; closing connections", connections=len(self.active))
            tasks = [t for pod in self.pods.values() for t in pod.connections]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)
        return clean

    # --- accepting -------------------------------------------------------------------

    async def _accept_loop(self, pod: Pod, sock: socket.socket, handler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except (OSError, asyncio.CancelledError):
                return
            task = loop.create_task(handler(pod, conn, address))
            pod.connections.add(task)
            task.add_done_callback(pod.connections.discard)

    def workload_of(self, pod: Pod) -> Workload:
        known = self.state.workloads.get(pod.info.uid)
        if known is not None:
            return known
        # The control plane has not told us about it yet; the hand-off is enough to act for it.
        return Workload(uid=pod.info.uid, name=pod.info.name, namespace=pod.info.namespace,
                        service_account=pod.info.service_account, node=self.config.node, ips=(),
                        protocol=Protocol.HBONE)

    def begin(self, record: ConnectionRecord, *, count_now: bool = True) -> None:
        """Tracks the connection; counts it as opened now, or (outbound) once its labels are known."""
        self.active.add(record)
        if count_now:
            record.open(self.metrics)

    def end(self, record: ConnectionRecord) -> None:
        self.active.discard(record)
        record.close(self.metrics)

    async def report_metrics(self, every: float = 5.0) -> None:
        """Counts the bytes of open connections periodically, as Istio's proxies do."""
        while True:
            await asyncio.sleep(every)
            for record in list(self.active):
                record.report(self.metrics)

    # --- outbound ----------------------------------------------------------------------

    async def _outbound(self, pod: Pod, conn: socket.socket, address) -> None:
        source = self.workload_of(pod)
        try:
            destination = sockets.original_destination(conn)
        except OSError as e:
            conn.close()
            logger.warning("no original destination on an outbound connection", error=str(e))
            return
        record = ConnectionRecord("outbound", address[:2], destination, source_workload=source,
                                  source_principal=pod.identity)
        self.begin(record, count_now=False)
        loop = asyncio.get_running_loop()
        app: TcpSide | None = None
        endpoint = None
        try:
            if destination[1] == sockets.OUTBOUND_PORT and destination[0] in ("127.0.0.1", conn.getsockname()[0]):
                raise OutboundError("connection to the outbound capture port itself; refusing to loop")
            plan = decide(self.state, source, destination[0], destination[1], self.balancer)
            _, app = await loop.connect_accepted_socket(TcpSide, conn)  # holds the app's bytes until relayed
            for attempt in range(1, MAX_ENDPOINT_ATTEMPTS + 1):
                self._describe(record, plan)
                try:
                    upstream = await self._open_upstream(pod, plan)
                    break
                except Exception as e:
                    if plan.endpoint is None or not _endpoint_failed(e):
                        raise
                    self.balancer.failed(plan.endpoint)
                    # A service endpoint that cannot be reached: try another one, as a kube-proxy would not.
                    retry = decide(self.state, source, destination[0], destination[1], self.balancer)
                    if attempt == MAX_ENDPOINT_ATTEMPTS or retry.endpoint == plan.endpoint:
                        raise
                    logger.info("endpoint failed; trying another", service=plan.service,
                                failed=f"{plan.endpoint[0]}:{plan.endpoint[1]}", error=classify(e)[1])
                    plan = retry
            record.open(self.metrics)
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
        except Exception as e:  # every failure is reported on the connection, never fatal to the proxy
            flag, message = classify(e)
            record.fail(flag, message)
            if app is not None:
                record.bytes_received = app.bytes_received
                app.abort()
            else:
                _reset_socket(conn)
            logger.info("outbound connection failed", src=f"{address[0]}:{address[1]}",
                        dst=f"{destination[0]}:{destination[1]}", error=message)
        finally:
            if endpoint is not None:
                self.balancer.closed(endpoint)
            self.end(record)

    def _describe(self, record: ConnectionRecord, plan) -> None:
        record.plan, record.service = plan.kind.value, plan.service
        record.destination_workload = self.state.workloads.get(plan.destination_workload)
        record.upstream = f"{plan.connect[0]}:{plan.connect[1]}"
        record.mtls = plan.uses_hbone
        record.destination_principal = plan.expected_identity

    async def _open_upstream(self, pod: Pod, plan):
        """The upstream side of a plan: a stream on a pooled HBONE connection, or plain TCP."""
        if plan.uses_hbone:
            key = Key(pod.info.uid, plan.source_identity, plan.connect, plan.expected_identity)
            session = await self.pool.checkout(key)
            try:
                return await session.open(plan.authority, timeout=self.config.connect_timeout)
            except hbone.StreamLimitReached:  # the peer lowered its limit meanwhile: another connection
                session = await self.pool.checkout(key)
                return await session.open(plan.authority, timeout=self.config.connect_timeout)
        sock = await sockets.connect(pod.sockets, plan.connect, timeout=self.config.connect_timeout)
        _, upstream = await asyncio.get_running_loop().create_connection(TcpSide, sock=sock)
        return upstream

    async def _connect_hbone(self, key: Key) -> HboneSession:
        pod = self.pods.get(key.source_pod)
        if pod is None:
            raise RelayError("the source pod was removed from the mesh")
        ctx = await self.certs.client_context(key.source_identity)
        sock = await sockets.connect(pod.sockets, key.destination, timeout=self.config.connect_timeout)
        loop = asyncio.get_running_loop()
        try:
            _, session = await loop.create_connection(
                lambda: HboneSession(True, name=f"{key.destination[0]}:{key.destination[1]}"), sock=sock, ssl=ctx,
                server_hostname="", ssl_handshake_timeout=self.config.connect_timeout)
        except BaseException:
            sock.close()
            raise
        try:
            identity.check_peer(session.ssl_object, identity.parse_spiffe_id(key.expected_identity))
        except identity.IdentityError:
            session.close()
            raise
        return session

    # --- the admin dump ----------------------------------------------------------------

    def dump(self) -> dict:
        out = self.state.dump()
        out["certificates"] = self.certs.dump()
        out["pods"] = [{"uid": p.info.uid, "name": p.info.name, "namespace": p.info.namespace,
                        "identity": p.identity, "source_ip_preserved": p.transparent and not p.app_via_loopback,
                        "connections": len(p.connections)} for p in self.pods.values()]
        out["pool"] = [{"source_pod": k.source_pod, "destination": f"{k.destination[0]}:{k.destination[1]}",
                        "identity": k.expected_identity, "connections": len(v),
                        "streams": sum(c.open_streams for c in v)} for k, v in self.pool.connections.items()]
        out["active_connections"] = len(self.active)
        return out


def pod_ip(state: ProxyState, pod: Pod) -> str | None:
    known = state.workloads.get(pod.info.uid)
    if known is not None and known.ips:
        return known.ips[0]
    # Not in the config yet: the source address the pod's default route would use (no packet is sent).
    try:
        probe = netns_socket(pod.netns_fd, socket.SOCK_DGRAM)
        try:
            probe.connect(("198.18.0.1", 9))
            return probe.getsockname()[0]
        finally:
            probe.close()
    except OSError:
        return None


def netns_socket(netns_fd: int, kind: int) -> socket.socket:
    from shoal import netns
    return netns.socket_in(netns_fd, socket.AF_INET, kind)


async def probe_capture(state: ProxyState, pod: Pod, timeout: float = 0.3) -> bool:
    """Does the pod's inbound capture catch a connection the ztunnel makes to the pod's own IP?

    Linux reports such a connection to sk_lookup as arriving on the device
    that holds the address (eth0), not on loopback, so an sk_lookup capture
    that spares only loopback takes it. Probed once per pod, before its
    listeners exist: a marked connection from inside the pod to a throwaway
    listener on the pod IP either reaches that listener, or does not.
    """
    ip = pod_ip(state, pod)
    if ip is None:
        return False
    listener = sockets.listener(pod.netns_fd, 0)
    port = listener.getsockname()[1]
    try:
        upstream = await sockets.connect(pod.netns_fd, (ip, port), timeout=timeout)
    except sockets.ConnectFailed:
        listener.close()
        return True  # dropped or refused on the way: captured
    try:
        loop = asyncio.get_running_loop()
        try:
            accepted, _ = await asyncio.wait_for(loop.sock_accept(listener), timeout)
            accepted.close()
            return False
        except asyncio.TimeoutError:
            return True  # the handshake completed somewhere else
    finally:
        upstream.close()
        listener.close()


def _endpoint_failed(error: BaseException) -> bool:
    """Failures that count against an endpoint (policy refusals do not: the endpoint is fine)."""
    if isinstance(error, TunnelRefused):
        return error.status not in (401, 403)
    return isinstance(error, (sockets.ConnectFailed, ssl.SSLError, asyncio.TimeoutError, RelayError,
                              identity.IdentityError))


def _reset_socket(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()
