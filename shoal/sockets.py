"""The proxies' TCP sockets: listeners, original destinations, upstream connections.

Shared by the ztunnel (sockets inside pod network namespaces) and the
waypoint (sockets in its own). A socket keeps the netns it was created in,
so each is made through the pod's netns fd (`shoal.netns.socket_in`) and
then used from the event loop like any other. Every socket carries SO_MARK
0x539 (`shoal.contracts.MARK`), so a pod's capture rules let it through.
Failures become `SocketError`s (this module is the boundary for OSError),
whose messages say what to check.

Both address families: a listener binds `::` dual-stack by default (one
socket takes IPv4 and IPv6 alike, so the eBPF sk_lookup and the takeover's
reuseport group have one socket per port, as before), and an upstream
socket has the family of its destination. A dual-stack socket reports an
IPv4 peer as `::ffff:a.b.c.d`; every address this module hands out is
canonical (`shoal.model.addresses`): the IPv4 address itself.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Callable

from shoal import contracts, log, netns
from shoal.errors import ShoalError
from shoal.model.addresses import canonical_address, ip_version, join_host_port

_logger = log.get("shoal.sockets")

SO_ORIGINAL_DST = 80           # SOL_IP (linux/netfilter_ipv4.h)
IP6T_SO_ORIGINAL_DST = 80      # SOL_IPV6 (linux/netfilter_ipv6/ip6_tables.h), a sockaddr_in6
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
ALL_ADDRESSES = "::"           # a listener's default: every address of both families
LISTEN_BACKLOG = 1024
SOCKET_BUFFER = 4 << 20


class SocketError(ShoalError):
    """A listener or upstream socket could not be made; the message says what to check."""


class Ipv6Unavailable(SocketError):
    """IPv6 is off where a socket was to be made (no IPv6 in the kernel, or disabled in the netns)."""


class ConnectFailed(SocketError):
    response_flag = "UF"

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # refused, timed_out, unreachable


class SocketFactory:
    """TCP sockets of one pod's netns, made ahead of need.

    Making a socket inside another netns costs a thread and two setns calls
    (about 0.5 ms here), which would sit on every new connection's path. The
    factory keeps a few spare sockets made in one batch by one thread, and
    refills in the background when half are used; `take()` is then free.
    Only creation needs the netns: options, bind and connect work from any
    thread. Spares are kept per address family, IPv6 ones only once the pod
    has asked for one (most pods of a dual-stack cluster never do).
    """

    def __init__(self, netns_fd: int | None, spare: int = 16) -> None:
        self.netns_fd = netns_fd
        self.spare = spare
        self._spares: dict[int, list[socket.socket]] = {socket.AF_INET: []}
        self._refilling: set[int] = set()
        self.closed = False

    def _make(self, count: int, family: int = socket.AF_INET) -> list[socket.socket]:
        return [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]

    def _batch(self, count: int, family: int = socket.AF_INET) -> list[socket.socket]:
        if self.netns_fd is None:
            return self._make(count, family)
        return netns.run_in(self.netns_fd, self._make, count, family)

    def take(self, family: int = socket.AF_INET) -> socket.socket:
        """A fresh TCP socket of the netns, of `family` (AF_INET or AF_INET6)."""
        spares = self._spares.setdefault(family, [])
        sock = spares.pop() if spares else self._batch(1, family)[0]
        if len(spares) <= self.spare // 2 and family not in self._refilling and not self.closed:
            self._refill(family)
        return sock

    def _refill(self, family: int) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refilling.add(family)
        spares = self._spares[family]

        def done(future) -> None:
            self._refilling.discard(family)
            if future.exception() is not None:
                return
            fresh = future.result()
            if self.closed:
                for sock in fresh:
                    sock.close()
            else:
                spares.extend(fresh)

        loop.run_in_executor(None, self._batch, self.spare - len(spares), family).add_done_callback(done)

    def close(self) -> None:
        self.closed = True
        for spares in self._spares.values():
            for sock in spares:
                sock.close()
            spares.clear()


KEEPALIVE = ((socket.TCP_KEEPIDLE, 30), (socket.TCP_KEEPINTVL, 10), (socket.TCP_KEEPCNT, 3))


def _tune(sock: socket.socket, mark: bool = True) -> None:
    """Mark (capture skips the socket), keepalive, large buffers.

    `mark=False` is for a process whose own netns no capture reaches (a
    waypoint's pod opts out): it marks when it may (CAP_NET_ADMIN) and goes
    on without it otherwise."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, contracts.MARK)
    except PermissionError:
        if mark:
            raise SocketError("cannot set SO_MARK on a socket: the proxy needs CAP_NET_ADMIN, or the pod's "
                              "capture would take the proxy's own connections") from None
    # A peer node that vanishes without a RST is noticed in about a minute, not hours.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def listener(netns_fd: int | None, port: int, address: str = ALL_ADDRESSES, *, mark: bool = True,
             reuse_port: bool = True) -> socket.socket:
    """A listening TCP socket in the netns (None: the caller's), SO_REUSEPORT so a new proxy can take over.
    `::` (the default) listens on both families with one socket; where the kernel has no IPv6 at all
    it falls back to 0.0.0.0 (IPv4 only). `mark` as in `_tune`. `reuse_port=False` for a port that no
    second process should share (an HTTP endpoint: a port taken is then an error, not a silent split)."""
    if address == ALL_ADDRESSES:
        try:
            return _listen(netns_fd, port, address, mark, reuse_port)
        except Ipv6Unavailable:
            return _listen(netns_fd, port, "0.0.0.0", mark, reuse_port)
    return _listen(netns_fd, port, address, mark, reuse_port)


