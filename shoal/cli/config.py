"""`shoal config workloads|services|policies|certs|all`: what a ztunnel knows, from its admin dump.

In a local cluster the ztunnel's admin port (15000) listens on 127.0.0.1 of
its node's netns, so the request is made from inside that netns. On
Kubernetes (`--kubeconfig`, `--context`, or with no `--cluster` `$KUBECONFIG`
or a pod's service account) it is reached through the API server's
port-forward to the ztunnel pod of `--node`.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from shoal.contracts import ADMIN_PORT
from shoal.cli import context
from shoal.kube_mesh import add_target_arguments
from shoal.local.layout import cluster_name

VIEWS = ("workloads", "services", "policies", "certs", "all")


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="show a ztunnel's config (workloads, services, policies, certs)",
                              description=__doc__)
    p.add_argument("view", choices=VIEWS, help="what to show")
    p.add_argument("--node", help="node number or name (1, node1; default 1) in a local cluster; "
                                  "the node's name on Kubernetes (required there)")
    p.add_argument("--cluster", type=cluster_name, help="local cluster name (default: $SHOAL_CLUSTER, else the only "
                                                        "cluster up, else default)")
    add_target_arguments(p)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--port", type=int, default=ADMIN_PORT, help=argparse.SUPPRESS)
    p.set_defaults(func=main)


def fetch_dump(netns_name: str | None, port: int = ADMIN_PORT, timeout: float = 5.0) -> dict:
    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config_dump", timeout=timeout) as response:
            return json.loads(response.read())
    if netns_name is None:
        return get()
    from shoal import netns
    return netns.run_in(netns_name, get)


def _rows(view: str, dump: dict) -> tuple[list[str], list[list[str]]]:
    if view == "workloads":
        return (["NAMESPACE", "NAME", "IPS", "NODE", "PROTOCOL", "IDENTITY SA", "WAYPOINT"],
                [[w["namespace"], w["name"], ",".join(w["ips"]), w["node"], w["protocol"], w["service_account"],
                  f"{w['waypoint']['namespace']}/{w['waypoint']['name']}" if w.get("waypoint") else "-"]
                 for w in dump["workloads"]])
    if view == "services":
        return (["HOSTNAME", "VIPS", "PORTS", "ENDPOINTS", "WAYPOINT"],
                [[s["hostname"], ",".join(s["vips"]), ",".join(str(p["port"]) for p in s["ports"]),
                  str(len(s["endpoints"])),
                  f"{s['waypoint']['namespace']}/{s['waypoint']['name']}" if s.get("waypoint") else "-"]
                 for s in dump["services"]])
    if view == "policies":
        rows = [[p["namespace"], p["name"], "Authorization", p["scope"], p["action"], str(len(p["rules"]))]
                for p in dump["policies"]]
        rows += [[p["namespace"], p["name"], "PeerAuthentication", p["scope"], p["mode"], "-"]
                 for p in dump["peer_authentications"]]
        return ["NAMESPACE", "NAME", "KIND", "SCOPE", "ACTION/MODE", "RULES"], rows
    return (["IDENTITY", "STATE", "NOT AFTER", "RENEW AT", "ERROR"],
            [[c["identity"], c["state"], c.get("not_after", "-"), c.get("renew_at", "-"), c.get("last_error", "")]
             for c in dump["certificates"]])


def render(view: str, dump: dict) -> str:
    headers, rows = _rows(view, dump)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(args: argparse.Namespace) -> int:
    from shoal import kube_mesh
    from shoal.install import InstallError

    try:
        if kube_mesh.on_kubernetes(args):
            if not args.node:
                print("shoal: error: name the node: --node NAME (`kubectl get nodes`)", file=sys.stderr)
                return 2
            dump = kube_mesh.ztunnel_dump(kube_mesh.connect(args), args.node, args.port)
            return show(args, dump)
    except InstallError as e:
        print(f"shoal: error: {e}", file=sys.stderr)
        return 1
    context.resolve(args)   # --cluster, $SHOAL_CLUSTER, or the only cluster up
    args.node = args.node or "1"
    return local_main(args)


def local_main(args: argparse.Namespace) -> int:
    from shoal.local.layout import Layout, node_index

    try:
        node = int(args.node) if args.node.isdigit() else node_index(args.node)
    except ValueError as e:
        print(f"shoal: error: {e}", file=sys.stderr)
        return 2
    layout = Layout(args.cluster)
    from shoal import netns
    name = layout.node_netns(node)
    if not netns.exists(name):
        print(f"shoal: error: node {node} of cluster {args.cluster!r} does not exist (no netns {name}); "
              "is the cluster up?", file=sys.stderr)
        return 1
    try:
        dump = fetch_dump(name, args.port)
    except (urllib.error.URLError, OSError) as e:
        print(f"shoal: error: the ztunnel of node{node} does not answer on 127.0.0.1:{args.port}: "
              f"{getattr(e, 'reason', e)}; check `shoal local logs -n shoal-system ztunnel-node{node}`", file=sys.stderr)
        return 1
    return show(args, dump)


def show(args: argparse.Namespace, dump: dict) -> int:
    if args.view == "all" or args.output == "json":
        selected = dump if args.view == "all" else (
            {"policies": dump["policies"], "peer_authentications": dump["peer_authentications"]}
            if args.view == "policies" else dump["certificates" if args.view == "certs" else args.view])
        print(json.dumps(selected, indent=2))
        return 0
    print(render(args.view, dump))
    return 0
