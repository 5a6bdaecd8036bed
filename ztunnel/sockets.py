"""Sockets inside pod network namespaces: listeners, original destinations, upstreams.

A socket keeps the netns it was created in, so each is made through the
pod's netns fd (`shoal.netns.socket_in`) and then used from the event loop
like any other. Every socket the ztunnel makes in a pod carries SO_MARK
0x539, so the pod's capture rules let it through.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct

from shoal import netns

MARK = 0x539
SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
LISTEN_BACKLOG = 1024
SOCKET_BUFFER = 4 << 20


class SocketError(Exception):
    """A listener or upstream socket could not be made; the message says what to check."""


class ConnectFailed(SocketError):
    response_flag = "UF"

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # refused, timed_out, unreachable


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


def listener(netns_fd: int | None, port: int, address: str = "0.0.0.0") -> socket.socket:
    """A listening TCP socket in the netns (None: the caller's), SO_REUSEPORT so a new ztunnel can take over."""
    sock = netns.socket_in(netns_fd, socket.AF_INET, socket.SOCK_STREAM) if netns_fd is not None \
        else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _tune(sock)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise SocketError(f"cannot listen on {address}:{port} in the pod's netns: {e}; "
                          "check that nothing else holds the port without SO_REUSEPORT") from None
    return sock


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the app meant to connect: SO_ORIGINAL_DST (iptables REDIRECT, or the eBPF
    getsockopt hook); a socket steered by sk_lookup reports it as its own address."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntoa(packed), port
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOPROTOOPT):
            raise
    host, port = sock.getsockname()[:2]
    return host, port


async def connect(netns_fd: int | None, destination: tuple[str, int], *, timeout: float,
                  transparent_source: str | None = None) -> socket.socket:
    """A connected socket from inside the netns, marked; with `transparent_source`, it
    binds the client's IP (IP_TRANSPARENT) so the app sees the original source."""
    sock = netns.socket_in(netns_fd, socket.AF_INET, socket.SOCK_STREAM) if netns_fd is not None \
        else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _tune(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transparent_source:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((transparent_source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, destination), timeout)
        return sock
    except asyncio.TimeoutError:
        sock.close()
        raise ConnectFailed(f"connection to {destination[0]}:{destination[1]} timed out after {timeout:.0f}s; "
                            "check that the destination is up and that no NetworkPolicy drops the traffic",
                            "timed_out") from None
    except ConnectionRefusedError:
        sock.close()
        raise ConnectFailed(f"connection to {destination[0]}:{destination[1]} refused; "
                            "check that the app listens on that port", "refused") from None
    except OSError as e:
        sock.close()
        raise ConnectFailed(f"cannot connect to {destination[0]}:{destination[1]}: {e.strerror or e}; "
                            "check routes from the pod", "unreachable") from None
