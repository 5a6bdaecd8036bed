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
