"""Bringing a local cluster up and taking it down.

`up` is idempotent: the network, the store, the daemon and the system pods
are each checked before they are made. `down` finds what to remove by name
(netns prefix, cgroup tree, /etc/netns entries, the run directory) rather
than from any record, so it also cleans up after a crash or a half-made `up`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shoal import log, netns, tokens as service_account_tokens
from shoal.local import components, containerd_down, network, runtime_containerd
from shoal.local.errors import ClusterError
from shoal.local.kubelet import cgroup_pids, remove_cgroup, remove_etc_netns
from shoal.local.layout import (IP_FAMILIES, IPV6, MAX_NODES, Layout, families, node_ips, node_name, pod_cidr,
                                pod_cidr_v6, service_ranges)
from shoal.local.services import pod_ready

logger = log.get("shoal.local")

Progress = Callable[[str], None]
READY_TIMEOUT = 180.0
REQUIRED_TOOLS = ("ip", "iptables-legacy", "iptables-legacy-restore")


@dataclass(frozen=True)
class ClusterConfig:
    nodes: int
    redirect: str
    ip_family: str = "ipv4"  # ipv4, dual or ipv6 (a cluster.json from before --ip-family is ipv4)

    @classmethod
    def read(cls, layout: Layout) -> "ClusterConfig | None":
        path = layout.run_dir / "cluster.json"
        if not path.exists():
            return None
        fields = json.loads(path.read_text())
        return cls(fields["nodes"], fields["redirect"], fields.get("ipFamily", "ipv4"))

    def write(self, layout: Layout) -> None:
        (layout.run_dir / "cluster.json").write_text(json.dumps({"nodes": self.nodes, "redirect": self.redirect,
                                                                 "ipFamily": self.ip_family}))


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ClusterError("shoal local needs root: it creates network namespaces, veths and cgroups (try sudo)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise ClusterError(f"missing tools: {', '.join(missing)}; run `make setup` (apt install iproute2 iptables)")
    from shoal.local.layout import CGROUP_ROOT

    if not (CGROUP_ROOT / "cgroup.procs").exists():
        raise ClusterError(f"no cgroup v2 hierarchy at {CGROUP_ROOT}; mount one there or set SHOAL_CGROUP_ROOT")


def daemon_pid(layout: Layout) -> int | None:
    try:
        pid = int(layout.daemon_pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    return pid if b"shoal.local.daemon" in cmdline else None


def up(layout: Layout, nodes: int, redirect: str, progress: Progress = print, ip_family: str = "ipv4") -> list[str]:
    """Brings the cluster to its running state; returns what it had to start (empty when nothing)."""
    check_prerequisites()
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes must be between 1 and {MAX_NODES}")
    if ip_family not in IP_FAMILIES:
        raise ClusterError(f"--ip-family {ip_family!r} is not one of {', '.join(IP_FAMILIES)}")
    current = ClusterConfig.read(layout)
    if current and current.nodes != nodes:
        raise ClusterError(f"cluster {layout.cluster!r} is up with {current.nodes} nodes; "
                           f"run `shoal local down --cluster {layout.cluster}` first to change that")
    if current and current.redirect != redirect:
        raise ClusterError(f"cluster {layout.cluster!r} is up with --redirect {current.redirect}; "
                           f"run `shoal local down --cluster {layout.cluster}` first to change that")
    if current and current.ip_family != ip_family:
        raise ClusterError(f"cluster {layout.cluster!r} is up with --ip-family {current.ip_family}; "
                           f"run `shoal local down --cluster {layout.cluster}` first to change that")
    started: list[str] = []
    store = layout.store()
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    store.init(service_ranges(ip_family))
    ClusterConfig(nodes, redirect, ip_family).write(layout)

    if not netns.exists(layout.underlay_netns):
        started.append("underlay network")
    network.ensure_underlay(layout, ip_family)
    for node in range(1, nodes + 1):
        if not netns.exists(layout.node_netns(node)):
            progress(f"creating {node_name(node)} ({', '.join(node_ips(node, ip_family))}, "
                     f"pods {', '.join(_pod_cidrs(node, ip_family)['podCIDRs'])})")
            started.append(node_name(node))
        network.ensure_node(layout, node, nodes, ip_family)
        layout.node_dir(node).mkdir(parents=True, exist_ok=True)
    started += runtime_containerd.ensure(layout, nodes, progress)  # --runtime containerd: each node's own

    _write_tokens(layout, nodes)
    base = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        for name in ("default", components.SYSTEM_NAMESPACE)
    ] + [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": node_name(i), "labels": {"kubernetes.io/hostname": node_name(i)}},
         "spec": _pod_cidrs(i, ip_family),
         "status": {"addresses": [*({"type": "InternalIP", "address": ip} for ip in node_ips(i, ip_family)),
                                  {"type": "Hostname", "address": node_name(i)}]}}
        for i in range(1, nodes + 1)
    ] + components.system_services()
    for obj in base:
        if store.get(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) is None:
            store.apply(obj)

    if daemon_pid(layout) is None:
        progress("starting the local cluster daemon (scheduler, kubelets, kube-proxy)")
        _start_daemon(layout)
        started.append("daemon")

    settings = components.Settings(nodes=nodes, redirect=redirect)
    system = components.not_replaced(components.system_pods(layout, settings), store.list("Pod")[0])
    for pod in system:
        if store.get("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]) is None:
            started.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
    if system:
        store.apply_many(system)
        wait_ready(layout, [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in system], progress)
    return started


def _pod_cidrs(node: int, ip_family: str) -> dict:
    """A Node's spec.podCIDR and podCIDRs, primary family first, as the node IPAM controller sets them."""
    cidrs = [str(pod_cidr_v6(node)) if family == IPV6 else str(pod_cidr(node)) for family in families(ip_family)]
    return {"podCIDR": cidrs[0], "podCIDRs": cidrs}


