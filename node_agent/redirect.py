"""Redirection of one pod, whichever the mode: the one interface the agent uses.

`Redirection.install(pod)` puts in place, idempotently:
- the capture of the chosen mode (iptables.py or ebpf.py) in the pod;
- the pod's DNS capture when it asks for it, in either mode (dns_capture.py);
- the probe SNAT for the pod's addresses (both families) in the node's netns,
  for the kubelet's cgroup only (probes.py).
Every iptables rule of these is written with one backend (backend.py): the
iptables mode's, or in eBPF mode the node's, detected.
`remove(pod)` takes all of it away, `installed(pod)` asks the kernel.

The ledger (one JSON file per pod under the agent's state dir) records what
was installed where, written before an install and deleted after a removal,
so a restarted agent, or `shoal node-agent --cleanup`, can remove redirection
from pods it no longer hears about (deleted, opted out, or anything else).
In eBPF mode it also records the socket cookie of the pod's inbound listener
per IP version, as the ztunnel handed it over: a pod letting go of an address
leaves its sockhash key alone when the key holds another pod's listener (one
took the address over), after a restart too, before any Ack.

Choosing the mode: `choose("auto")` takes eBPF when bcc imports, kernel headers
are where bcc looks, cgroup v2 is mounted, the agent holds the BPF privilege
and the programs load; otherwise iptables. It logs which and why. Each missing
prerequisite raises (or, for auto, logs) one message naming it and the remedy.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
from pathlib import Path

from shoal import log, transparent

from node_agent import backend, dns_capture, probes
from node_agent.hostmounts import cgroup2_root
from node_agent.errors import NodeAgentError, PrerequisiteMissing
from node_agent.iptables import IptablesRedirector, drop_in_backend
from node_agent.model import PodTarget

logger = log.get("node_agent.redirect")

MODES = ("iptables", "ebpf", "auto")
CAP_SYS_ADMIN, CAP_BPF = 21, 39


class Ledger:
    """What this agent installed, per pod uid, on disk."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def _path(self, uid: str) -> Path:
        return self.dir / f"{uid.replace('/', '_')}.json"

    def record(self, pod: PodTarget, mode: str, listeners: dict[str, int] | None = None) -> None:
        """`listeners`: IP version ("4", "6") -> the socket cookie of the listener steering it (eBPF)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(pod.uid).with_suffix(".tmp")
        tmp.write_text(json.dumps({"mode": mode, "pod": pod.to_json(), "listeners": listeners or {}}))
        os.replace(tmp, self._path(pod.uid))

    def forget(self, uid: str) -> None:
        try:
            self._path(uid).unlink()
        except FileNotFoundError:
            pass

    def modes(self) -> set[str]:
        return {raw.get("mode", "") for raw in self._entries().values()}

    def _entries(self) -> dict[Path, dict]:
        out = {}
        for f in (sorted(self.dir.glob("*.json")) if self.dir.exists() else []):
            try:
                out[f] = json.loads(f.read_text())
            except ValueError:
                continue
        return out

    def pods(self, mode: str | None = None) -> dict[str, PodTarget]:
        """The recorded pods (installed with `mode`, if given)."""
        return {uid: pod for uid, (pod, _) in self.entries(mode).items()}

    def entries(self, mode: str | None = None) -> dict[str, tuple[PodTarget, dict[str, int]]]:
        """uid -> (the recorded pod, its listeners' cookies), of the pods installed with `mode` if given."""
        out = {}
        for f in (sorted(self.dir.glob("*.json")) if self.dir.exists() else []):
            try:
                raw = json.loads(f.read_text())
                pod = PodTarget.from_json(raw["pod"])
                listeners = {str(version): int(cookie) for version, cookie in (raw.get("listeners") or {}).items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                logger.warning("unreadable ledger entry; removing it", file=str(f))
                f.unlink()
                continue
            if mode is None or raw.get("mode") == mode:
                out[pod.uid] = (pod, listeners)
        return out


def _remove_return_path(pod: PodTarget) -> None:
    """The ztunnel's source-IP return path (shoal.transparent, both families and both backends) goes with
    the pod's redirection, so a pod that leaves the mesh while no ztunnel runs keeps nothing of it either."""
    try:
        fd = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # the netns, and everything in it, is gone
    try:
        transparent.remove(fd)
    except (OSError, transparent.TransparentError) as e:
        logger.warning("could not remove the ztunnel's return-path rules", pod=pod.key, error=str(e))
    finally:
        os.close(fd)


class Redirection:
    def __init__(self, capture, state_dir: Path, node_netns: str | None = None,
                 kubelet_cgroup: str = probes.DEFAULT_KUBELET_CGROUP, iptables_backend: str = "auto") -> None:
        self.capture = capture
        self.mode = capture.mode
        self.state_dir = Path(state_dir)
        self.ledger = Ledger(self.state_dir / "pods")
        self.node_netns = node_netns
        chosen = getattr(capture, "backend", None)  # the iptables mode's, settled already
        if chosen not in ("legacy", "nft"):
            chosen = backend.resolve(iptables_backend, node_netns)  # eBPF mode: DNS capture and probe SNAT
        self.tables = backend.writer(chosen)
        self.probes = probes.Probes(kubelet_cgroup, node_netns, tables=self.tables)
        entries = self.ledger.entries()
        self._recorded = {uid: pod for uid, (pod, _) in entries.items()}
        # eBPF: uid -> IP version -> the socket cookie of the pod's listener its keys of that version hold
        self._listeners = {uid: listeners for uid, (_, listeners) in entries.items() if listeners}

    def install(self, pod: PodTarget, *, sync_probes: bool = True) -> None:
        """Idempotent. With sync_probes=False the caller calls `sync_probes()` after a batch."""
        previous = self._recorded.get(pod.uid)
        fresh = previous is None  # nothing of it from this agent (the ledger outlives restarts)
        if previous is not None and self.mode == "ebpf":
            # Before the ledger forgets them: the addresses the pod lost leave the sockhash (its inbound
            # steering), else a pod given one of them next would have its traffic sent to this pod's listener;
            # but not one whose key is another pod's listener already (a new owner acked first).
            lost = set(previous.ips) - set(pod.ips)
            if lost:
                self.capture.forget_addresses(lost, others=self._listeners_of_others(pod.uid))
        self.ledger.record(pod, self.mode, self._listeners.get(pod.uid))
        self._recorded[pod.uid] = pod
        if self.mode == "iptables":  # one -restore per family for both (and a -save unless fresh)
            self.capture.install(pod, also=lambda ipv6: dns_capture.family_rules(pod, ipv6), fresh=fresh)
        else:
            self.capture.install(pod)
            dns_capture.sync(pod, self.tables)  # after the mode's capture: its jump goes ahead of the mode's
        if sync_probes:
            self.sync_probes()

    def remove(self, pod: PodTarget, *, sync_probes: bool = True) -> None:
        if self.mode == "ebpf":  # with the netns gone, the eBPF mode still unpins and forgets its keys,
            self.capture.remove(pod, others=self._listeners_of_others(pod.uid))  # but not another pod's
        else:
            self.capture.remove(pod)
        if self.mode != "iptables":  # the iptables mode's removal takes the DNS capture's chain too
            dns_capture.remove(pod, self.tables)
            # and out of the other backend, where an agent that detected the node's backend differently left it
            drop_in_backend(pod, backend.other(self.tables.name))
        _remove_return_path(pod)
        self.ledger.forget(pod.uid)
        self._recorded.pop(pod.uid, None)
        self._listeners.pop(pod.uid, None)
        if sync_probes:
            self.sync_probes()

    def _listeners_of_others(self, uid: str) -> set[int]:
        """The cookies of the listeners handed over for the recorded pods but `uid`. A key of an address pod
        `uid` lets go of that holds one of them stays (a pod may take an address over, and be acked, before
        the one that lost it is installed again or removed). The others go: they are this pod's, or not known
        to be another's (its Ack still to come), and until the new owner's Ack its inbound at that address
        is dropped, not steered to a listener of the pod that left it."""
        return {cookie for other, listeners in self._listeners.items() if other != uid for cookie in listeners.values()}

    def installed(self, pod: PodTarget) -> bool:
        if not os.path.exists(pod.netns):
            return False
        if pod.uid not in self._recorded:
            return False
        if self.mode == "iptables":
            captured = self.capture.installed(pod, also=lambda ipv6: dns_capture.family_rules(pod, ipv6))
        else:
            captured = self.capture.installed(pod) and dns_capture.installed(pod, self.tables)
        return captured and set(pod.ips) <= self.probes.covered()

    def recorded(self) -> dict[str, PodTarget]:
        return dict(self._recorded)

    def set_inbound_listener(self, pod: PodTarget, fd: int) -> None:
        steered = self.capture.set_inbound_listener(pod, fd)
        if self.mode != "ebpf" or pod.uid not in self._recorded:
            return  # (an Ack of a pod removed since: nothing of it to record)
        from node_agent.ebpf import socket_cookie
        cookie = socket_cookie(fd)
        listeners = dict(self._listeners.get(pod.uid, {}))
        listeners.update({str(ipaddress.ip_address(address).version): cookie for address in steered})
        if listeners != self._listeners.get(pod.uid):  # written when the ztunnel hands over a new listener
            self._listeners[pod.uid] = listeners
            self.ledger.record(self._recorded[pod.uid], self.mode, listeners)

    @property
    def _ztunnel_file(self) -> Path:
        return self.state_dir / "ztunnel-cgroups"

    def ztunnel_cgroups(self) -> list[str]:
        try:
            return [line for line in self._ztunnel_file.read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def attach_ztunnel(self, cgroup) -> None:
        """eBPF: the ztunnel's cgroup gets the SO_ORIGINAL_DST programs (recorded for cleanup)."""
        if self.mode != "ebpf":
            return
        known = self.ztunnel_cgroups()
        if str(cgroup) not in known:
            # The cgroups of ztunnels gone since (each restart is a new pod) are dropped from the record.
            kept = [c for c in known if os.path.isdir(c)]
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._ztunnel_file.write_text("".join(f"{c}\n" for c in [*kept, str(cgroup)]))
        self.capture.attach_ztunnel(cgroup)

    def cleanup(self) -> list[str]:
        """Removes redirection from every pod in the ledger, and the agent's own state; returns their keys."""
        removed = []
        for pod in self.ledger.pods(self.mode).values():
            try:
                self.remove(pod)
            except NodeAgentError as e:
                logger.warning("could not remove redirection; dropping it from the ledger", pod=pod.key, error=str(e))
                self.ledger.forget(pod.uid)
                self._recorded.pop(pod.uid, None)
            removed.append(pod.key)
        probes.remove(self.node_netns)
        for cgroup in self.ztunnel_cgroups():
            self.capture.detach_ztunnel(cgroup)
        self._ztunnel_file.unlink(missing_ok=True)
        self.capture.unload()
        for directory in (self.ledger.dir, self.state_dir):
            try:
                directory.rmdir()
            except OSError:
                pass
        return removed

    def sync_probes(self) -> None:
        """The node's probe SNAT covers exactly the recorded pods."""
        self.probes.sync([ip for pod in self._recorded.values() for ip in pod.ips])

    def probes_stale(self) -> bool:
        """Must the probe SNAT be written again (not yet by this process, or the kubelet's cgroup is new)?"""
        return bool(self._recorded) and self.probes.stale()

    def close(self) -> None:
        self.capture.close()


# -- prerequisites and the choice of mode ---------------------------------------


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_ebpf(cgroup_root: Path | None = None) -> None:
    """Raises PrerequisiteMissing for the first thing the eBPF mode lacks."""
    from node_agent.ebpf import check_bcc
    check_bcc()
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not build.exists():
        raise PrerequisiteMissing("kernel headers", f"{build} does not exist",
                                  "install linux-headers for this kernel (on Debian: apt install linux-headers-amd64 "
                                  "and link them, see scripts/setup.sh); in a DaemonSet, mount /lib/modules and /usr/src")
    caps = _capabilities()
    if not (caps >> CAP_SYS_ADMIN) & 1 and not (caps >> CAP_BPF) & 1:
        raise PrerequisiteMissing("BPF privilege", "the agent holds neither CAP_BPF nor CAP_SYS_ADMIN",
                                  "run the node agent as root or privileged")
    cgroup_root = cgroup_root or cgroup2_root()
    if cgroup_root is None or not (cgroup_root / "cgroup.controllers").exists():
        where = f"at {cgroup_root}" if cgroup_root else "mounted (see /proc/self/mounts)"
        raise PrerequisiteMissing("cgroup v2", f"no cgroup2 filesystem {where}",
                                  "mount cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup), mount the host's "
                                  "/sys/fs/cgroup into the agent, or use --redirect iptables")


def choose(mode: str, agent_id: str, *, bpffs: Path | None = None, cgroup_root: Path | None = None):
    """The capture backend for `mode`, loaded; for auto, eBPF if it works here, else iptables."""
    if mode not in MODES:
        raise NodeAgentError(f"unknown redirect mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("ebpf", "auto"):
        try:
            check_ebpf(cgroup_root)
            from node_agent.ebpf import BPFFS, EbpfRedirector
            capture = EbpfRedirector(agent_id, bpffs or BPFFS)
            capture.load()
            if mode == "auto":
                logger.info("redirect mode chosen", mode="ebpf", why="bcc, kernel headers, cgroup v2 and BPF privilege present; programs loaded")
            return capture
        except NodeAgentError as e:
            if mode == "ebpf":
                raise
            logger.warning("redirect mode chosen", mode="iptables", why=f"eBPF unavailable: {e}")
    capture = IptablesRedirector()
    capture.load()
    return capture
