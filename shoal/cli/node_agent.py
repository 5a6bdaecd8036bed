"""`shoal node-agent`: enroll this node's pods in the mesh and redirect their traffic."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shoal.contracts import NODE_AGENT_PORT
from shoal.local.layout import cluster_name

DEFAULT_STATE_DIR = Path("/var/run/shoal/node-agent")
BACKEND_FILE = "iptables-backend"  # in the state dir: the backend the in-pod rules were written with


def register(sub) -> None:
    p = sub.add_parser("node-agent", help="run the node agent: enrollment, traffic redirection, hand-off to the ztunnel",
                       description="Watch the pods of one node, hand the meshed ones to the ztunnel over the "
                                   "hand-off socket, and redirect their traffic with iptables or eBPF. SIGTERM "
                                   "leaves redirection in place; --cleanup removes it.")
    p.add_argument("--source", choices=("local", "kube"), default="local",
                   help="where pods come from: a local cluster's store, or the Kubernetes API")
    p.add_argument("--cluster", default="default", type=cluster_name, help="local cluster name (with --source local)")
    p.add_argument("--node", default=os.environ.get("NODE_NAME"),
                   help="this node's name (node1, ... in a local cluster; default $NODE_NAME)")
    p.add_argument("--redirect", choices=("iptables", "ebpf", "auto"), default="auto",
                   help="how traffic is redirected (default auto: eBPF where it works, else iptables)")
    p.add_argument("--socket", type=Path, help="the hand-off socket (default /var/run/shoal/ztunnel.sock, "
                                               "or the local cluster node's)")
    p.add_argument("--state-dir", type=Path, help=f"where the agent records what it installed "
                                                  f"(default {DEFAULT_STATE_DIR}, or under the local node's dir)")
    p.add_argument("--bpffs", type=Path, default=Path("/sys/fs/bpf"), help="bpffs to pin eBPF objects in")
    p.add_argument("--kubelet-cgroup",
                   help="the cgroup v2 of the process that runs the kubelet's probes, as /proc/<pid>/cgroup shows it "
                        "after 0:: (or its directory under the cgroup2 mount); only its TCP to enrolled pods passes "
                        "their capture as a probe (default system.slice/kubelet.service; in a local cluster, "
                        "shoal/<cluster>/daemon, where shoal's kubelet runs)")
    p.add_argument("--metrics-port", type=int, default=NODE_AGENT_PORT,
                   help=f"metrics (/metrics) and readiness (/healthz/ready) port; 0 disables (default {NODE_AGENT_PORT})")
    p.add_argument("--dns-capture", action="store_true",
                   help="capture every enrolled pod's DNS to the ztunnel's DNS proxy, unless its namespace or "
                        "the pod says shoal.io/dns-capture: \"false\" (default: only where they say \"true\")")
    p.add_argument("--iptables-backend", choices=("auto", "legacy", "nft"), default="auto",
                   help="the iptables backend of every rule the agent writes (in eBPF mode: DNS capture and the "
                        "probe SNAT): auto takes the node's, legacy "
                        "when it holds legacy rules, nft when it holds only nft ones (as Istio detects it), and with "
                        "no rules at all legacy where the kernel takes it")
    p.add_argument("--cni", action=argparse.BooleanOptionalAction, default=None,
                   help="install shoal-cni into the node's CNI chain and serve its socket, so new pods are captured "
                        "before their containers start (default: on with --source kube, off with --source local)")
    p.add_argument("--cni-bin-dir", type=Path, help="the node's CNI bin dir, where shoal-cni is copied "
                                                   "(default /opt/cni/bin)")
    p.add_argument("--cni-conf-dir", type=Path, help="the node's CNI conf dir, whose first conflist gets shoal-cni "
                                                    "chained last (default /etc/cni/net.d)")
    p.add_argument("--cni-socket", type=Path, help="the socket shoal-cni asks (default /var/run/shoal/cni.sock, "
                                                  "or the local cluster node's)")
    p.add_argument("--cni-wait-seconds", type=float, default=60.0,
                   help="how long a shoal-cni ADD or DEL waits for the pod's capture (or its removal) before it "
                        "fails, naming what is missing; the kubelet then retries (default 60)")
    p.add_argument("--kubelet-cgroup-root", default="/",
                   help="the kubelet's cgroupRoot (its kubepods tree is below it), where shoal-cni's ADD finds the "
                        "pod's cgroup (default /)")
    p.add_argument("--cri-socket", help="the container runtime's CRI socket, where pods that started before the "
                                        "agent are looked for before /proc (with --source kube; default: containerd's "
                                        "or CRI-O's, whichever exists; 'none' skips the runtime)")
    p.add_argument("--cleanup", action="store_true",
                   help="remove every redirection and eBPF object this agent installed, then exit")
    p.set_defaults(func=main)


def _paths(args) -> tuple[str, Path, Path]:
    """(agent id, socket, state dir) for the chosen source."""
    if args.source == "local":
        from shoal.local.layout import Layout, node_index
        layout = Layout(args.cluster)
        index = node_index(args.node)
        return (f"{args.cluster}-{args.node}", args.socket or layout.ztunnel_socket(index),
                args.state_dir or layout.node_dir(index) / "node-agent")
    from shoal.handoff import DEFAULT_SOCKET
    return args.node, args.socket or DEFAULT_SOCKET, args.state_dir or DEFAULT_STATE_DIR


def _cni_settings(args, state_dir: Path):
    """Where shoal-cni goes and whom it asks, or None when CNI is off."""
    enabled = args.cni if args.cni is not None else args.source == "kube"
    if not enabled:
        return None
    from node_agent.cni_install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, CniSettings
    if args.cni_socket:
        socket = args.cni_socket
    elif args.source == "local":
        from shoal.local.layout import Layout, node_index
        socket = Layout(args.cluster).node_dir(node_index(args.node)) / "cni.sock"
    else:
        socket = Path("/var/run/shoal/cni.sock")
    return CniSettings(bin_dir=args.cni_bin_dir or DEFAULT_BIN_DIR, conf_dir=args.cni_conf_dir or DEFAULT_CONF_DIR,
                       socket=socket, enrollment_file=socket.with_name("cni-enrollment.json"), state_dir=state_dir)


def _settle_backend(args, capture, state_dir: Path) -> None:
    """--iptables-backend over what was detected; if the backend changed since the last run, the pods'
    rules in the old one are removed (the new ones go in at the first reconcile)."""
    from node_agent.redirect import Ledger
    if args.iptables_backend != "auto":
        capture.use_backend(args.iptables_backend)
    record = state_dir / BACKEND_FILE
    old = record.read_text().strip() if record.exists() else ""
    if old and old != capture.backend:
        for pod in Ledger(state_dir / "pods").pods("iptables").values():
            capture.drop_backend(pod, old)
    state_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(capture.backend + "\n")


def _runtime_sandboxes(args):
    """The CRI lookup of pod sandboxes (cri.RuntimeSandboxes), or None when there is no runtime socket."""
    if args.cri_socket == "none":
        return None
    import time
    from node_agent.cri import RuntimeSandboxes, runtime_socket
    socket = Path(args.cri_socket) if args.cri_socket else runtime_socket()
    return RuntimeSandboxes(socket, time.monotonic) if socket is not None else None


def _kubelet_cgroup(args) -> str:
    """--kubelet-cgroup, or where the kubelet runs: a systemd unit on a node, shoal's daemon in a local cluster."""
    if args.kubelet_cgroup:
        return args.kubelet_cgroup
    if args.source == "local":
        from shoal.local.layout import Layout
        return str(Layout(args.cluster).cgroup_dir / "daemon")  # shoal.local.cluster starts the daemon there
    from node_agent.probes import DEFAULT_KUBELET_CGROUP
    return DEFAULT_KUBELET_CGROUP


