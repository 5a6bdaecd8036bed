"""The waypoint on the ztunnel's fast paths: its plain TCP connections (to endpoints outside the mesh, and
its ingress listeners' plain TCP) take the native transports when they are in use, and its messages to an
HBONE stream go out on the compiled lane (one DATA frame sent in C) when they are the plain case."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from shoal import native_io, relay_lane
from shoal.hbone_io import TunnelStream
from shoal.identity import parse_spiffe_id
from shoal.model import Route
from waypoint.routing import Upstream
from waypoint.upstream import Upstreams

from wp_harness import body_of, get
from wp_mesh import V2_IP, Mesh, run
from wp_model import table, to

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


def test_the_waypoints_messages_on_hbone_streams_go_out_on_the_lane(monkeypatch):
    """Requests to a meshed endpoint and answers to the meshed client: Channel.send hands them to the
    stream's _write_plain first, and the plain ones are sent there (the answers still arrive whole)."""
    sent = []
    write_plain = TunnelStream._write_plain

    def spy(stream, data):
        carried = write_plain(stream, data)
        sent.append(carried)
        return carried
    monkeypatch.setattr(TunnelStream, "_write_plain", spy)

    async def main():
        async with Mesh(table(Route("all", destinations=(to("v2"),))), rand=lambda: 0.0) as m:
            for i in range(3):
                answer = await m.send(get(f"/r{i}"))
                assert body_of(answer).startswith(b"v2 GET /r%d" % i)
            assert m.endpoint.tunnels and m.endpoint.tunnels[0] == f"{V2_IP}:{m.apps['v2'].port}"
    run(main())
    assert sent.count(True) >= 6, sent     # 3 requests upstream and 3 answers downstream, at least
