"""shoal.netns: create, enter (one thread only), make sockets in, and remove a network namespace."""

from __future__ import annotations

import os
import socket

import pytest

from shoal import netns

from support.root import needs_root

pytestmark = needs_root("creates a network namespace")


def test_netns_helpers_create_enter_and_remove():
    name = f"shoal-unit-{os.getpid()}"
    assert netns.create(name) is True
    try:
        assert netns.create(name) is False
        home = os.readlink("/proc/thread-self/ns/net")
        inside = netns.run_in(name, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inside != home
        assert os.readlink("/proc/thread-self/ns/net") == home  # the caller's thread never moved
        with netns.ip(name) as ip:
            assert [link.get("ifname") for link in ip.get_links()] == ["lo"]
        server = netns.socket_in(name, socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # The listener lives in the namespace: reachable from inside, not from here.
        out = netns.run(name, ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo ok"]).stdout
        assert out.strip() == "ok"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
        server.close()
    finally:
        assert netns.remove(name) is True
    assert not netns.exists(name)
    with pytest.raises(netns.NetnsError):
        netns.open_fd(name)


def test_addresses_are_read_on_the_ztunnels_uvloop_too():
    """The pod's own addresses, both families (not loopback, not link-local, not a peer's), also from
    a uvloop loop's executor, as the ztunnel reads them: pyroute2 0.9 cannot run there."""
    import asyncio

    import uvloop

    name = f"shoal-addr-{os.getpid()}"
    netns.create(name)
    try:
        netns.run(name, ["ip", "link", "set", "lo", "up"])
        netns.run(name, ["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"])
        netns.run(name, ["ip", "link", "set", "va", "up"])
        netns.run(name, ["ip", "addr", "add", "198.18.250.1/24", "dev", "va"])
        netns.run(name, ["ip", "addr", "add", "198.18.251.1", "peer", "198.18.251.2", "dev", "va"])
        netns.run(name, ["ip", "addr", "add", "fd73:686f:616c:fe::1/64", "dev", "va", "nodad"])
        netns.run(name, ["ip", "addr", "add", "fe80::99/64", "dev", "va", "nodad"])
        expected = ("198.18.250.1", "198.18.251.1", "fd73:686f:616c:fe::1")
        assert netns.addresses(name) == expected

        async def from_the_loop():
            return await asyncio.get_running_loop().run_in_executor(None, netns.addresses, name)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            assert runner.run(from_the_loop()) == expected
    finally:
        netns.remove(name)
