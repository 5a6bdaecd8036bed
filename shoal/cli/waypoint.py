"""`shoal waypoint`: run the per-namespace L7 proxy, or declare one (like `istioctl waypoint`).

    shoal waypoint apply -n NS [--name waypoint] [--for service|workload|all] [--enroll-namespace] [--access-log]
    shoal waypoint delete -n NS [--name waypoint]
    shoal waypoint list [-n NS]
    shoal waypoint config -n NS [--name waypoint]              (its config dump)
    shoal waypoint run --namespace NS --name NAME [...]     (the proxy process; the control plane starts it)

`apply` writes a Gateway with `gatewayClassName: shoal-waypoint`; the control
plane then creates its Deployment and Service. With `--enroll-namespace` the
namespace is also labelled `shoal.io/use-waypoint: NAME`, so its services
use the waypoint. A waypoint writes no access log unless asked for, as Istio's:
`--access-log` annotates its Gateway `shoal.io/access-log: "true"`, and the
control plane then starts it with `run --access-log on`.

`apply`, `delete` and `list` act on a local cluster (`--cluster NAME`, default
`default`) or on Kubernetes (`--kubeconfig PATH`, `--context NAME`, or, with no
`--cluster`, `$KUBECONFIG` or a pod's service account).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shoal.contracts import (
    ADMIN_PORT, CONTROL_PLANE_GRPC_PORT, GATEWAY_NAME_LABEL, HBONE_PORT, ISTIO_WAYPOINT_FOR, USE_WAYPOINT,
    WAYPOINT_ACCESS_LOG, WAYPOINT_CLASS, WAYPOINT_CLASSES,
)
from shoal.cli import context
from shoal.kube_mesh import add_target_arguments
from shoal.local.layout import cluster_name, node_ip

GATEWAY_API = "gateway.networking.k8s.io/v1"


def register(subparsers) -> None:
    p = subparsers.add_parser("waypoint", help="run or declare a waypoint (the per-namespace L7 proxy)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    apply = verbs.add_parser("apply", help="declare a waypoint Gateway in a namespace")
    apply.add_argument("-n", "--namespace", required=True, help="the namespace the waypoint serves")
    apply.add_argument("--name", default="waypoint", help="the waypoint Gateway's name")
    apply.add_argument("--for", dest="traffic", default="service", choices=("service", "workload", "all", "none"),
                       help=f"what traffic the waypoint serves (label {ISTIO_WAYPOINT_FOR})")
    apply.add_argument("--enroll-namespace", action="store_true",
                       help=f"also label the namespace {USE_WAYPOINT}=NAME")
    apply.add_argument("--access-log", action="store_true",
                       help=f"the waypoint writes a line per request (annotation {WAYPOINT_ACCESS_LOG}; "
                            "default: off, as Istio's)")
    apply.add_argument("--cluster", type=cluster_name, help="a local cluster (default: $SHOAL_CLUSTER, else the only cluster up, else default)")
    add_target_arguments(apply)
    apply.set_defaults(func=_on_either(cmd_apply, kube_apply))

    delete = verbs.add_parser("delete", help="remove a waypoint Gateway (its Deployment and Service go with it)")
    delete.add_argument("-n", "--namespace", required=True, help="the waypoint's namespace")
    delete.add_argument("--name", default="waypoint", help="the waypoint Gateway's name")
    delete.add_argument("--cluster", type=cluster_name, help="a local cluster (default: $SHOAL_CLUSTER, else the only cluster up, else default)")
    add_target_arguments(delete)
    delete.set_defaults(func=_on_either(cmd_delete, kube_delete))

    listing = verbs.add_parser("list", help="list waypoint Gateways")
    listing.add_argument("-n", "--namespace", help="only this namespace (default: every namespace)")
    listing.add_argument("--cluster", type=cluster_name, help="a local cluster (default: $SHOAL_CLUSTER, else the only cluster up, else default)")
    add_target_arguments(listing)
    listing.set_defaults(func=_on_either(cmd_list, kube_list))

    dump = verbs.add_parser("config", help="a waypoint's config dump: services, route tables, policies, certificate")
    dump.add_argument("-n", "--namespace", required=True, help="the waypoint's namespace")
    dump.add_argument("--name", default="waypoint", help="the waypoint Gateway's name")
    dump.add_argument("--cluster", type=cluster_name, help="a local cluster (default: $SHOAL_CLUSTER, else the only cluster up, else default)")
    dump.set_defaults(func=cmd_config)

    run = verbs.add_parser("run", help="run the waypoint proxy (started by the control plane's Deployment)")
    run.add_argument("--namespace", required=True, help="the waypoint Gateway's namespace")
    run.add_argument("--name", required=True, help="the waypoint Gateway's name")
    run.add_argument("--service-account", default="", help="its identity (default: the Gateway's name)")
    run.add_argument("--cluster", default="default", type=cluster_name, help="local cluster name (for default paths)")
    run.add_argument("--control-plane", default=f"{node_ip(1)}:{CONTROL_PLANE_GRPC_PORT}",
                     help="control plane gRPC host:port (default: the local cluster's)")
    run.add_argument("--ca-bundle", type=Path, help="mesh trust bundle PEM (default: the local cluster's)")
    run.add_argument("--token-file", type=Path,
                     help="service-account token for the control plane (default: minted in the local cluster)")
    run.add_argument("--trust-domain", default="cluster.local", help="the mesh's SPIFFE trust domain")
    run.add_argument("--connect-timeout", type=float, default=5.0, help="seconds")
    run.add_argument("--drain-seconds", type=float, default=5.0, help="how long SIGTERM lets requests finish")
    run.add_argument("--tracing-endpoint", default="", help="send spans over OTLP/HTTP to this collector, e.g. "
                                                            "http://collector:4318 (default: no tracing)")
    run.add_argument("--tracing-sampling", type=float, default=1.0,
                     help="percent of new traces to record; a caller's sampled flag wins")
    run.add_argument("--access-log", choices=("on", "off"), default="off",
                     help="a line per request and connection on stderr (off by default, as Istio's waypoint: "
                          "building and writing the line is a tenth of the waypoint's CPU)")
    run.set_defaults(func=cmd_run)


def _on_either(local, kube):
    """The command against a local cluster's store, or against Kubernetes (shoal.kube_mesh.on_kubernetes)."""
    def run(args) -> int:
        from shoal import kube_mesh
        from shoal.install import InstallError
        try:
            if kube_mesh.on_kubernetes(args):
                return kube(args, kube_mesh.connect(args))
        except InstallError as e:
            print(f"shoal: error: {e}", file=sys.stderr)
            return 1
        context.resolve(args)   # --cluster, $SHOAL_CLUSTER, or the only cluster up
        return local(args)
    return run


