"""`shoal control-plane`: the CA and the config server (gRPC 15012, HTTP 15014)."""

from __future__ import annotations

from pathlib import Path

from shoal.contracts import CONTROL_PLANE_GRPC_PORT, CONTROL_PLANE_HTTP_PORT
from shoal.local.layout import cluster_name


def register(sub) -> None:
    p = sub.add_parser("control-plane", help="run the mesh control plane: CA and config server",
                       description="Serve certificates (Certificates.Sign) and config (Config.Watch) over gRPC, "
                                   "with readiness and Prometheus metrics over HTTP.")
    p.add_argument("--source", choices=("local", "kube"), default="local",
                   help="where config comes from: a local cluster's store, or the Kubernetes API")
    p.add_argument("--cluster", default="default", type=cluster_name, help="local cluster name (with --source local)")
    p.add_argument("--listen", default=f"0.0.0.0:{CONTROL_PLANE_GRPC_PORT}",
                   help=f"gRPC address (default 0.0.0.0:{CONTROL_PLANE_GRPC_PORT})")
    p.add_argument("--http", default=f"0.0.0.0:{CONTROL_PLANE_HTTP_PORT}",
                   help=f"HTTP address for readiness and metrics (default 0.0.0.0:{CONTROL_PLANE_HTTP_PORT})")
    p.add_argument("--ca-cert", type=Path, help="PEM root certificate to sign with (with --ca-key)")
    p.add_argument("--ca-key", type=Path, help="PEM private key of --ca-cert")
    p.add_argument("--cert-ttl", default="24h", help="workload certificate lifetime (default 24h)")
    p.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain (default cluster.local)")
    p.add_argument("--root-namespace", default="istio-system",
                   help="namespace whose policies apply mesh-wide (default istio-system)")
    p.add_argument("--tracing-endpoint", default="",
                   help="mesh-wide: the OTLP/HTTP collector every waypoint sends spans to, e.g. http://collector:4318 "
                        "(default: no tracing)")
    p.add_argument("--tracing-sampling", type=float, default=1.0,
                   help="mesh-wide: percent of new traces the waypoints record (default 1)")
    rotation = p.add_mutually_exclusive_group()
    rotation.add_argument("--rotate-ca", action="store_true",
                          help="begin a root rotation and exit: a new root is trusted at once (bundle, ConfigMap, "
                               "every certificate signed), signs one --cert-ttl (and 5m) later, and the old root "
                               "leaves the bundle when the last certificate it signed has expired; the running "
                               "control plane does each step on time")
    rotation.add_argument("--retire-ca", metavar="FINGERPRINT",
                          help="take a root out of the trust bundle now and exit (an emergency: certificates it "
                               "signed stop verifying; the incoming root: cancels the rotation)")
    rotation.add_argument("--show-roots", action="store_true",
                          help="print the signing root, the trusted roots and the rotation schedule, and exit")
    p.set_defaults(func=main)


def main(args) -> int:
    import os
    import sys

    from control_plane import app
    from shoal import lifecycle

    try:
        settings = app.Settings(source=args.source, cluster=args.cluster, listen=args.listen, http=args.http,
                                ca_cert=args.ca_cert, ca_key=args.ca_key,
                                cert_ttl=app.parse_duration(args.cert_ttl), trust_domain=args.trust_domain,
                                root_namespace=args.root_namespace, tracing_endpoint=args.tracing_endpoint,
                                tracing_sampling=args.tracing_sampling,
                                roots_poll_seconds=float(os.environ.get("SHOAL_CA_RELOAD_SECONDS",
                                                                        app.ROOTS_POLL_SECONDS)))
    except (app.SettingsError, ValueError) as e:
        print(f"shoal: error: {e}", file=sys.stderr)
        return 2
    if args.rotate_ca or args.retire_ca or args.show_roots:
        return app.rotate_roots(settings, args.retire_ca, show=args.show_roots)
    return lifecycle.run(lambda shutdown: app.run(settings, shutdown))