def _write_tokens(layout: Layout, nodes: int) -> None:
    """A bootstrap token per node: the ztunnel's credential to the control plane here; and the key of the
    service-account tokens, which the ingress gateway reads when it starts: made by the control plane's first
    start only, it was not there yet for the gateway of a new cluster, which exited and was restarted."""
    service_account_tokens.token_key(layout.run_dir, create=True)
    tokens_path = layout.bootstrap_tokens
    tokens = json.loads(tokens_path.read_text()) if tokens_path.exists() else {}
    by_node = {v: k for k, v in tokens.items()}
    for node in range(1, nodes + 1):
        token_file = layout.node_token(node)
        token = by_node.get(node_name(node))
        if token is None:
            token = secrets.token_hex(24)
            tokens[token] = node_name(node)
        if not token_file.exists():
            token_file.write_text(token)
            token_file.chmod(0o600)
    tokens_path.write_text(json.dumps(tokens))
    tokens_path.chmod(0o600)


def _start_daemon(layout: Layout) -> None:
    cgroup = layout.cgroup_dir / "daemon"
    cgroup.mkdir(parents=True, exist_ok=True)
    log_file = open(layout.logs_dir / "daemon.log", "ab")
    procs = str(cgroup / "cgroup.procs")

    def preexec():
        os.setsid()
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    subprocess.Popen(
        [sys.executable, "-m", "shoal.local.daemon", "--cluster", layout.cluster],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, preexec_fn=preexec, close_fds=True,
    )
    log_file.close()
    deadline = time.monotonic() + 15
    while daemon_pid(layout) is None:
        if time.monotonic() > deadline:
            tail = (layout.logs_dir / "daemon.log").read_text()[-2000:]
            raise ClusterError(f"the local cluster daemon did not start; its log ends:\n{tail}")
        time.sleep(0.05)


