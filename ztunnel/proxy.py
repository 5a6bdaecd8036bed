"""The ztunnel of one node, put together: each part built here and handed what it needs.

    PodRegistry        the pods and their listeners (ztunnel.pods); the node agent's hand-off
    ConnectionTracker  open connections, byte reports, drain (ztunnel.connections)
    OutboundDriver     15001: decide (ztunnel.outbound), then TCP or HBONE (ztunnel.outbound_io)
    InboundDriver      15008 and 15006: decide_inbound (ztunnel.inbound), then relay (ztunnel.inbound_io)
    Pool               HBONE client connections, opened from the source pod's netns (shoal.hbone_pool)
    DnsProxy           15053, UDP and TCP: names from the config, the rest to the pod's resolver (ztunnel.dns_io)

State (`shoal.proxy_state`) and certificates (`shoal.certs`) come from the
caller, so tests can hand in a filled state and a test CA.
"""

from __future__ import annotations

import asyncio
import socket

from shoal import contracts, sockets
from shoal.certs import CertManager
from shoal.hbone_io import RelayError
from shoal.hbone_pool import Key, Pool, connector
from shoal.proxy_state import ProxyState
from shoal.workload_names import live_workloads

from ztunnel.config import Config
from ztunnel.connections import ConnectionTracker
from ztunnel.dns_io import DnsProxy
from ztunnel.inbound_io import InboundDriver
from ztunnel.outbound import Balancer
from ztunnel.outbound_io import OutboundDriver
from ztunnel.pods import PodRegistry
from ztunnel.telemetry import Metrics


class Ztunnel:
    def __init__(self, config: Config, state: ProxyState, certs: CertManager, metrics: Metrics | None = None) -> None:
        self.config = config
        self.state = state
        self.certs = certs
        self.metrics = metrics or Metrics()
        self.balancer = Balancer(config.balancing)
        self.tracker = ConnectionTracker(self.metrics)
        self.pods = PodRegistry(state, certs, node=config.node, trust_domain=config.trust_domain,
                                preserve_source_ip=config.preserve_source_ip)
        self.pool = Pool(connector(self._socket_from_pod, certs.client_context, config.connect_timeout),
                         max_streams=config.pool_max_streams, idle_timeout=config.pool_idle_seconds)
        self.pods.on_removed.append(self.pool.drop_source)
        self.outbound = OutboundDriver(state, self.pods, self.pool, self.balancer, self.tracker,
                                       config.connect_timeout)
        self.inbound = InboundDriver(state, self.pods, certs, self.tracker, config.connect_timeout)
        self.dns = DnsProxy(state)
        self.pods.on_removed.append(self.dns.detach)
        self.pods.serve({contracts.OUTBOUND_PORT: self.outbound.handle,
                         contracts.INBOUND_PLAINTEXT_PORT: self.inbound.plaintext,
                         contracts.HBONE_PORT: self.inbound.hbone})

    async def _socket_from_pod(self, key: Key, timeout: float) -> socket.socket:
        """HBONE leaves from inside the source pod's netns, so it carries the pod's IP."""
        pod = self.pods.pods.get(key.source)
        if pod is None:
            raise RelayError("the source pod was removed from the mesh")
        return await sockets.connect(pod.sockets, key.destination, timeout=timeout)

    # --- the node agent's hand-off (shoal.handoff_io.WorkloadHandler) -------------------

    async def add_workload(self, workload, netns_fd: int) -> socket.socket | None:
        listener = await self.pods.add_workload(workload, netns_fd)
        pod = self.pods.pods.get(workload.uid)
        if pod is not None and workload.uid not in self.dns.served:
            await self.dns.attach(pod)
        return listener

    async def del_workload(self, uid: str) -> None:
        await self.pods.del_workload(uid)

    # --- lifecycle --------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Drain, first step: listeners close (a new ztunnel holds the same ports with SO_REUSEPORT), and
        every HBONE peer gets a graceful GOAWAY, so its next tunnel opens a connection to the new one."""
        self.pods.stop_accepting()
        self.dns.stop_accepting()
        self.inbound.go_away()

    async def drain(self, seconds: float, urgent: asyncio.Event | None = None) -> bool:
        """Drain, second step: established connections run on until `seconds`; what is left is cut."""
        return await self.tracker.drain(seconds, self.pods.connection_tasks, urgent)

    async def close(self) -> None:
        await self.pods.close()
        self.pool.close()

    @property
    def active(self):
        return self.tracker.active

    def live_workloads(self) -> set[tuple[str, str]]:
        """(namespace, workload label) of every workload the config or the hand-off knows."""
        known = live_workloads(self.state.workloads.values())
        return known | {(p.info.namespace, p.info.name) for p in self.pods.pods.values()}

    def dump(self) -> dict:
        out = self.state.dump()
        out["certificates"] = self.certs.dump()
        out["pods"] = self.pods.dump()
        out["pool"] = self.pool.dump()
        out["active_connections"] = len(self.tracker.active)
        return out