def main(args) -> int:
    from node_agent.errors import NodeAgentError
    from shoal import lifecycle, log

    logger = log.get("node_agent")
    if not args.node:
        print("shoal node-agent: --node is required (or set NODE_NAME, e.g. from the downward API)", file=sys.stderr)
        return 2
    try:
        agent_id, socket_path, state_dir = _paths(args)
    except ValueError as e:
        print(f"shoal node-agent: {e}", file=sys.stderr)
        return 2
    from node_agent.agent import AgentConfig, NodeAgent
    from node_agent.hostmounts import join_host_cgroupns, rejoin_host_mounts
    from node_agent.redirect import Ledger, Redirection, choose

    rejoin_host_mounts()
    join_host_cgroupns()

    if args.cleanup:
        return cleanup(args, agent_id, state_dir)
    try:
        capture = choose(args.redirect, agent_id, bpffs=args.bpffs)
    except NodeAgentError as e:
        print(f"shoal node-agent: {e}", file=sys.stderr)
        return 1
    # A restart in another mode first removes what the old mode installed: its rules or
    # programs would otherwise stay in the pods, unknown to the new mode's ledger.
    previous = Ledger(state_dir / "pods").modes() & {"iptables", "ebpf"} - {capture.mode}
    if previous:
        logger.warning("redirect mode changed since the last run; removing the old mode's redirection first",
                       old=sorted(previous), new=capture.mode)
        if cleanup(args, agent_id, state_dir, modes=previous) != 0:
            return 1
    if capture.mode == "iptables":
        try:
            _settle_backend(args, capture, state_dir)
        except NodeAgentError as e:
            print(f"shoal node-agent: {e}", file=sys.stderr)
            return 1
    try:
        redirection = Redirection(capture, state_dir, kubelet_cgroup=_kubelet_cgroup(args),
                                  iptables_backend=args.iptables_backend)
    except NodeAgentError as e:
        print(f"shoal node-agent: {e}", file=sys.stderr)
        return 1

    if args.source == "local":
        from node_agent.sources import LocalSource
        source = LocalSource(args.cluster, args.node)
    else:
        from node_agent.sources import KubeSource
        source = KubeSource(args.node, runtime=_runtime_sandboxes(args))
    config = AgentConfig(node=args.node, socket=socket_path, metrics_port=args.metrics_port,
                         dns_capture=args.dns_capture, cni=_cni_settings(args, state_dir),
                         cni_wait_seconds=args.cni_wait_seconds, kubelet_cgroup_root=args.kubelet_cgroup_root)
    logger.info("node agent starting", node=args.node, mode=capture.mode, socket=str(socket_path),
                state_dir=str(state_dir))

    async def run(shutdown) -> int:
        from shoal.store import StoreError
        agent = NodeAgent(config, redirection, source)
        try:
            await agent.run(shutdown.stopping)
        except (NodeAgentError, StoreError) as e:
            logger.error("node agent failed", error=str(e))
            print(f"shoal node-agent: {e}", file=sys.stderr)
            return 1
        finally:
            redirection.close()
        return 0

    return lifecycle.run(run)


