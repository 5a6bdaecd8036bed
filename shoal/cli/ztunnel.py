"""`shoal ztunnel`: the per-node L4 proxy (HBONE, L4 policy, TCP telemetry)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shoal.contracts import CONTROL_PLANE_GRPC_PORT
from shoal.local.layout import cluster_name, node_ip


def register(subparsers) -> None:
    p = subparsers.add_parser("ztunnel", help="run the per-node L4 proxy (HBONE/mTLS, L4 policy, telemetry)",
                              description=__doc__)
    p.add_argument("--cluster", default="default", type=cluster_name, help="local cluster name (for default paths)")
    p.add_argument("--node", default="node1", help="the node this ztunnel serves (e.g. node1)")
    p.add_argument("--control-plane", default=f"{node_ip(1)}:{CONTROL_PLANE_GRPC_PORT}",
                   help="control plane gRPC address host:port (default: the local cluster's)")
    p.add_argument("--socket", type=Path, help="the node agent's hand-off socket (default: the local cluster's)")
    p.add_argument("--token-file", type=Path, help="the node's bootstrap token (default: the local cluster's)")
    p.add_argument("--ca-bundle", type=Path, help="mesh trust bundle PEM (default: the local cluster's)")
    p.add_argument("--trust-domain", default="cluster.local", help="the mesh's SPIFFE trust domain")
    p.add_argument("--balancing", default="round_robin", choices=("round_robin", "least_connections"),
                   help="how an endpoint of a Service is picked")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds")
    p.add_argument("--drain-seconds", type=float, default=10.0, help="how long SIGTERM lets connections finish")
    p.add_argument("--no-preserve-source-ip", action="store_true",
                   help="connect to apps from the pod's own IP instead of the client's")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from shoal import lifecycle
    from shoal.local.layout import Layout, node_index
    from shoal.tokens import TokenError

    from ztunnel.config import Config
    from ztunnel.main import StartupError, run

    layout = Layout(args.cluster)
    try:
        node = node_index(args.node)
    except ValueError:
        node = None
    if node is None and not (args.socket and args.token_file and args.ca_bundle):
        print(f"shoal: error: --node {args.node!r} is not a local-cluster node; "
              "pass --socket, --token-file and --ca-bundle", file=sys.stderr)
        return 2
    try:
        config = Config(
            cluster=args.cluster, node=args.node, control_plane=args.control_plane,
            socket_path=args.socket or layout.ztunnel_socket(node),
            token_file=args.token_file or layout.node_token(node),
            trust_domain=args.trust_domain, balancing=args.balancing, connect_timeout=args.connect_timeout,
            drain_seconds=args.drain_seconds, preserve_source_ip=not args.no_preserve_source_ip)
    except ValueError as e:
        print(f"shoal: error: {e}", file=sys.stderr)
        return 2
    bundle = args.ca_bundle or layout.ca_bundle

    async def daemon(shutdown):
        try:
            return await run(config, bundle, shutdown)
        except (StartupError, TokenError) as e:  # say what is wrong, exit non-zero
            print(f"shoal: error: {e}", file=sys.stderr)
            return 1

    return lifecycle.run(daemon)
