"""shoal.sockets with both address families, on loopback: one dual-stack listener, canonical addresses,
upstream sockets of the destination's family, original destinations read by their family field."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from shoal import sockets


def test_one_listener_takes_both_families_and_reports_them_canonically():
    listener = sockets.listener(None, 0, mark=False)
    try:
        assert listener.family == socket.AF_INET6
        port = listener.getsockname()[1]
        listener.setblocking(True)
        for family, host, seen in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as client:
                client.connect((host, port))
                conn, _ = listener.accept()
                with conn:
                    assert sockets.peer_address(conn) == (seen, client.getsockname()[1])
                    assert sockets.local_address(conn) == (seen, port)
                    # nothing captured it: the original destination is where it arrived
                    assert sockets.original_destination(conn) == (seen, port)
    finally:
        listener.close()


def test_an_explicit_ipv4_address_listens_on_ipv4_only():
    listener = sockets.listener(None, 0, "127.0.0.1", mark=False)
    try:
        assert listener.family == socket.AF_INET
        with pytest.raises(OSError), socket.socket(socket.AF_INET6) as client:
            client.settimeout(2)
            client.connect(("::1", listener.getsockname()[1]))
    finally:
        listener.close()


def test_connect_uses_the_destinations_family_and_brackets_it_in_errors():
    async def run():
        server = sockets.listener(None, 0, mark=False)
        port = server.getsockname()[1]
        try:
            upstream = await sockets.connect(sockets.SocketFactory(None), ("::1", port), timeout=5, mark=False)
            with upstream:
                assert upstream.family == socket.AF_INET6
            upstream = await sockets.connect(sockets.SocketFactory(None), ("127.0.0.1", port), timeout=5, mark=False)
            with upstream:
                assert upstream.family == socket.AF_INET
        finally:
            server.close()
        with pytest.raises(sockets.ConnectFailed) as failed:
            await sockets.connect(None, ("::1", port), timeout=5, mark=False)
        assert f"[::1]:{port}" in str(failed.value) and failed.value.kind == "refused"
    asyncio.run(run())


def test_the_factory_keeps_spares_per_family_and_closes_them_all():
    async def run():
        factory = sockets.SocketFactory(None, spare=4)
        four, six = factory.take(socket.AF_INET), factory.take(socket.AF_INET6)
        assert (four.family, six.family) == (socket.AF_INET, socket.AF_INET6)
        four.close()
        six.close()
        await asyncio.sleep(0.2)                          # the background refills land
        held = [sock for spares in factory._spares.values() for sock in spares]
        assert {s.family for s in held} == {socket.AF_INET, socket.AF_INET6}
        factory.close()
        assert all(s.fileno() == -1 for s in held)
    asyncio.run(run())


@pytest.mark.parametrize("raw, expected", [
    (struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", 8080, socket.inet_aton("198.19.1.5")) + bytes(8),
     ("198.19.1.5", 8080)),
    (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", 443, 0, socket.inet_pton(socket.AF_INET6, "fd73::5"), 0),
     ("fd73::5", 443)),
    # an eBPF hook that files an IPv4 record v4-mapped in a sockaddr_in6: the IPv4 address
    (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", 80, 0,
                                                      socket.inet_pton(socket.AF_INET6, "::ffff:198.18.16.10"), 0),
     ("198.18.16.10", 80)),
])
def test_a_sockaddr_is_read_by_its_family_field(raw, expected):
    assert sockets._parse_sockaddr(raw) == expected
