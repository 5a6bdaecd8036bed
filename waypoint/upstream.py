"""Connections from the waypoint to endpoints: HBONE (the shared pool) or plain TCP, as a Channel.

Meshed endpoints get a CONNECT stream to `podIP:15008` on a pooled HBONE
connection (`shoal.hbone_pool`) that presents the waypoint's own
certificate (`shoal.certs`, one identity) and checks the server's SPIFFE ID.
Endpoints outside the mesh get a plain TCP connection (`shoal.sockets`), on the
native transports when they are in use (`shoal.native_io`), as the ztunnel's.
This module is the waypoint's boundary for those failures: each becomes an
`UpstreamFailed` whose kind (`connect-failure`, `refused-stream`) retry
policies name, with the response flag to report.
"""

from __future__ import annotations

import socket

from shoal import contracts, native_io, sockets
from shoal.certs import CertManager
from shoal.errors import ShoalError
from shoal.hbone_io import TunnelRefused
from shoal.hbone_pool import Key, Pool, connector
from shoal.hbone_relay import TcpSide
from shoal.identity import SpiffeId
from shoal.model.addresses import join_address

from waypoint.channel import Channel
from waypoint.errors import UpstreamFailed
from waypoint.routing import Upstream


async def _tcp(address: tuple[str, int], timeout: float) -> socket.socket:
    # The waypoint's own netns is not captured: mark where permitted, go on without it otherwise.
    return await sockets.connect(None, address, timeout=timeout, mark=False)


class Upstreams:
    def __init__(self, certs: CertManager, who: SpiffeId, *, connect_timeout: float = 5.0,
                 max_streams: int = 100, idle_seconds: float = 60.0, hbone_port: int = contracts.HBONE_PORT) -> None:
        self.who = who                            # the waypoint's own identity, presented to endpoints
        self.hbone_port = hbone_port
        self.connect_timeout = connect_timeout
        self.pool = Pool(connector(lambda key, timeout: _tcp(key.destination, timeout), certs.client_context,
                                   connect_timeout),
                         max_streams=max_streams, idle_timeout=idle_seconds)

    async def open(self, upstream: Upstream, timeout: float | None = None) -> Channel:
        timeout = min(timeout or self.connect_timeout, self.connect_timeout)
        try:
            if not upstream.hbone:
                sock = await _tcp(upstream.address, timeout)
                _, side = await native_io.open_tcp(TcpSide, sock, accepted=False)   # native when in use
                return Channel(side)
            key = Key("", self.who, (upstream.address[0], self.hbone_port), upstream.identity)
            stream = await self.pool.open_stream(key, join_address(upstream.address), timeout)  # [v6]:port
        except TunnelRefused as e:
            raise UpstreamFailed(f"the endpoint's ztunnel refused the tunnel: {e}",
                                 "refused-stream" if e.status == 503 else "connect-failure",
                                 e.response_flag) from None
        except ShoalError as e:
            raise UpstreamFailed(str(e), "connect-failure", e.response_flag) from None
        return Channel(stream)

    def sweep(self) -> None:
        self.pool.sweep()

    def close(self) -> None:
        self.pool.close()
