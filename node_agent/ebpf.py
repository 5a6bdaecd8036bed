"""The eBPF redirect mode: bpf/redirect.c, compiled once by bcc, pinned, attached per pod.

Loading: the programs are compiled and loaded once per agent and pinned under
`<bpffs>/shoal/<agent>/<source hash>/` together with the sockhash of inbound
listeners. The compiling is done by a short-lived child process
(`node_agent.ebpf_build`), so bcc and LLVM (over 100 MiB) never stay in the
agent: the agent only ever opens pins. A restarted agent (even after kill -9)
opens the pins instead of compiling, so it finds the very programs that are
attached and never attaches a second copy. Changed C source gets a new hash
directory.

Per pod:
- its cgroup gets the set `pod_cgroup_programs` names (BPF_PROG_ATTACH with
  ALLOW_MULTI; cgroup attachments outlive the agent): shoal_connect4,
  shoal_getpeer4, shoal_getpeer6 and shoal_sockops always; for a pod with an
  IPv6 address shoal_connect6_carry (its IPv6 TCP captured to [::1]:15001),
  for one with none shoal_connect6 and shoal_sendmsg6 (its IPv6 refused);
  either way a v4-mapped address is captured as IPv4. A pod whose DNS is
  captured gets the _dns variants of the connect programs, which take its TCP
  to port 53 to the DNS proxy;
- its netns gets shoal_sk_lookup through a bpf link, pinned as
  `<agent dir>/links/<uid>` so it outlives the agent too; it drops inbound
  IPv6 to any address the pod was not enrolled with (link-local, or every
  IPv6 of a pod that has only IPv4);
- the sockhash maps each of the pod's addresses (16 bytes, IPv4 v4-mapped) to
  the ztunnel's 15006 listener for that pod and family (the ztunnel hands the
  listeners over with its Ack of AddWorkload); the keys of an address the
  pod loses, or of a pod that leaves, are deleted (`forget_addresses`), but
  not one that holds another pod's listener: the kernel says which listener a
  key holds (its socket cookie), and `Redirection` records each pod's
  listener cookies in its ledger, so a restarted agent knows them before any
  Ack.
The ztunnel's own cgroup (found from the hand-off peer) gets shoal_ztsockops
and shoal_getsockopt, which answer SO_ORIGINAL_DST on the ztunnel's 15001
sockets and record the ztunnel's own connections as uncaptured. Telling the
ztunnel by its cgroup rather than by the 0x539 mark is what keeps a pod that
sets the mark itself captured.

On each target, shoal's programs of each attach type are exactly this
build's set for that target: installing attaches what is missing and
detaches any other shoal program there (an older build's, or one renamed).
Whether a program is attached is asked of the kernel (BPF_PROG_QUERY), never
assumed. Removing a pod detaches its cgroup programs and unpins its link.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from shoal import log

from node_agent import bpffs, ebpf_build, libbpf
from node_agent.ebpf_programs import (  # noqa: F401 (names of the eBPF object, used here and by callers)
    ATTACH_SK_LOOKUP, POD_ATTACH_TYPES, PROGRAMS, SOURCE, ZTUNNEL_CGROUP_PROGRAMS, pod_cgroup_programs, source_text,
)
from node_agent.errors import BpfError, PrerequisiteMissing, RedirectError
from node_agent.model import PodTarget

logger = log.get("node_agent.ebpf")

_REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300.0  # seconds for the child that compiles (bcc takes a few on an idle machine)
BPFFS = bpffs.BPFFS
SO_COOKIE = getattr(socket, "SO_COOKIE", 57)

def source_hash() -> str:
    # SOURCE read at call time, from this module: a test swaps in a newer build's source here
    return hashlib.sha256(source_text(0, SOURCE).encode()).hexdigest()[:12]


# Mounting and unmounting bpffs: once, under a host-wide lock (node_agent.bpffs).
bpffs_mounted, ensure_bpffs, release_bpffs = bpffs.mounted, bpffs.ensure, bpffs.release


def _cgroup_fd(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RedirectError(f"cgroup {path} does not exist; is the pod running, and is cgroup v2 "
                            f"mounted where the kubelet put it?") from None


def cgroup_of_pid(pid: int, root: Path | None = None) -> Path:
    """The cgroup v2 directory of a process (from /proc/PID/cgroup's `0::` line)."""
    from node_agent.hostmounts import cgroup2_root
    root = root or cgroup2_root()
    if root is None:
        raise RedirectError("cgroup v2 is not mounted here; cannot find the ztunnel's cgroup")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    raise RedirectError(f"process {pid} is in no cgroup v2 (no 0:: line in /proc/{pid}/cgroup)")


class EbpfRedirector:
    mode = "ebpf"

    def __init__(self, agent_id: str, bpffs: Path = BPFFS) -> None:
        self.agent_dir = bpffs / "shoal" / agent_id
        self.bpffs = bpffs
        self.prog_dir = self.agent_dir / source_hash()
        self.links_dir = self.agent_dir / "links"
        self.prog_fds: dict[str, int] = {}
        self.prog_ids: dict[str, int] = {}
        self.sockhash_fd: int | None = None
        self.ztunnel_cgroups: set[str] = set()

    # -- loading ----------------------------------------------------------------

    def load(self) -> None:
        """Opens the pinned programs, or compiles, loads and pins them the first time."""
        if self.prog_fds:
            return
        ensure_bpffs(self.bpffs, keep=self.links_dir)  # no other agent may unmount it once ours is there
        if all((self.prog_dir / name).exists() for name in [*PROGRAMS, "sockhash", "uncaptured"]):
            self._open_pins()
            logger.info("reusing pinned eBPF programs", dir=str(self.prog_dir))
        else:
            self._compile_and_pin()
        for name, fd in self.prog_fds.items():
            self.prog_ids[name] = libbpf.prog_info(fd)[0]
        for old in self.agent_dir.iterdir():
            if old.is_dir() and old not in (self.prog_dir, self.links_dir):
                # Pins of an older build: what is still attached keeps those programs
                # alive until each pod is installed again (which detaches them).
                shutil.rmtree(old)
                logger.info("unpinned an older build of the eBPF programs", dir=str(old))

    def _open_pins(self) -> None:
        try:
            for name in PROGRAMS:
                self.prog_fds[name] = libbpf.get_pinned(str(self.prog_dir / name))
            self.sockhash_fd = libbpf.get_pinned(str(self.prog_dir / "sockhash"))
        except BpfError:
            self.close()
            raise

    def _compile_and_pin(self) -> None:
        """Compiles and pins in a child process (`node_agent.ebpf_build`), then opens the pins.

        bcc and LLVM stay in the child, whose memory goes when it exits; the
        programs and maps live on in bpffs. A child that fails removes what it
        pinned; one killed half-way leaves a partial set, which the next
        build removes before pinning."""
        source = SOURCE  # read at call time: a test swaps in a newer build's source
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        try:
            child = subprocess.run([sys.executable, "-m", "node_agent.ebpf_build", str(source), str(self.prog_dir)],
                                   env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            shutil.rmtree(self.prog_dir, ignore_errors=True)
            raise RedirectError(f"compiling {source} took over {BUILD_TIMEOUT:.0f}s; is the machine overloaded? "
                                "or use --redirect iptables") from None
        reason = (child.stderr.strip().splitlines() or ["no message"])[-1]
        if child.returncode == ebpf_build.EXIT_NOT_COMPILABLE:
            raise PrerequisiteMissing("a compilable eBPF build", reason,
                                      "check bcc (apt install python3-bpfcc) and the kernel headers "
                                      "(/lib/modules/$(uname -r)/build), or use --redirect iptables")
        if child.returncode != 0:
            shutil.rmtree(self.prog_dir, ignore_errors=True)
            raise RedirectError(f"building the eBPF programs failed (exit status {child.returncode}): {reason}")
        try:
            self._open_pins()
        except BpfError as e:
            raise RedirectError(f"the eBPF build pinned nothing usable in {self.prog_dir}: {e}") from None
        logger.info("compiled and pinned eBPF programs", dir=str(self.prog_dir))

    # -- per pod ----------------------------------------------------------------

    def install(self, pod: PodTarget) -> None:
        self.load()
        if not pod.cgroup:
            raise RedirectError(f"pod {pod.key} has no cgroup path; the eBPF mode attaches to the pod's cgroup")
        cgroup = _cgroup_fd(pod.cgroup)
        try:
            self._attach_set(_pod_programs(pod), cgroup, pod.cgroup, POD_ATTACH_TYPES)
        finally:
            os.close(cgroup)
        self._link_netns(pod)

    def _attach_set(self, names, target_fd: int, where: str, also=()) -> None:
        """Attaches each of `names` unless it is; then detaches every other shoal program of those attach types
        and of the attach types `also` (where `names` may have none: another set of the target's had some)."""
        for name in names:
            attach_type = PROGRAMS[name][1]
            if self.prog_ids[name] not in libbpf.prog_query(target_fd, attach_type):
                libbpf.prog_attach(self.prog_fds[name], target_fd, attach_type)
                logger.debug("attached", program=name, to=where)
        for attach_type, wanted in _ids_by_type(names, self.prog_ids, also).items():
            for stale in self._shoal_programs(target_fd, attach_type) - wanted:
                self._detach_id(stale, target_fd, attach_type)
                logger.info("detached an older or renamed shoal program", id=stale, attach_type=attach_type,
                            to=where)

    def _attached_exactly(self, names, target_fd: int, also=()) -> bool:
        return all(self._shoal_programs(target_fd, attach_type) == wanted
                   for attach_type, wanted in _ids_by_type(names, self.prog_ids, also).items())

    def _shoal_programs(self, target_fd: int, attach_type: int) -> set[int]:
        """Ids of shoal's programs (any build, any name) attached there with that attach type."""
        found = set()
        for prog_id in libbpf.prog_query(target_fd, attach_type):
            try:
                fd = libbpf.prog_fd_by_id(prog_id)
            except BpfError:
                continue  # gone meanwhile
            try:
                prog_name = libbpf.prog_info(fd)[1]
            finally:
                os.close(fd)
            if prog_name.startswith("shoal_"):
                found.add(prog_id)
        return found

    def _detach_id(self, prog_id: int, target_fd: int, attach_type: int) -> None:
        try:
            fd = libbpf.prog_fd_by_id(prog_id)
        except BpfError:
            return
        try:
            libbpf.prog_detach(fd, target_fd, attach_type)
        finally:
            os.close(fd)

    def _detach_all(self, target_fd: int, names, also=()) -> None:
        """Detaches every shoal program (any build, any name) of the attach types that `names` use, and of `also`."""
        for attach_type in {PROGRAMS[name][1] for name in names} | set(also):
            for prog_id in self._shoal_programs(target_fd, attach_type):
                self._detach_id(prog_id, target_fd, attach_type)

    def _link_netns(self, pod: PodTarget) -> None:
        pin, new = self.links_dir / _safe(pod.uid), _replacing(self.links_dir / _safe(pod.uid))
        new.unlink(missing_ok=True)  # left by an agent killed while replacing the link (a second link)
        netns_ino = os.stat(pod.netns).st_ino
        if pin.exists():
            fd = libbpf.get_pinned(str(pin))
            try:
                _, prog_id, ino = libbpf.link_info(fd)
            finally:
                os.close(fd)
            if ino == netns_ino and prog_id == self.prog_ids["shoal_sk_lookup"]:
                return
        # A link to an old netns or an old program is replaced by renaming the new one's pin over it: the old
        # one stays linked until the new one is (unpinned first, the pod's inbound would pass around the mesh
        # meanwhile, and for good if the new link could not be made).
        netns_fd = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            link = libbpf.link_create(self.prog_fds["shoal_sk_lookup"], netns_fd, ATTACH_SK_LOOKUP)
        finally:
            os.close(netns_fd)
        try:
            libbpf.pin(link, str(new))
            os.rename(new, pin)
        except BaseException:
            new.unlink(missing_ok=True)
            raise
        finally:
            os.close(link)

    def remove(self, pod: PodTarget, *, others: Iterable[int] = ()) -> None:
        """Detaches and unpins the pod's programs and forgets its sockhash keys, but those that hold one of
        `others` (the socket cookies of other pods' listeners: a pod took the address over)."""
        self.load()
        if pod.cgroup and os.path.isdir(pod.cgroup):
            cgroup = _cgroup_fd(pod.cgroup)
            try:
                self._detach_all(cgroup, (), POD_ATTACH_TYPES)
            finally:
                os.close(cgroup)
        pin = self.links_dir / _safe(pod.uid)
        for each in (pin, _replacing(pin)):  # and one an agent killed while replacing the link left
            each.unlink(missing_ok=True)
        self.forget_addresses(pod.ips, others=others)

    def installed(self, pod: PodTarget) -> bool:
        self.load()
        if not pod.cgroup or not os.path.isdir(pod.cgroup):
            return False
        cgroup = _cgroup_fd(pod.cgroup)
        try:
            if not self._attached_exactly(_pod_programs(pod), cgroup, POD_ATTACH_TYPES):
                return False  # missing, or an older version beside it
        finally:
            os.close(cgroup)
        pin = self.links_dir / _safe(pod.uid)
        if not pin.exists():
            return False
        fd = libbpf.get_pinned(str(pin))
        try:
            return libbpf.link_info(fd)[2] == os.stat(pod.netns).st_ino
        finally:
            os.close(fd)

    def set_inbound_listener(self, pod: PodTarget, listener_fd: int) -> list[str]:
        """Steers the pod's inbound traffic to this (ztunnel's 15006) listening socket: to each of the pod's
        addresses the socket can take (sk_lookup cannot hand IPv6 to an AF_INET socket, nor IPv4 to a
        V6ONLY one). The ztunnel may hand one listener per family, or one dual-stack AF_INET6 listener.
        Returns the addresses steered to it."""
        self.load()
        taken = _families_taken(listener_fd)
        steered = [address for address in pod.ips if ipaddress.ip_address(address).version in taken]
        for address in steered:
            libbpf.map_update(self.sockhash_fd, sockhash_key(address), struct.pack("Q", listener_fd))
        logger.debug("inbound listener set", pod=pod.key, addresses=steered)
        return steered

    def forget_addresses(self, addresses, *, others: Iterable[int] = ()) -> None:
        """Deletes these addresses' keys from the sockhash (a pod that lost them, or left): a stale key would
        steer inbound traffic for an address another pod now holds to this pod's listener. A key that holds
        one of `others` (listener cookies of other pods, which took the address over) stays; one whose
        listener is unknown goes (fail closed: dropped until its owner's Ack)."""
        self.load()
        others = set(others)
        for address in addresses:
            key = sockhash_key(address)
            held = libbpf.map_lookup(self.sockhash_fd, key, 8)
            if held is not None and struct.unpack("Q", held)[0] not in others:
                libbpf.map_delete(self.sockhash_fd, key)

    # -- the ztunnel ------------------------------------------------------------

    def attach_ztunnel(self, cgroup: str | os.PathLike) -> None:
        """Lets the ztunnel in this cgroup read SO_ORIGINAL_DST on its 15001 sockets."""
        self.load()
        cgroup = str(cgroup)
        fd = _cgroup_fd(cgroup)
        try:
            self._attach_set(ZTUNNEL_CGROUP_PROGRAMS, fd, cgroup)
        finally:
            os.close(fd)
        self.ztunnel_cgroups.add(cgroup)

    def detach_ztunnel(self, cgroup: str | os.PathLike) -> None:
        self.load()
        cgroup = str(cgroup)
        if os.path.isdir(cgroup):
            fd = _cgroup_fd(cgroup)
            try:
                self._detach_all(fd, ZTUNNEL_CGROUP_PROGRAMS)
            finally:
                os.close(fd)
        self.ztunnel_cgroups.discard(cgroup)

    def unload(self) -> None:
        """Unpins everything of this agent (after every pod was removed)."""
        for cgroup in list(self.ztunnel_cgroups):
            self.detach_ztunnel(cgroup)
        self.close()
        if self.agent_dir.exists():
            shutil.rmtree(self.agent_dir)
        release_bpffs(self.bpffs, empty=[self.agent_dir.parent])

    def close(self) -> None:
        for fd in self.prog_fds.values():
            os.close(fd)
        if self.sockhash_fd is not None:
            os.close(self.sockhash_fd)
        self.prog_fds, self.prog_ids, self.sockhash_fd = {}, {}, None


def sockhash_key(address: str) -> bytes:
    """The sockhash's key for an address: 16 bytes, IPv4 as ::ffff:a.b.c.d (as sk_lookup builds it)."""
    ip = ipaddress.ip_address(address)
    return (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed


def socket_cookie(fd: int) -> int:
    """The kernel's cookie of a socket: what a sockhash holding it answers a lookup from user space with."""
    sock = socket.socket(fileno=fd)  # borrowed: detached below, never closed here
    try:
        return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    finally:
        sock.detach()


def _families_taken(listener_fd: int) -> set[int]:
    """The IP versions (4, 6) a listening socket can be handed by sk_lookup."""
    sock = socket.socket(fileno=listener_fd)  # borrowed: detached below, never closed here
    try:
        if sock.family == socket.AF_INET:
            return {4}
        if sock.family != socket.AF_INET6:
            raise RedirectError(f"the ztunnel's inbound listener is not an IP socket ({sock.family!r}); "
                                "is the ztunnel of this shoal version?")
        return {6} if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) else {4, 6}
    finally:
        sock.detach()


def _pod_programs(pod: PodTarget) -> tuple[str, ...]:
    return pod_cgroup_programs(pod.dns_capture, ipv6=pod.ipv6 is not None)


def _ids_by_type(names, prog_ids: dict[str, int], also=()) -> dict[int, set[int]]:
    """attach type -> the ids of `names` attached with it (none, for an attach type of `also` that they lack)."""
    out: dict[int, set[int]] = {attach_type: set() for attach_type in also}
    for name in names:
        out.setdefault(PROGRAMS[name][1], set()).add(prog_ids[name])
    return out


def _replacing(pin: Path) -> Path:
    """Where a pod's new link is pinned before it is renamed over the old (bpffs refuses a name with a dot)."""
    return pin.with_name(pin.name + "-new")


def _safe(uid: str) -> str:
    return uid.replace("/", "_").replace(".", "_")


def check_bcc() -> None:
    """Raises PrerequisiteMissing unless bcc can be imported; without importing it (it stays in the builder)."""
    try:
        found = importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError) as e:
        found, why = False, str(e)
    else:
        why = "no module named 'bcc'"
    if not found:
        raise PrerequisiteMissing("bcc", f"the Python module does not import ({why})",
                                  "install it: apt install python3-bpfcc, and build the venv with "
                                  "--system-site-packages")
