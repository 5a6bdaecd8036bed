"""Opaque TCP through the waypoint: for service ports that are not HTTP.

A waypoint bound to a namespace receives all of its services' traffic, Redis
and MySQL included. A port declared opaque (appProtocol or name tcp, tls,
redis, mysql, mongo, https) or whose first bytes are not HTTP is relayed as
bytes: L4 policy (HTTP-only rules treated conservatively), an endpoint of the
service (the next one when a connection fails), and a two-way copy with
half-close and reset carried through. One access-log line and Istio's
istio_tcp_* counts (reporter="waypoint") per connection, when it closes.
"""

from __future__ import annotations

import asyncio
import time

from shoal import log

from waypoint.channel import Channel, ChannelReset
from waypoint.errors import UpstreamFailed
from waypoint.routing import Peer, Refusal, decide_tcp
from shoal.model.addresses import join_address
from shoal.proxy_state import ProxyState
from shoal.workload_names import access_log_fields
from waypoint.telemetry import Metrics, tcp_labels
from waypoint.upstream import Upstreams

access_log = log.get_access("waypoint.access")

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"CONNECT ", b"OPTIONS ", b"TRACE ", b"PATCH ")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def looks_like_http(first: bytes) -> bool:
    """HTTP/1.x request line or the HTTP/2 preface (a prefix of either, when few bytes came)."""
    if not first:
        return False
    candidates = (*HTTP_METHODS, H2_PREFACE)
    return any(first.startswith(c) or c.startswith(first) for c in candidates)


async def pump(source: Channel, sink: Channel) -> None:
    """Copies source to sink until the end; half-closes sink; passes a reset on."""
    try:
        while True:
            data = await source.read()
            if not data:
                sink.end()
                return
            sink.send(data)
            await sink.drain()
    except ChannelReset:
        sink.reset()


async def relay(a: Channel, b: Channel) -> None:
    await asyncio.gather(pump(a, b), pump(b, a))


async def serve_tcp(state: ProxyState, upstreams: Upstreams, client: Channel, peer: Peer,
                    source_address: tuple[str, int], rand, metrics: Metrics) -> None:
    started = time.monotonic()
    plan = decide_tcp(state, peer, rand)
    flags, error, upstream_address, service = "-", "", "", ""
    upstream = None
    chosen = None
    try:
        if isinstance(plan, Refusal):
            flags, error, service = plan.flag, plan.reason, plan.service
            client.reset()
            return
        service = plan.service
        for attempt, candidate in enumerate(plan.upstreams[:2]):
            upstream_address = join_address(candidate.address)
            try:
                chosen = candidate
                upstream = await upstreams.open(candidate)
                break
            except UpstreamFailed as e:
                flags, error = e.response_flag, str(e)
                if attempt == min(len(plan.upstreams), 2) - 1:
                    client.reset()
                    return
        flags, error = "-", ""
        await relay(client, upstream)
        if client.was_reset or upstream.was_reset:
            flags = "UC" if upstream.was_reset else "DC"
    except asyncio.CancelledError:
        client.reset()
        if upstream is not None:
            upstream.reset()
        raise
    finally:
        labels = tcp_labels(state.workload_by_ip(peer.source_ip), str(peer.source or ""),
                            state.workloads.get(chosen.workload_uid) if chosen else None,
                            str(chosen.identity) if chosen and chosen.hbone else "", service, flags)
        opened, closed, sent, received = metrics.tcp_children(labels)
        opened.inc()
        closed.inc()
        received.inc(client.bytes_received)
        sent.inc(client.bytes_sent)
        access_log.info("connection complete", protocol="tcp", src_addr=join_address(source_address),
                        **access_log_fields("src", state.workload_by_ip(peer.source_ip)),
                        **access_log_fields("dst", state.workloads.get(chosen.workload_uid) if chosen else None),
                        src_identity=str(peer.source) if peer.source else None, dst=join_address(peer.destination),
                        dst_service=service or None, upstream=upstream_address or None, response_flags=flags,
                        bytes_received=client.bytes_received, bytes_sent=client.bytes_sent,
                        duration_ms=round((time.monotonic() - started) * 1000, 3), error=error or None)
