"""How a new ztunnel takes new connections from the old one while both listen on the same ports.

During an upgrade (a DaemonSet rolling update with a surge pod, or `shoal local
rollout restart ztunnel`) two ztunnels hold the same ports with SO_REUSEPORT:
in every pod (15001, 15006, 15008) and on the node (15020, 15021, 15000). The
kernel would spread new connections over both by a hash of the 4-tuple, so the
old one would keep taking new connections until it closes its listeners, and
those still in its accept queue at that moment would be reset. Readiness and
metrics would be answered by either process at random.

A classic-BPF program attached to the reuseport group says instead which
socket of the group takes every new connection: index 1, the second socket,
or index 0, the first. Sockets join a group in the order they listen, so with
two ztunnels index 1 is the newer one's; with one ztunnel index 1 does not
exist and the kernel falls back to its hash over the one socket. When the old
one closes, the kernel moves the newer socket into its place (index 0). The
eBPF redirect mode's sk_lookup assigns a socket of the group and the kernel
then runs the same selection.

- Pod listeners prefer the newer ztunnel from the start: a ztunnel opens them
  only once its config is whole (`ztunnel.main`).
- Node listeners (metrics, readiness, admin) join preferring the older one and
  turn to the newer once it is ready. Until then the old ztunnel answers
  scrapes and its own pod's probes; the new pod's probe path
  (/healthz/ready/<pod>) is not the old one's, so the new pod is not ready
  until it is. A rollout that stalls (a new ztunnel that never gets its config)
  leaves the old one answering everything, truthfully ready.

This holds for at most two ztunnels per node at once (maxSurge 1): a third
would join at index 2 and get nothing until one of the others left.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from shoal.sockets import SocketError

SO_ATTACH_REUSEPORT_CBPF = 51          # include/uapi/asm-generic/socket.h
BPF_RET_K = 0x06                       # BPF_RET | BPF_K: return the constant
OLDER_OF_TWO = 0                       # index in the group of the socket that listened first
NEWER_OF_TWO = 1                       # ... and second


def prefer_newest(sock: socket.socket) -> None:
    """Attaches "take the newer ztunnel's socket" to `sock`'s reuseport group (after listen())."""
    _prefer(sock, NEWER_OF_TWO)


def prefer_oldest(sock: socket.socket) -> None:
    """Attaches "take the older ztunnel's socket" to `sock`'s reuseport group (after listen())."""
    _prefer(sock, OLDER_OF_TWO)


def _prefer(sock: socket.socket, index: int) -> None:
    program = ctypes.create_string_buffer(struct.pack("HBBI", BPF_RET_K, 0, 0, index))
    fprog = struct.pack("H6xP", 1, ctypes.addressof(program))      # struct sock_fprog {len; filter *}
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as e:
        raise SocketError(f"cannot attach the reuseport program to {sock.getsockname()}: {e.strerror or e}; "
                           "the socket must have SO_REUSEPORT set and be listening") from None


def node_listener(address: str, port: int) -> socket.socket:
    """A node-level listener (metrics, readiness, admin) shared with another ztunnel on the node:
    SO_REUSEPORT, the older socket preferred until `prefer_newest` is called once this one is ready."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(128)
        sock.setblocking(False)
        prefer_oldest(sock)
    except OSError as e:
        sock.close()
        raise SocketError(f"cannot listen on {address}:{port}: {e.strerror or e}; check that no other process "
                          "holds the port without SO_REUSEPORT (a ztunnel older than this one, say)") from None
    except SocketError:
        sock.close()
        raise
    return sock