def wait_ready(layout: Layout, pods: list[tuple[str, str]], progress: Progress = print,
               timeout: float = READY_TIMEOUT) -> None:
    store = layout.store()
    deadline = time.monotonic() + timeout
    pending = set(pods)
    while pending:
        for key in sorted(pending):
            pod = store.get("Pod", *key)
            if pod is not None and pod_ready(pod):
                pending.discard(key)
                progress(f"  ready: {key[0]}/{key[1]}")
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{ns}/{n}" for ns, n in sorted(pending))
            raise ClusterError(f"not ready after {timeout:.0f}s: {names}; see `shoal local logs -n NS NAME`"
                               f" --cluster {layout.cluster}")
        time.sleep(0.1)


def down(layout: Layout, progress: Progress = print) -> list[str]:
    """Removes everything the cluster made; returns what it removed.

    Raises `ClusterError` when a part's cleanup failed or anything of the
    cluster is left afterwards (`leftovers`), after removing all it could.
    """
    check_prerequisites()
    removed: list[str] = []
    failures: list[str] = []
    pid = daemon_pid(layout)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while daemon_pid(layout) and time.monotonic() < deadline:
            time.sleep(0.05)
        removed.append("daemon")
    for cleanup in components.CLEANUPS:
        try:
            cleanup(layout)
        except Exception as e:  # one part's cleanup must not stop the rest; reported at the end
            failures.append(f"{cleanup.__name__}: {e}")
    if layout.cgroup_dir.exists():
        pids = sum(len(cgroup_pids(p)) for p in [layout.cgroup_dir, *layout.cgroup_dir.rglob("*")] if p.is_dir())
        try:
            remove_cgroup(layout.cgroup_dir)
            removed.append(f"cgroups ({pids} processes)")
        except Exception as e:  # a process that would not die: said at the end, with the rest
            failures.append(f"removing cgroup {layout.cgroup_dir}: {e}")
    try:
        layout.cgroup_dir.parent.rmdir()  # the shared shoal/ level, once no cluster is left in it
    except OSError:
        pass
    names = netns.names(layout.prefix)
    for name in names:
        netns.remove(name)
        remove_etc_netns(name)
    for stale in Path("/etc/netns").glob(f"{layout.prefix}*") if Path("/etc/netns").exists() else []:
        remove_etc_netns(stale.name)
    try:
        Path("/etc/netns").rmdir()  # only when empty: it may hold other tools' entries
    except OSError:
        pass
    if names:
        removed.append(f"{len(names)} network namespaces")
    if layout.run_dir.exists():
        try:
            shutil.rmtree(layout.run_dir)
            removed.append(str(layout.run_dir))
        except OSError as e:
            failures.append(f"removing {layout.run_dir}: {e}")
    left = leftovers(layout)
    if failures or left:
        lines = [*(f"failed: {f}" for f in failures), *(f"left: {item}" for item in left)]
        raise ClusterError(f"cluster {layout.cluster!r} was not removed whole"
                           + (f" (removed {', '.join(removed)})" if removed else "") + ":\n"
                           + "\n".join(f"  - {line}" for line in lines)
                           + f"\nrun `shoal local down --cluster {layout.cluster}` again; what it still cannot "
                             "remove is listed above, to remove by hand")
    return removed


def leftovers(layout: Layout) -> list[str]:
    """What of the cluster still exists: a running daemon, network namespaces, /etc/netns entries,
    its cgroup tree, its run directory, its agents' pinned eBPF objects."""
    left = []
    pid = daemon_pid(layout)
    if pid:
        left.append(f"the cluster daemon (pid {pid})")
    names = netns.names(layout.prefix)
    if names:
        left.append(f"network namespaces {', '.join(sorted(names))}")
    etc = Path("/etc/netns")
    stale = sorted(p.name for p in etc.glob(f"{layout.prefix}*")) if etc.is_dir() else []
    if stale:
        left.append(f"/etc/netns entries {', '.join(stale)}")
    if layout.cgroup_dir.exists():
        left.append(f"cgroup {layout.cgroup_dir}")
    if layout.run_dir.exists():
        left.append(f"run directory {layout.run_dir}")
    pins = layout.bpf_pins()
    if pins:
        left.append(f"pinned eBPF objects {', '.join(map(str, pins))}")
    left += containerd_down.leftovers(layout)  # --runtime containerd: its processes, mounts, v1 cgroups
    return left
