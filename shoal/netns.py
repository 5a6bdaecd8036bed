"""Network-namespace helpers on pyroute2: create, enter, run inside, remove.

Named namespaces live as bind mounts under /run/netns (as `ip netns` keeps
them). Entering a namespace is per thread (setns(2) changes only the calling
thread), so `run_in` and `socket_in` do their work in a short-lived thread
and leave the caller's thread where it was. A socket keeps the namespace it
was created in, which is how the ztunnel holds listeners inside pods.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from shoal.errors import ShoalError

# pyroute2 is imported where it is used: it is about 10 MiB resident, and the waypoint and the proxies'
# socket helpers (shoal.sockets) import this module without ever touching a netlink socket (issue 18).
if TYPE_CHECKING:
    from pyroute2 import IPRoute

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NetnsError(ShoalError):
    """A network namespace could not be made, entered or removed."""


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def names(prefix: str = "") -> list[str]:
    from pyroute2 import netns as _netns
    return sorted(n for n in _netns.listnetns() if n.startswith(prefix))


def create(name: str) -> bool:
    """Creates the named namespace with loopback up; False if it already existed."""
    if exists(name):
        return False
    # `ip netns add` rather than pyroute2's create, which forks a Python child (see `ip`).
    result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if result.returncode != 0 and not exists(name):
        raise NetnsError(f"cannot create network namespace {name}: {result.stderr.strip()}"
                         " (creating namespaces needs root)")
    with ip(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return True


def remove(name: str) -> bool:
    if not exists(name):
        return False
    from pyroute2 import netns as _netns
    _netns.remove(name)
    return True


def open_fd(name_or_path: str | os.PathLike) -> int:
    """An O_RDONLY fd of a namespace, by name or by path (e.g. /proc/PID/ns/net)."""
    p = Path(name_or_path)
    if not p.is_absolute():
        p = path(str(name_or_path))
    try:
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name_or_path} does not exist") from None


_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Moves the calling thread into the namespace behind `fd` (os.setns is 3.12+)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}; entering a network namespace needs CAP_SYS_ADMIN")


@contextmanager
def entered(name_or_fd: str | int):
    """Runs the body with the calling thread inside the namespace, then returns."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fd = name_or_fd if isinstance(name_or_fd, int) else open_fd(name_or_fd)
    try:
        setns(fd)
        yield
    finally:
        setns(home)
        os.close(home)
        if not isinstance(name_or_fd, int):
            os.close(fd)


def run_in(name_or_fd: str | int, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Calls `fn(*args, **kwargs)` in a fresh thread inside the namespace; returns its result."""
    result: dict[str, Any] = {}

    def target():
        try:
            with entered(name_or_fd):
                result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, name="netns-run")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def socket_in(name_or_fd: str | int, family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0) -> socket.socket:
    """A socket created inside the namespace (it stays there for its whole life)."""
    return run_in(name_or_fd, socket.socket, family, type, proto)


def ip(name: str | None = None) -> IPRoute:
    """A pyroute2 IPRoute bound to the namespace (or the caller's, for None).

    The netlink socket is opened in a thread that has entered the namespace,
    rather than with pyroute2's own `netns=`, which forks a helper process: a
    forked child shares the parent's signal wake-up fd, so its exit can look
    like a SIGTERM to an asyncio daemon.
    """
    from pyroute2 import IPRoute
    if not name:
        return IPRoute()
    return IPRoute(use_socket=socket_in(name, socket.AF_NETLINK, socket.SOCK_DGRAM, 0))


def addresses(name_or_fd: str | int) -> tuple[str, ...]:
    """The namespace's own addresses, both families, loopback and IPv6 link-local left out (a pod's:
    what the mesh may reach; a link-local address names no pod beyond its link).

    Read with one netlink dump of our own rather than pyroute2: pyroute2 0.9 drives netlink through
    an asyncio datagram endpoint, which uvloop (the ztunnel's loop policy) refuses for AF_NETLINK,
    so in the ztunnel it always failed and the pod's own addresses went unread."""
    return tuple(sorted(run_in(name_or_fd, _dump_addresses)))


_RTM_NEWADDR, _RTM_GETADDR, _NLMSG_DONE, _NLMSG_ERROR = 20, 22, 3, 2
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLM_F_DUMP_REQUEST = 0x1 | 0x300          # NLM_F_REQUEST | NLM_F_DUMP


def _dump_addresses() -> list[str]:
    """RTM_GETADDR in the calling thread's netns: IPv4 but 127/8, IPv6 of universe scope only."""
    import struct
    found: list[str] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.send(struct.pack("=IHHII", 16 + 8, _RTM_GETADDR, _NLM_F_DUMP_REQUEST, 1, 0)
                + struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            data, offset = nl.recv(65536), 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + 16)
                    raise OSError(-errno, f"netlink address dump: {os.strerror(-errno)}")
                if kind == _RTM_NEWADDR:
                    family, _, _, scope, _ = struct.unpack_from("=BBBBI", data, offset + 16)
                    attrs, local, address = offset + 24, None, None
                    while attrs + 4 <= offset + length:
                        size, attr = struct.unpack_from("=HH", data, attrs)
                        if size < 4:
                            break
                        if attr in (_IFA_LOCAL, _IFA_ADDRESS):
                            text = socket.inet_ntop(family, data[attrs + 4:attrs + size])
                            local, address = (text, address) if attr == _IFA_LOCAL else (local, text)
                        attrs += (size + 3) & ~3
                    text = local or address            # IFA_LOCAL is ours on a point-to-point link
                    if family == socket.AF_INET and text and not text.startswith("127."):
                        found.append(text)
                    elif family == socket.AF_INET6 and text and scope == 0:   # RT_SCOPE_UNIVERSE
                        found.append(text)
                offset += (length + 3) & ~3
                if length == 0:
                    return found


def tcp_listeners(name_or_fd: str | int, port: int) -> set[str]:
    """The local addresses (IPv4, and IPv6 compressed) that sockets of the namespace listen on for TCP `port`."""
    def read() -> set[str]:
        found = set()
        for table_name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
            try:
                table = open(f"/proc/thread-self/net/{table_name}")   # this thread's netns, not the process's
            except FileNotFoundError:                                  # no IPv6 in this kernel
                continue
            with table:
                next(table)
                for line in table:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    address, _, hex_port = local.partition(":")
                    if state == "0A" and int(hex_port, 16) == port:   # 0A: LISTEN
                        # /proc prints each 32-bit word of the address in host (little-endian) order.
                        raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                        found.add(socket.inet_ntop(family, raw))
        return found
    return run_in(name_or_fd, read)


def popen(name: str, argv: Sequence[str], *, cgroup: str | None = None, **kwargs) -> subprocess.Popen:
    """Starts a process inside the namespace (and, optionally, a cgroup v2 directory).

    The child joins the cgroup before it execs, so nothing it forks escapes.
    /etc/netns/<name>/ files (hosts, resolv.conf) are bind-mounted over /etc
    the way `ip netns exec` does it, which is what it runs under the hood.
    """
    def preexec():
        os.setsid()
        if cgroup:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    full = ["ip", "netns", "exec", name, *argv]
    return subprocess.Popen(full, preexec_fn=preexec, **kwargs)


def run(name: str, argv: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command inside the namespace to completion."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", name, *argv], check=check, **kwargs)
