"""`shoal ingress-gateway run`: the ingress gateway process (the pods an Istio Gateway selects)."""

from __future__ import annotations

from pathlib import Path

from shoal.contracts import CONTROL_PLANE_GRPC_PORT
from shoal.local.layout import cluster_name, node_ip


def register(subparsers) -> None:
    p = subparsers.add_parser("ingress-gateway", help="the ingress gateway: HTTP from outside the mesh, routed in")
    verbs = p.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run the ingress gateway proxy (as the pods an Istio Gateway selects)")
    run.add_argument("--namespace", default="shoal-system", help="its namespace (default: shoal-system)")
    run.add_argument("--service-account", default="shoal-ingressgateway",
                     help="its identity, and what its routes are keyed by (default: shoal-ingressgateway)")
    run.add_argument("--http", type=listen_port, action="append", metavar="PORT[:GATEWAY_PORT]",
                     help="an HTTP listener port; repeat for more (default: 80). With :GATEWAY_PORT it serves the "
                          "Gateways' servers of that port (a pod on 8080 behind its Service's 80: 8080:80)")
    run.add_argument("--https", type=listen_port, action="append", metavar="PORT[:GATEWAY_PORT]",
                     help="an HTTPS listener port, with the TLS credentials its Gateways name; repeat for more "
                          "(default: none); :GATEWAY_PORT as for --http")
    run.add_argument("--listen", default="::", help="the listeners' address (default: ::, both families on one "
                                                       "socket; 0.0.0.0 where there is no IPv6)")
    run.add_argument("--cluster", default="default", type=cluster_name, help="local cluster name (for default paths)")
    run.add_argument("--control-plane", default=f"{node_ip(1)}:{CONTROL_PLANE_GRPC_PORT}",
                     help="control plane gRPC host:port (default: the local cluster's)")
    run.add_argument("--ca-bundle", type=Path, help="mesh trust bundle PEM (default: the local cluster's)")
    run.add_argument("--token-file", type=Path,
                     help="service-account token for the control plane (default: minted in the local cluster)")
    run.add_argument("--trust-domain", default="cluster.local", help="the mesh's SPIFFE trust domain")
    run.set_defaults(func=cmd_run)


def listen_port(text: str) -> tuple[int, int]:
    """PORT or PORT:GATEWAY_PORT -> (listen port, the Gateway's port)."""
    listen, _, served = text.partition(":")
    try:
        pair = (int(listen), int(served or listen))
    except ValueError:
        raise ValueError(f"{text!r}: give PORT or PORT:GATEWAY_PORT, numbers from 1 to 65535") from None
    return pair


def cmd_run(args) -> int:
    from shoal.cli.daemon import run_daemon
    from shoal.tokens import TokenError

    from waypoint.config import Config
    from waypoint.errors import StartupError
    from waypoint.ingress_main import IngressConfig, run

    def config() -> IngressConfig:
        proxy = Config(namespace=args.namespace, name=args.service_account, service_account=args.service_account,
                       cluster=args.cluster, control_plane=args.control_plane, ca_bundle=args.ca_bundle,
                       token_file=args.token_file, trust_domain=args.trust_domain)
        pairs = tuple(args.http or ((80, 80),)) + tuple(args.https or ())
        ports, secure = tuple(p for p, _ in args.http or ((80, 80),)), tuple(p for p, _ in args.https or ())
        bad = [p for pair in pairs for p in pair if not 0 < p < 65536]
        if bad:
            raise ValueError(f"port {bad[0]}: a port is 1 to 65535")
        if set(ports) & set(secure):
            raise ValueError(f"port {sorted(set(ports) & set(secure))[0]} is given to both --http and --https")
        return IngressConfig(proxy, http_ports=ports, https_ports=secure, listen=args.listen,
                             gateway_ports=tuple((p, g) for p, g in pairs if p != g))
    return run_daemon(config, run, (StartupError, TokenError))
