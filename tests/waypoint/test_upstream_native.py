"""The waypoint's plain TCP connections (to endpoints outside the mesh, and its ingress listeners' plain
TCP) take the native transports when they are in use, as the ztunnel's do, and carry the same bytes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from shoal import native_io, relay_lane
from shoal.identity import parse_spiffe_id
from waypoint.routing import Upstream
from waypoint.upstream import Upstreams

pytestmark = pytest.mark.skipif(not relay_lane.NATIVE, reason="the native transports are not in use here "
                                f"(SHOAL_RELAY={relay_lane.NAME}; scripts/setup.sh builds them)")

WHO = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/waypoint")


def test_a_plain_upstream_is_a_native_transport_and_carries_the_bytes_both_ways():
    async def main():
        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstreams = Upstreams(certs=SimpleNamespace(client_context=None), who=WHO)   # no TLS is made here
        upstream = Upstream(address=("127.0.0.1", port), hbone=False, identity=None, workload_uid="",
                            workload_name="", workload_namespace="")
        channel = await upstreams.open(upstream, timeout=10)
        try:
            assert type(channel.peer.transport) is native_io._native.Transport
            channel.send(b"x" * 100000)
            got = b""
            while got.count(b"x") < 100000:
                got += await asyncio.wait_for(channel.read(), 30)
            assert got.startswith(b"echo:") and got.count(b"x") == 100000
            assert channel.bytes_received == channel.peer.bytes_received == len(got)
            assert channel.peer.bytes_sent == 100000
        finally:
            channel.reset()
            server.close()
            upstreams.close()
    asyncio.run(main())