def gateway(namespace: str, name: str, traffic: str = "service", access_log: bool = False) -> dict:
    metadata = {"name": name, "namespace": namespace, "labels": {ISTIO_WAYPOINT_FOR: traffic}}
    if access_log:
        metadata["annotations"] = {WAYPOINT_ACCESS_LOG: "true"}
    return {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": metadata,
            "spec": {"gatewayClassName": WAYPOINT_CLASS,
                     "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}]}}


def _store(cluster: str):
    from shoal.local.layout import Layout

    store = Layout(cluster).store()
    if not store.exists():
        print(f"shoal: error: cluster {cluster!r} is not up; run `shoal local up --cluster {cluster}`",
              file=sys.stderr)
        return None
    return store


def cmd_apply(args) -> int:
    store = _store(args.cluster)
    if store is None:
        return 1
    if store.get("Namespace", None, args.namespace) is None:
        print(f"shoal: error: namespace {args.namespace!r} does not exist; create it first", file=sys.stderr)
        return 1
    existing = store.get("Gateway", args.namespace, args.name)
    if existing is not None and (existing.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES:
        print(f"shoal: error: Gateway {args.namespace}/{args.name} exists and is not a waypoint; "
              "choose another --name", file=sys.stderr)
        return 1
    from shoal.local.merge import three_way

    # Merged as `shoal local apply` merges, so labels added by hand to the Gateway survive a re-apply.
    store.apply_many([gateway(args.namespace, args.name, args.traffic, args.access_log)], merge=three_way)
    print(f"waypoint {args.namespace}/{args.name} applied")
    if args.enroll_namespace:
        store.patch_metadata("Namespace", None, args.namespace, labels={USE_WAYPOINT: args.name})
        print(f"namespace {args.namespace} labelled {USE_WAYPOINT}={args.name}")
    return 0


def cmd_delete(args) -> int:
    store = _store(args.cluster)
    if store is None:
        return 1
    existing = store.get("Gateway", args.namespace, args.name)
    if existing is None or (existing.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES:
        print(f"shoal: error: no waypoint {args.namespace}/{args.name}", file=sys.stderr)
        return 1
    store.delete("Gateway", args.namespace, args.name)
    print(f"waypoint {args.namespace}/{args.name} deleted")
    return 0


def cmd_list(args) -> int:
    store = _store(args.cluster)
    if store is None:
        return 1
    gateways = [g for g in store.list("Gateway", args.namespace)[0]
                if (g.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES]
    if not gateways:
        print("no waypoints" + (f" in namespace {args.namespace}" if args.namespace else ""))
        return 0
    print_waypoints(gateways, lambda meta: [p for p in store.list("Pod", meta["namespace"])[0]
                                            if (p["metadata"].get("labels") or {}).get(GATEWAY_NAME_LABEL)
                                            == meta["name"]])
    return 0


def print_waypoints(gateways: list[dict], pods_of) -> None:
    """The NAMESPACE NAME FOR READY table; `pods_of(metadata)` gives a waypoint's pods."""
    rows = [("NAMESPACE", "NAME", "FOR", "READY")]
    for g in gateways:
        meta = g["metadata"]
        pods = pods_of(meta)
        ready = sum(1 for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                           for c in (p.get("status") or {}).get("conditions") or []))
        rows.append((meta["namespace"], meta["name"], (meta.get("labels") or {}).get(ISTIO_WAYPOINT_FOR,
                                                                                      "service"),
                     f"{ready}/{len(pods)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def kube_apply(args, cluster) -> int:
    from shoal import kube_mesh

    if not kube_mesh.namespace_exists(cluster, args.namespace):
        print(f"shoal: error: namespace {args.namespace!r} does not exist; create it first", file=sys.stderr)
        return 1
    existing = kube_mesh.get_gateway(cluster, args.namespace, args.name)
    if existing is not None and not kube_mesh.is_waypoint(existing):
        print(f"shoal: error: Gateway {args.namespace}/{args.name} exists and is not a waypoint; "
              "choose another --name", file=sys.stderr)
        return 1
    kube_mesh.apply_gateway(cluster, gateway(args.namespace, args.name, args.traffic, args.access_log))
    print(f"waypoint {args.namespace}/{args.name} applied")
    if args.enroll_namespace:
        kube_mesh.label_namespace(cluster, args.namespace, args.name)
        print(f"namespace {args.namespace} labelled {USE_WAYPOINT}={args.name}")
    return 0


def kube_delete(args, cluster) -> int:
    from shoal import kube_mesh

    if not kube_mesh.is_waypoint(kube_mesh.get_gateway(cluster, args.namespace, args.name)):
        print(f"shoal: error: no waypoint {args.namespace}/{args.name}", file=sys.stderr)
        return 1
    kube_mesh.delete_gateway(cluster, args.namespace, args.name)
    print(f"waypoint {args.namespace}/{args.name} deleted")
    return 0


def kube_list(args, cluster) -> int:
    from shoal import kube_mesh

    gateways = kube_mesh.waypoints(cluster, args.namespace)
    if not gateways:
        print("no waypoints" + (f" in namespace {args.namespace}" if args.namespace else ""))
        return 0
    print_waypoints(gateways, lambda meta: kube_mesh.waypoint_pods(cluster, meta["namespace"], meta["name"]))
    return 0


def cmd_config(args) -> int:
    """The waypoint pod's /config_dump (127.0.0.1:15000 inside its netns)."""
    import json
    import urllib.request

    from shoal import netns

    context.resolve(args)
    store = _store(args.cluster)
    if store is None:
        return 1
    pods = [p for p in store.list("Pod", args.namespace)[0]
            if (p["metadata"].get("labels") or {}).get(GATEWAY_NAME_LABEL) == args.name
            and ((p.get("status") or {}).get("shoal") or {}).get("netns")]
    if not pods:
        print(f"shoal: error: no running pod for waypoint {args.namespace}/{args.name}; "
              "check `shoal waypoint list` and the control plane's log", file=sys.stderr)
        return 1
    name = pods[0]["status"]["shoal"]["netns"]  # the netns path (on containerd, not under /run/netns)

    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/config_dump", timeout=5) as response:
            return json.loads(response.read())
    try:
        dump = netns.run_in(name, get)
    except OSError as e:
        print(f"shoal: error: the waypoint {args.namespace}/{args.name} does not answer on {ADMIN_PORT}: {e}",
              file=sys.stderr)
        return 1
    print(json.dumps(dump, indent=2))
    return 0


def cmd_run(args) -> int:
    from shoal import log
    from shoal.cli.daemon import run_daemon
    from shoal.tokens import TokenError

    from waypoint.config import Config
    from waypoint.errors import StartupError
    from waypoint.main import run

    def config() -> Config:
        return Config(namespace=args.namespace, name=args.name, service_account=args.service_account,
                      cluster=args.cluster, control_plane=args.control_plane, ca_bundle=args.ca_bundle,
                      token_file=args.token_file, trust_domain=args.trust_domain,
                      connect_timeout=args.connect_timeout, drain_seconds=args.drain_seconds,
                      tracing_endpoint=args.tracing_endpoint, tracing_sampling=args.tracing_sampling)
    log.set_access_log(args.access_log == "on")   # the process's, so here and not in waypoint.main
    return run_daemon(config, run, (StartupError, TokenError))
