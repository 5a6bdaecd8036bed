"""The per-pod probe: does inbound capture catch the ztunnel's own connections to the pod IP? (root)"""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from shoal import handoff, netns
from shoal.model import Protocol, Workload
from shoal.identity import parse_spiffe_id
from shoal.proxy_state import ProxyState
from ztunnel.pods import Pod, probe_capture

from support.root import needs_root

pytestmark = needs_root("creates a network namespace")

NS = f"shoal-ztprobe{os.getpid() % 100000}"
IP = "198.19.7.2"


@pytest.fixture
def pod_netns():
    netns.create(NS)
    fd = None
    try:
        subprocess.run(["ip", "-n", NS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True)
        subprocess.run(["ip", "-n", NS, "addr", "add", f"{IP}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", NS, "link", "set", "eth0", "up"], check=True)
        fd = netns.open_fd(NS)
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
        netns.remove(NS)


def probe(fd) -> bool:
    state = ProxyState()
    state.upsert(Workload("u", "p", "ns", "sa", "node1", (IP,), protocol=Protocol.HBONE))
    pod = Pod(handoff.Workload("u", "p", "ns", "sa"), fd, parse_spiffe_id("spiffe://cluster.local/ns/ns/sa/sa"))
    try:
        return asyncio.run(probe_capture(state, pod))
    finally:
        pod.sockets.close()


def test_uncaptured_pod_is_reached_on_its_own_ip(pod_netns):
    assert probe(pod_netns) is False


def test_unknown_pod_ip_without_a_route_skips_the_probe(pod_netns):
    pod = Pod(handoff.Workload("u", "p", "ns", "sa"), pod_netns, parse_spiffe_id("spiffe://cluster.local/ns/ns/sa/sa"))
    try:
        assert asyncio.run(probe_capture(ProxyState(), pod)) is False  # nothing to probe, nothing assumed
    finally:
        pod.sockets.close()


def test_capture_that_takes_our_own_connections_is_detected(pod_netns):
    # A capture that steers every TCP connection to the pod IP elsewhere (here: to a closed port).
    subprocess.run(["ip", "netns", "exec", NS, "iptables-legacy", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                    "-d", IP, "-j", "REDIRECT", "--to-ports", "1"], check=True)
    assert probe(pod_netns) is True


@pytest.mark.parametrize("bound, reached", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_over_loopback_only_an_app_that_listens_beyond_loopback_is_reached(pod_netns, bound, reached):
    """Issue 9, item 5: when the app must be reached over 127.0.0.1 (see probe_capture), a socket bound to
    the pod's loopback alone stays out of the mesh's reach."""
    from shoal import sockets
    from ztunnel.connections import ConnectionTracker
    from ztunnel.inbound import AppReach, InboundPlan
    from ztunnel.inbound_io import InboundDriver
    from ztunnel.telemetry import Metrics

    app = netns.socket_in(NS)
    app.bind((bound, 8080))
    app.listen()
    pod = Pod(handoff.Workload("u", "p", "ns", "sa"), pod_netns, parse_spiffe_id("spiffe://cluster.local/ns/ns/sa/sa"),
              reach=AppReach(transparent=False, via_loopback=True, addresses=(IP,)))
    driver = InboundDriver(ProxyState(), None, None, ConnectionTracker(Metrics()), connect_timeout=2)

    async def connect():
        try:
            sock = await driver._connect_app(pod, InboundPlan(("127.0.0.1", 8080), None, via_loopback=True))
        except sockets.ConnectFailed as e:
            assert "beyond the pod's loopback" in str(e)
            return False
        sock.close()
        return True
    try:
        assert asyncio.run(connect()) is reached
    finally:
        app.close()
        pod.sockets.close()
