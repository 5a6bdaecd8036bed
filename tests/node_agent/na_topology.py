"""A tiny node for the node agent's tests: one node netns, two pods on veths, a cgroup each.

    node netns  (169.254.1.1 on each pod veth, forwarding on)
      |-- pod "a": eth0 198.19.250.2/32, default via 169.254.1.1, cgroup .../a
      `-- pod "b": eth0 198.19.250.3/32, default via 169.254.1.1, cgroup .../b
    cgroup .../ztunnel: where the test process sits while it plays the ztunnel
    cgroup .../kubelet: the node's kubelet (its probes); .../host: another host-network process

With `ipv6()`, each pod also gets fd73:686f:616c:fa::<2|3>/128 (shoal's own
range), routed by the node over fd73:686f:616c:fa::1 on each pod veth, as the
IPv4 side does with 169.254.1.1.

The node and its pods are wired as the local cluster wires them (shoal.local.network), under
names of a cluster of their own. Everything is named after the test process's pid and removed
by `destroy()`.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shoal import netns
from shoal.local.layout import Layout
from shoal.local.network import ensure_pod_sandbox, remove_pod_sandbox

from node_agent.model import PodTarget

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
POD_IPS = {"a": "198.19.250.2", "b": "198.19.250.3"}
POD_IPS6 = {"a": "fd73:686f:616c:fa::2", "b": "fd73:686f:616c:fa::3"}
GATEWAY6 = "fd73:686f:616c:fa::1"
NAMESPACE = "demo"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: f"natest{os.getpid()}")
    pods: dict[str, PodTarget] = field(default_factory=dict)
    home_cgroup: Path | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.tag)

    @property
    def node(self) -> str:
        return self.layout.node_netns(1)

    @property
    def cgroup_dir(self) -> Path:
        return CGROUP_ROOT / f"shoal-test-{os.getpid()}"

    @property
    def ztunnel_cgroup(self) -> Path:
        return self.cgroup_dir / "ztunnel"

    @property
    def kubelet_cgroup(self) -> Path:
        return self.cgroup_dir / "kubelet"

    @property
    def host_cgroup(self) -> Path:
        """A host-network process that is not the kubelet."""
        return self.cgroup_dir / "host"

    def pod_netns(self, pod: str) -> str:
        return self.layout.pod_netns(NAMESPACE, f"pod-{pod}")

    def create(self) -> "Topology":
        netns.create(self.node)
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.cgroup_dir.mkdir(exist_ok=True)
        for cgroup in (self.ztunnel_cgroup, self.kubelet_cgroup, self.host_cgroup):
            cgroup.mkdir(exist_ok=True)
        for pod, ip in POD_IPS.items():
            name = ensure_pod_sandbox(self.layout, 1, NAMESPACE, f"pod-{pod}", ip)
            cgroup = self.cgroup_dir / pod
            cgroup.mkdir(exist_ok=True)
            self.pods[pod] = PodTarget(uid=str(uuid.uuid4()), namespace=NAMESPACE, name=f"pod-{pod}", ip=ip,
                                       netns=str(netns.path(name)), cgroup=str(cgroup))
        return self

    def enter_ztunnel_cgroup(self) -> None:
        """Moves this (test) process into the ztunnel cgroup, where it plays the ztunnel."""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                self.home_cgroup = CGROUP_ROOT / line[3:].lstrip("/")
        (self.ztunnel_cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def destroy(self) -> None:
        if self.home_cgroup is not None:
            (self.home_cgroup / "cgroup.procs").write_text(str(os.getpid()))
            self.home_cgroup = None
        for pod in POD_IPS:
            remove_pod_sandbox(self.layout, NAMESPACE, f"pod-{pod}")
        netns.remove(self.node)
        if self.cgroup_dir.exists():
            for child in self.cgroup_dir.iterdir():
                if child.is_dir():
                    _kill_cgroup(child)
                    child.rmdir()
            self.cgroup_dir.rmdir()

    def ipv6(self, enable: bool = True) -> None:
        """Adds (or removes) the pods' IPv6 addresses and the node's routes to them."""
        verb = "add" if enable else "del"
        if enable:
            sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for pod, ip6 in POD_IPS6.items():
            ns, veth = self.pod_netns(pod), self.layout.pod_veth(NAMESPACE, f"pod-{pod}")
            steps = [
                (self.node, ["-6", "addr", verb, f"{GATEWAY6}/128", "dev", veth, *(["nodad"] if enable else [])]),
                (self.node, ["-6", "route", verb, f"{ip6}/128", "dev", veth]),
                (ns, ["-6", "addr", verb, f"{ip6}/128", "dev", "eth0", *(["nodad"] if enable else [])]),
                (ns, ["-6", "route", verb, f"{GATEWAY6}/128", "dev", "eth0"]),
                (ns, ["-6", "route", verb, "default", "via", GATEWAY6, "dev", "eth0"]),
            ]
            for where, argv in (steps if enable else reversed(steps)):
                result = subprocess.run(["ip", "-n", where, *argv], capture_output=True, text=True)
                if result.returncode != 0 and enable and "File exists" not in result.stderr:
                    raise RuntimeError(f"ip {' '.join(argv)} in {where}: {result.stderr.strip()}")

    def run_on_node(self, code: str, cgroup: Path, *, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Runs a Python snippet as a host-network process of the node, in `cgroup`."""
        proc = netns.popen(self.node, [sys.executable, "-I", "-S", "-c", code], cgroup=str(cgroup),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run_in_pod(self, pod: str, code: str, *, timeout: float = 10.0, cgroup: bool = True) -> subprocess.CompletedProcess:
        """Runs a Python snippet as a process of the pod: its netns and (by default) its cgroup."""
        proc = netns.popen(self.pod_netns(pod), [sys.executable, "-I", "-S", "-c", code],
                           cgroup=self.pods[pod].cgroup if cgroup else None,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_cgroup(cgroup: Path) -> None:
    procs = cgroup / "cgroup.procs"
    if procs.exists():
        for pid in procs.read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


def client_code(ip: str, port: int, *, mark: int | None = None, payload: bytes = b"hello") -> str:
    """A client that connects, sends, prints what getpeername says and what came back."""
    return f"""
import socket
s = socket.socket()
s.settimeout(5)
{f"s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, {mark})" if mark is not None else ""}
s.connect(({ip!r}, {port}))
s.sendall({payload!r})
peer = s.getpeername()
data = s.recv(100)
print(f"{{peer[0]}}:{{peer[1]}} {{data.decode()}}")
"""


SO_ORIGINAL_DST = 80


def listen_in(ns: str | int, port: int, address: str = "0.0.0.0") -> socket.socket:
    sock = netns.socket_in(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(16)
    sock.settimeout(5)
    return sock


def listen6_in(ns: str, port: int, kind: int = socket.SOCK_STREAM, address: str = "::", *,
               v6only: bool = True) -> socket.socket:
    """An IPv6 socket in the netns; V6ONLY by default, so IPv4 cannot reach it by the back door."""
    sock = netns.socket_in(ns, socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    sock.settimeout(5)
    return sock


def udp6_code(ip: str, port: int) -> str:
    """An AF_INET6 UDP client: sends three datagrams, prints `sent`, or `failed <errno name>`."""
    return f"""
import errno, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
try:
    for _ in range(3):
        s.sendto(b"datagram", ({ip!r}, {port}))
    print("sent")
except OSError as e:
    print("failed", errno.errorcode.get(e.errno, str(e)))
"""


def nothing_arrives(sock: socket.socket, wait: float = 0.5) -> bool:
    """No connection (stream) or datagram reaches `sock` within `wait` seconds."""
    sock.settimeout(wait)
    try:
        if sock.type == socket.SOCK_STREAM:
            sock.accept()[0].close()
        else:
            sock.recvfrom(100)
    except socket.timeout:
        return True
    return False


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """How the ztunnel reads it: SO_ORIGINAL_DST, or the socket's own address after sk_lookup."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack("!2xH4s8x", raw)
        return socket.inet_ntoa(packed), port
    except OSError:
        return sock.getsockname()[:2]


class Server(threading.Thread):
    """Accepts one connection, records it, answers `reply`."""

    def __init__(self, listener: socket.socket, reply: bytes = b"ok"):
        super().__init__(daemon=True)
        self.listener, self.reply = listener, reply
        self.conn = self.peer = self.data = self.error = None
        self.start()

    def run(self):
        try:
            self.conn, self.peer = self.listener.accept()
            self.conn.settimeout(5)
            self.data = self.conn.recv(100)
            self.conn.sendall(self.reply)
        except OSError as e:
            self.error = e

    def result(self):
        self.join(6)
        return self


def bpftool_cgroup(path: str) -> list[str]:
    out = subprocess.run(["bpftool", "cgroup", "show", path], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()[1:] if line.strip()]


def bpftool_links() -> str:
    return subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True, check=True).stdout


def sockhash_cookie(sockhash_fd: int, address: str) -> int | None:
    """The socket cookie a sockhash holds for this address (a lookup from user space), or None."""
    from node_agent import libbpf
    from node_agent.ebpf import sockhash_key
    held = libbpf.map_lookup(sockhash_fd, sockhash_key(address), 8)
    return None if held is None else struct.unpack("Q", held)[0]


def socket_cookie(sock: socket.socket) -> int:
    """The kernel's cookie of a socket (SO_COOKIE): what a sockhash lookup from user space returns."""
    from node_agent.ebpf import socket_cookie as cookie
    return cookie(sock.fileno())


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