def _listen(netns_fd: int | None, port: int, address: str, mark: bool, reuse_port: bool = True) -> socket.socket:
    family = _family(address)
    try:
        sock = netns.socket_in(netns_fd, family, socket.SOCK_STREAM) if netns_fd is not None \
            else socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        kind = Ipv6Unavailable if family == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT else SocketError
        raise kind(f"cannot make an {'IPv6' if family == socket.AF_INET6 else 'IPv4'} socket: {e.strerror or e}; "
                   "check that the kernel has that address family") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and address == ALL_ADDRESSES:
            # Dual-stack whatever net.ipv6.bindv6only says: IPv4 arrives as ::ffff:a.b.c.d.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _tune(sock, mark)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except SocketError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        # IPv6 turned off in the netns (disable_ipv6: nothing to bind): IPv4 alone still serves.
        off = family == socket.AF_INET6 and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
        raise (Ipv6Unavailable if off else SocketError)(
            f"cannot listen on {join_host_port(address, port)}"
            f"{' in the pod netns' if netns_fd is not None else ''}: {e.strerror or e}; "
            f"check that nothing else holds the port{' without SO_REUSEPORT' if reuse_port else ''}") from None
    return sock


def local_address(sock: socket.socket) -> tuple[str, int]:
    return canonical_address(sock.getsockname())


def peer_address(sock: socket.socket) -> tuple[str, int]:
    return canonical_address(sock.getpeername())


def _parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """A sockaddr_in or sockaddr_in6, by its family field (host byte order, first two bytes)."""
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_INET6 and len(raw) >= 24:
        port, packed = struct.unpack_from("!H4x16s", raw, 2)
        return canonical_address((socket.inet_ntop(socket.AF_INET6, packed), port))
    port, packed = struct.unpack_from("!H4s", raw, 2)
    return socket.inet_ntoa(packed), port


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the app meant to connect (canonical): SO_ORIGINAL_DST (iptables REDIRECT, or the eBPF
    getsockopt hook); a socket steered by sk_lookup reports it as its own address.

    An IPv4 connection (on a dual-stack listener too, where it is ::ffff:a.b.c.d) asks SOL_IP; an
    IPv6 one asks SOL_IPV6's IP6T_SO_ORIGINAL_DST (ip6tables REDIRECT) first, then SOL_IP (where
    an eBPF hook may answer for either family): the answer is read by its own family field."""
    local = sock.getsockname()
    ipv6 = sock.family == socket.AF_INET6 and ip_version(local[0]) == 6
    levels = ((socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST), (socket.SOL_IP, SO_ORIGINAL_DST)) if ipv6 \
        else ((socket.SOL_IP, SO_ORIGINAL_DST),)
    for level, option in levels:
        try:
            return _parse_sockaddr(sock.getsockopt(level, option, 28))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOPROTOOPT):
                raise
    return canonical_address(local)


def captured_destination(sock: socket.socket, direction: str) -> tuple[str, int] | None:
    """The original destination of a captured connection, or None (the socket closed, a warning
    logged) when the kernel has none for it: such a connection cannot be sent anywhere."""
    try:
        return original_destination(sock)
    except OSError as e:
        sock.close()
        _logger.warning(f"no original destination on an {direction} connection", error=str(e))
        return None


async def connect(source: SocketFactory | int | None, destination: tuple[str, int], *, timeout: float,
                  transparent_source: str | None = None, mark: bool = True) -> socket.socket:
    """A connected socket from inside the netns (a SocketFactory of it, its fd, or None for
    our own), marked; with `transparent_source`, it binds the client's IP (IP_TRANSPARENT)
    so the app sees the original source. `mark` as in `_tune`."""
    family = _family(destination[0])
    if isinstance(source, SocketFactory):
        sock = source.take(family)
    elif source is not None:
        sock = netns.socket_in(source, family, socket.SOCK_STREAM)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
    where = join_host_port(destination[0], destination[1])
    try:
        _tune(sock, mark)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transparent_source:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((transparent_source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, destination), timeout)
        return sock
    except asyncio.TimeoutError:
        sock.close()
        raise ConnectFailed(f"connection to {where} timed out after {timeout:.0f}s; "
                            "check that the destination is up and that no NetworkPolicy drops the traffic",
                            "timed_out") from None
    except ConnectionRefusedError:
        sock.close()
        raise ConnectFailed(f"connection to {where} refused; "
                            "check that the app listens on that port", "refused") from None
    except SocketError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise ConnectFailed(f"cannot connect to {where}: {e.strerror or e}; "
                            "check routes from the pod", "unreachable") from None


def reset(sock: socket.socket) -> None:
    """Closes with a RST (SO_LINGER 0): the peer learns at once that the connection was refused."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


async def accept_forever(sock: socket.socket, on_connection: Callable[[socket.socket, tuple], None], *,
                         what: str = "listener", max_pause: float = 1.0) -> None:
    """Accepts on `sock` until it is closed or the task is cancelled; hands each connection on.

    Running out of file descriptors (EMFILE, ENFILE) or memory, or any other error on one accept,
    must not stop a proxy from accepting for good: it is logged, the loop pauses (a little longer
    each time, up to `max_pause`), and goes on. Only a closed listener ends the loop.
    """
    loop = asyncio.get_running_loop()
    pause = 0.0
    while True:
        try:
            conn, address = await loop.sock_accept(sock)
        except OSError as e:
            if sock.fileno() < 0 or e.errno in (errno.EBADF, errno.EINVAL):
                return                                   # the listener was closed: drain or pod removal
            pause = min(max(pause * 2, 0.01), max_pause)
            _logger.warning("accept failed; pausing before the next", listener=what, error=str(e),
                            pause_seconds=pause)
            await asyncio.sleep(pause)
            continue
        pause = 0.0
        on_connection(conn, canonical_address(address))
