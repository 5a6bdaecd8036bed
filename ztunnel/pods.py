"""The pods this ztunnel serves, each with its listeners inside the pod's netns.

For every pod the node agent hands over (with its netns fd, `shoal.handoff`),
the registry opens three listeners *inside the pod's netns*: 15001 (captured
outbound), 15006 (captured inbound plaintext) and 15008 (HBONE), each one
socket for both address families (`::`, dual-stack: `shoal.sockets`), each with
SO_REUSEPORT so that a new ztunnel can take over; the group sends new
connections to the newer of two ztunnels (`ztunnel.takeover`). Accepted
connections go to the handler given for the port (`ztunnel.outbound_io`,
`ztunnel.inbound_io`).

At enrollment it also learns how the app can be reached (`AppReach`): with
the client's source IP (installs `shoal.transparent`'s return path), or,
when the pod's capture would take the ztunnel's own connections to the pod
IP, over 127.0.0.1 (`probe_capture`).

When a pod leaves, its listeners, connections and spare sockets close, the
`on_removed` callbacks run (the pool drops its HBONE connections), and the
certificate of its identity is forgotten once no pod holds it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from shoal import contracts, handoff, identity, log, netns, sockets, transparent
from shoal.certs import CertManager
from shoal.identity import SpiffeId
from shoal.model import Protocol, Workload
from shoal.proxy_state import ProxyState

from ztunnel import takeover
from ztunnel.inbound import AppReach

logger = log.get("ztunnel.pods")

Handler = Callable[["Pod", socket.socket, tuple], Awaitable[None]]


@dataclass(eq=False)
class Pod:
    info: handoff.Workload
    netns_fd: int
    identity: SpiffeId
    listeners: dict[int, socket.socket] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)
    connections: set[asyncio.Task] = field(default_factory=set)
    reach: AppReach = AppReach(transparent=False)
    sockets: sockets.SocketFactory | None = None

    def __post_init__(self) -> None:
        self.sockets = sockets.SocketFactory(self.netns_fd)

    @property
    def name(self) -> str:
        return f"{self.info.namespace}/{self.info.name}"


class PodRegistry:
    """Implements `shoal.handoff_io.WorkloadHandler` for the node agent's hand-off."""

    def __init__(self, state: ProxyState, certs: CertManager, *, node: str, trust_domain: str,
                 preserve_source_ip: bool = True) -> None:
        self.state = state
        self.certs = certs
        self.node = node
        self.trust_domain = trust_domain
        self.preserve_source_ip = preserve_source_ip
        self.pods: dict[str, Pod] = {}
        self.handlers: dict[int, Handler] = {}
        self.on_removed: list[Callable[[str], None]] = []

    def serve(self, handlers: dict[int, Handler]) -> None:
        """Which handler takes connections accepted on each of the three ports."""
        missing = set(contracts.ZTUNNEL_POD_PORTS) - set(handlers)
        if missing:
            raise ValueError(f"no handler for ports {sorted(missing)}")
        self.handlers = dict(handlers)

    def workload_of(self, pod: Pod) -> Workload:
        known = self.state.workloads.get(pod.info.uid)
        if known is not None:
            return known
        # The control plane has not told us about it yet; the hand-off is enough to act for it.
        return Workload(uid=pod.info.uid, name=pod.info.name, namespace=pod.info.namespace,
                        service_account=pod.info.service_account, node=self.node, ips=(),
                        protocol=Protocol.HBONE)

    # --- the node agent's hand-off --------------------------------------------------

    async def add_workload(self, workload: handoff.Workload, netns_fd: int) -> socket.socket | None:
        held = self.pods.get(workload.uid)
        if held is not None:
            os.close(netns_fd)
            # Sent again after a reconnect, or because the pod's addresses changed (a new IPv6 address
            # must be served inbound, and its return path installed): read them again.
            own = await self._addresses(held)
            if own and own != held.reach.addresses:   # () is a failed read: keep what was served
                held.reach = await self._reach(held, own, captured=held.reach.via_loopback)
                logger.info("pod addresses changed", pod=held.name, addresses=list(own))
            return held.listeners.get(contracts.INBOUND_PLAINTEXT_PORT)
        who = identity.format_spiffe_id(self.trust_domain, workload.namespace, workload.service_account)
        pod = Pod(workload, netns_fd, who)
        try:
            captured = await probe_capture(self.state, pod)
        except (OSError, sockets.SocketError) as e:
            logger.warning("could not probe the pod's inbound capture; assuming it spares the ztunnel",
                           pod=pod.name, error=str(e))
            captured = False
        if captured:
            logger.warning("inbound capture in this pod catches the ztunnel's own connections to the pod IP "
                           "(eBPF sk_lookup sees them as arriving on eth0); reaching the app over 127.0.0.1, "
                           "so the app sees 127.0.0.1 instead of the client's IP", pod=pod.name)
        try:
            for port in contracts.ZTUNNEL_POD_PORTS:
                pod.listeners[port] = sockets.listener(netns_fd, port)
                takeover.prefer_newest(pod.listeners[port])
        except sockets.SocketError:
            self._release(pod)
            raise
        pod.reach = await self._reach(pod, await self._addresses(pod), captured=captured)
        self.pods[workload.uid] = pod
        self.certs.want(who)
        loop = asyncio.get_running_loop()
        for port, sock in pod.listeners.items():
            pod.tasks.append(loop.create_task(self._accept_loop(pod, sock, self.handlers[port])))
        logger.info("pod enrolled", pod=pod.name, uid=workload.uid, identity=str(who),
                    source_ip_preserved=pod.reach.transparent)
        return pod.listeners[contracts.INBOUND_PLAINTEXT_PORT]

    async def _addresses(self, pod: Pod) -> tuple[str, ...]:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, netns.addresses, pod.netns_fd)
        except Exception as e:  # noqa: BLE001 - then only the control plane's word says what the pod is
            logger.warning("could not read the pod's addresses", pod=pod.name, error=str(e))
            return ()

    async def _reach(self, pod: Pod, own: tuple[str, ...], *, captured: bool) -> AppReach:
        """How the app is reached at its addresses `own`, the return path installed where it can be."""
        transparent_ok = transparent_ipv6 = False
        if self.preserve_source_ip and not captured:
            # IPv6's return path only for a pod with an IPv6 address (unread: assume it may have one).
            has_ipv6 = not own or any(":" in address for address in own)
            try:
                transparent_ipv6 = await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(transparent.install, pod.netns_fd, ipv6=has_ipv6))
                transparent_ok = True
            except Exception as e:  # noqa: BLE001 - the pod is served all the same, without the client's IP
                logger.warning("source IP will not be preserved for this pod", pod=pod.name, error=str(e))
        return AppReach(transparent=transparent_ok, via_loopback=captured, addresses=own,
                        transparent_ipv6=transparent_ipv6)

    async def del_workload(self, uid: str, *, leaving_mesh: bool = True) -> None:
        """Stops serving the pod. `leaving_mesh` False (ztunnel shutdown) keeps the pod's
        source-IP rules: the next ztunnel (SO_REUSEPORT takeover) relies on them."""
        pod = self.pods.pop(uid, None)
        if pod is None:
            return
        for task in pod.tasks + list(pod.connections):
            task.cancel()
        for callback in self.on_removed:
            callback(uid)
        if pod.reach.transparent and leaving_mesh:
            try:
                await asyncio.get_running_loop().run_in_executor(None, transparent.remove, pod.netns_fd)
            except Exception as e:  # noqa: BLE001 - logged; the node agent removes it on un-enroll too
                logger.warning("could not remove source-IP rules", uid=uid, error=str(e))
        self._release(pod)
        if not any(p.identity == pod.identity for p in self.pods.values()):
            self.certs.forget(pod.identity)
        logger.info("pod removed", pod=pod.name, uid=uid)

    def _release(self, pod: Pod) -> None:
        for sock in pod.listeners.values():
            sock.close()
        pod.sockets.close()
        os.close(pod.netns_fd)

    async def close(self) -> None:
        for uid in list(self.pods):
            await self.del_workload(uid, leaving_mesh=False)

    def stop_accepting(self) -> None:
        """Drain: close every listener (a new ztunnel with SO_REUSEPORT takes new connections).

        Connections the kernel already completed into a listener's queue are accepted and served
        first: closing a listener resets what is still queued on it, and those clients have been
        told the connection is established."""
        for pod in self.pods.values():
            for task in pod.tasks:
                task.cancel()
            for port, sock in pod.listeners.items():
                self._accept_queued(pod, sock, self.handlers[port])
                sock.close()

    def _accept_queued(self, pod: Pod, sock: socket.socket, handler: Handler) -> None:
        while True:
            try:
                conn, address = sock.accept()
            except OSError:                     # EAGAIN: the queue is empty (or the listener is gone)
                return
            conn.setblocking(False)
            self._serve(pod, handler, conn, address)

    def _serve(self, pod: Pod, handler: Handler, conn: socket.socket, address: tuple) -> None:
        task = asyncio.get_running_loop().create_task(handler(pod, conn, address))
        pod.connections.add(task)
        task.add_done_callback(pod.connections.discard)

    def connection_tasks(self) -> list[asyncio.Task]:
        return [task for pod in self.pods.values() for task in pod.connections]

    async def _accept_loop(self, pod: Pod, sock: socket.socket, handler: Handler) -> None:
        def serve(conn: socket.socket, address: tuple) -> None:
            self._serve(pod, handler, conn, address)
        try:
            await sockets.accept_forever(sock, serve, what=f"{pod.name}:{sock.getsockname()[1]}")
        except asyncio.CancelledError:
            return

    def dump(self) -> list[dict]:
        return [{"uid": p.info.uid, "name": p.info.name, "namespace": p.info.namespace,
                 "identity": str(p.identity), "source_ip_preserved": p.reach.transparent and not p.reach.via_loopback,
                 "connections": len(p.connections)} for p in self.pods.values()]


def pod_ip(state: ProxyState, pod: Pod) -> str | None:
    known = state.workloads.get(pod.info.uid)
    if known is not None and known.ips:
        return known.ips[0]
    # Not in the config yet: the source address the pod's default route would use (no packet is sent);
    # IPv4's, else IPv6's (an IPv6-only pod).
    for family, somewhere in ((socket.AF_INET, "198.18.0.1"), (socket.AF_INET6, "fd73:686f:616c::1")):
        try:
            probe = netns.socket_in(pod.netns_fd, family, socket.SOCK_DGRAM)
            try:
                probe.connect((somewhere, 9))
                return probe.getsockname()[0]
            finally:
                probe.close()
        except OSError:
            continue
    return None


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
