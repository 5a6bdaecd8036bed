"""Two ztunnels on one port (an upgrade): the newer one takes new connections, and the old one,
when it stops accepting, serves what the kernel had already queued for it instead of resetting it.
On loopback, no root needed."""

from __future__ import annotations

import asyncio
import os
import socket

from shoal import handoff
from shoal.identity import SpiffeId
from ztunnel import takeover
from ztunnel.pods import Pod, PodRegistry

from support.net import free_port


def accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def connect_many(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def test_the_newer_of_two_listeners_takes_every_new_connection_and_the_last_one_left_takes_them_all():
    port = free_port()
    old = takeover.node_listener("127.0.0.1", port)
    clients = connect_many(port, 10)
    assert accepted(old) == 10                       # alone: everything
    new = takeover.node_listener("127.0.0.1", port)
    clients += connect_many(port, 40)
    assert (accepted(old), accepted(new)) == (0, 40)  # the kernel's hash alone would split these
    old.close()
    clients += connect_many(port, 10)
    assert accepted(new) == 10                       # the survivor of the group
    newer = takeover.node_listener("127.0.0.1", port)
    clients += connect_many(port, 10)
    assert (accepted(new), accepted(newer)) == (0, 10)   # and the next upgrade works the same way
    for sock in (new, newer, *clients):
        sock.close()


def test_a_port_held_without_reuseport_is_a_clear_error():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        try:
            takeover.node_listener("127.0.0.1", blocker.getsockname()[1])
        except takeover.SocketError as e:
            assert "SO_REUSEPORT" in str(e)
        else:
            raise AssertionError("bound a port another socket holds without SO_REUSEPORT")
    finally:
        blocker.close()


def test_stop_accepting_serves_the_connections_already_queued_instead_of_resetting_them():
    """Connections the kernel completed into the old ztunnel's queue before the new one listened are
    established for their clients; closing the listener under them would reset every one."""
    async def main():
        port = free_port()
        listener = takeover.node_listener("127.0.0.1", port)
        registry = PodRegistry(state=None, certs=None, node="node1", trust_domain="cluster.local")
        served = []

        async def greet(pod, conn, address):
            served.append(address)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(conn, b"served")
            conn.close()
        registry.handlers = {port: greet}
        info = handoff.Workload("uid-1", "p", "ns", "sa")
        pod = Pod(info, os.open("/proc/self/ns/net", os.O_RDONLY), SpiffeId("cluster.local", "ns", "sa"),
                  listeners={port: listener})
        registry.pods[info.uid] = pod
        clients = connect_many(port, 5)              # queued: nothing accepts them yet
        registry.stop_accepting()
        assert listener.fileno() == -1
        await asyncio.gather(*pod.connections)
        answers = []
        for client in clients:
            try:
                answers.append(client.recv(16))
            except ConnectionResetError:
                answers.append("reset")
            client.close()
        assert answers == [b"served"] * 5 and len(served) == 5
        os.close(pod.netns_fd)
        pod.sockets.close()

    asyncio.run(main())