def cleanup(args, agent_id: str, state_dir: Path, modes: set[str] | None = None) -> int:
    """Removes what this agent installed, in whichever modes its ledger and pins show (or in `modes`)."""
    from node_agent.errors import NodeAgentError
    from node_agent.redirect import Ledger, Redirection, choose
    from shoal import log

    logger = log.get("node_agent")
    settings = _cni_settings(args, state_dir) if modes is None else None  # a change of mode keeps shoal-cni
    if settings is not None:
        # First, so that no new sandbox asks an agent that is going away.
        from node_agent.cni_install import remove
        try:
            logger.info("shoal-cni removed", done=remove(settings))
        except OSError as e:
            print(f"shoal node-agent: cleanup of shoal-cni failed: {e}", file=sys.stderr)
            return 1
    (state_dir / BACKEND_FILE).unlink(missing_ok=True)
    if modes is None:
        modes = Ledger(state_dir / "pods").modes() & {"iptables", "ebpf"}
        if (args.bpffs / "shoal" / agent_id).exists():
            modes.add("ebpf")
        modes = modes or {"iptables"}
    for mode in sorted(modes):
        try:
            redirection = Redirection(choose(mode, agent_id, bpffs=args.bpffs), state_dir)
            removed = redirection.cleanup()
            redirection.close()
        except NodeAgentError as e:
            print(f"shoal node-agent: cleanup ({mode}) failed: {e}", file=sys.stderr)
            return 1
        logger.info("cleaned up", mode=mode, pods=removed)
    return 0
