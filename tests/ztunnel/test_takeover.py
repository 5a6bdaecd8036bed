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


def test_the_older_listener_answers_until_the_newer_is_ready_then_the_newer_takes_everything():
    port = free_port()
    old = takeover.node_listener("127.0.0.1", port)
    clients = connect_many(port, 10)
    assert accepted(old) == 10                       # alone: everything
    new = takeover.node_listener("127.0.0.1", port)
    clients += connect_many(port, 40)
    assert (accepted(old), accepted(new)) == (40, 0)  # not ready yet: the old one answers (the hash would split)
    takeover.prefer_newest(new)
    clients += connect_many(port, 40)
    assert (accepted(old), accepted(new)) == (0, 40)  # ready: the new one takes it all
    old.close()
    clients += connect_many(port, 10)
    assert accepted(new) == 10                       # the survivor of the group
    newer = takeover.node_listener("127.0.0.1", port)
    clients += connect_many(port, 10)
    assert (accepted(new), accepted(newer)) == (10, 0)   # and the next upgrade works the same way
    takeover.prefer_newest(newer)
    clients += connect_many(port, 10)
    assert (accepted(new), accepted(newer)) == (0, 10)
    for sock in (new, newer, *clients):
        sock.close()


def test_pod_listeners_prefer_the_newer_ztunnel_as_soon_as_it_listens():
    port = free_port()
    old, new = (socket.socket() for _ in range(2))
    clients = []
    try:
        for sock in (old, new):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            sock.setblocking(False)
            takeover.prefer_newest(sock)
        clients = connect_many(port, 30)
        assert (accepted(old), accepted(new)) == (0, 30)
    finally:
        for sock in (old, new, *clients):
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
