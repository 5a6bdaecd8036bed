"""`shoal proxy-config routes|endpoints|policies|certs|all PROXY`: what one proxy holds, as `istioctl proxy-config`.

    shoal proxy-config routes waypoint -n shop       # the waypoint Gateway `waypoint` of namespace shop
    shoal proxy-config endpoints node1               # the ztunnel of node1 (also: ztunnel-node1)

PROXY is a ztunnel (`node1`, `ztunnel-node1`) or a waypoint (the Gateway's
name, with -n; `waypoint/NAME` too). The proxy is asked for its admin dump
(127.0.0.1:15000 inside its netns), so what is shown is what the proxy
holds, not what the control plane meant to send.

routes: each route table with its routes: matches, destinations with their
weight and subset, timeout, retries. endpoints: each Service port with its
endpoints, the workload behind each, how it is reached and its health (an
endpoint the proxy holds no workload for cannot be used).
"""

from __future__ import annotations

import argparse
import json
import sys

from shoal.cli import context
from shoal.cli.output import fail, table
from shoal.contracts import ADMIN_PORT, GATEWAY_NAME_LABEL

VIEWS = ("routes", "endpoints", "policies", "certs", "all")


def register(sub) -> None:
    p = sub.add_parser("proxy-config", help="show what a ztunnel or a waypoint holds: routes, endpoints, policies, certs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("view", choices=VIEWS, help="what to show")
    p.add_argument("proxy", help="node1 / ztunnel-node1 (a ztunnel), or a waypoint Gateway's name (with -n)")
    p.add_argument("-n", "--namespace", default="default", help="the waypoint's namespace (default: default)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format (default: table)")
    context.add_option(p)
    p.set_defaults(func=cmd_proxy_config)


# -- rendering (pure: a dump in, text out) ---------------------------------------


def _match(match: dict) -> str:
    parts = []
    if match.get("path"):
        kind, value = match["path"]["kind"], match["path"]["value"]
        parts.append({"EXACT": value, "PREFIX": f"{value}*", "REGEX": f"~{value}"}.get(kind, value))
    if match.get("method"):
        parts.append(match["method"])
    for header in match.get("headers") or ():
        op = "!=" if header.get("invert") else "="
        parts.append(f"{header['name']}{op}{header['match']['value'] or '*'}")
    for query in match.get("query_params") or ():
        parts.append(f"?{query['name']}={query['match']['value']}")
    return " ".join(parts) or "*"


def _destination(dest: dict) -> str:
    host = dest["host"].split(".svc.")[0]
    text = host + (f":{dest['port']}" if dest.get("port") else "")
    if dest.get("subset_name") or dest.get("subset"):
        text += f" subset={dest.get('subset_name') or ','.join(f'{k}={v}' for k, v in dest['subset'])}"
    return f"{text} weight={dest.get('weight', 1)}"


def _retries(retry: dict | None) -> str:
    if not retry:
        return "-"
    text = f"{retry['attempts']}x"
    if retry.get("per_try_timeout"):
        text += f" per-try {retry['per_try_timeout']:g}s"
    return text + (f" on {','.join(retry['retry_on'])}" if retry.get("retry_on") else "")


def routes_table(state: dict) -> str:
    rows = []
    for rt in state.get("routes") or ():
        for i, route in enumerate(rt["routes"] or [{}]):
            dests = [_destination(d) for d in route.get("destinations") or ()] or ["-"]
            for j, dest in enumerate(dests):
                first = j == 0
                rows.append([f"{rt['hostname']}:{rt['port'] or '*'}" if i == 0 and first else "",
                             rt.get("origin", "") if i == 0 and first else "",
                             (route.get("name") or str(i)) if first else "",
                             " | ".join(_match(m) for m in route.get("matches") or ()) or "*" if first else "",
                             dest,
                             (f"{route['timeout']:g}s" if route.get("timeout") else "-") if first else "",
                             _retries(route.get("retry")) if first else ""])
    return table(["ROUTE TABLE", "ORIGIN", "ROUTE", "MATCH", "DESTINATION", "TIMEOUT", "RETRIES"], rows)


def endpoints_table(state: dict) -> str:
    workloads = {w["uid"]: w for w in state.get("workloads") or ()}
    rows = []
    for service in sorted(state.get("services") or (), key=lambda s: s["hostname"]):
        for endpoint in service.get("endpoints") or ():
            workload = workloads.get(endpoint["workload_uid"])
            address = f"{workload['ips'][0]}:{endpoint['target_port']}" if workload and workload["ips"] else "-"
            health = "HEALTHY" if workload and workload["ips"] else "UNKNOWN (no workload held)"
            rows.append([f"{service['hostname']}:{endpoint['service_port']}", address,
                         f"{workload['namespace']}/{workload['name']}" if workload else endpoint["workload_uid"],
                         ",".join(f"{k}={v}" for k, v in (workload or {}).get("labels", ())) or "-",
                         (workload or {}).get("protocol", "-"), health])
    return table(["SERVICE", "ENDPOINT", "WORKLOAD", "LABELS", "PROTOCOL", "HEALTH"], rows)


def policies_table(state: dict) -> str:
    rows = [[p["namespace"], p["name"], "AuthorizationPolicy", p["scope"], p["action"], len(p["rules"])]
            for p in state.get("policies") or ()]
    rows += [[p["namespace"], p["name"], "PeerAuthentication", p["scope"], p["mode"], "-"]
             for p in state.get("peer_authentications") or ()]
    return table(["NAMESPACE", "NAME", "KIND", "SCOPE", "ACTION/MODE", "RULES"], rows)


def certs_table(certificates: list[dict]) -> str:
    return table(["IDENTITY", "STATE", "NOT AFTER", "RENEW AT", "ERROR"],
                 [[c["identity"], c["state"], c.get("not_after", "-"), c.get("renew_at", "-"), c.get("last_error", "")]
                  for c in certificates])


def views(dump: dict) -> tuple[dict, list[dict]]:
    """(the proxy's state, its certificates) from a ztunnel's or a waypoint's dump."""
    if "state" in dump:   # a waypoint: names at the top, whole objects under "state"
        return dump["state"], [dump["certificate"]] if dump.get("certificate") else []
    return dump, dump.get("certificates") or []


def render(view: str, dump: dict) -> str:
    state, certificates = views(dump)
    return {"routes": routes_table, "endpoints": endpoints_table, "policies": policies_table}[view](state) \
        if view != "certs" else certs_table(certificates)


def selected(view: str, dump: dict) -> object:
    state, certificates = views(dump)
    if view == "all":
        return dump
    if view == "routes":
        return state.get("routes") or []
    if view == "endpoints":
        return {"services": state.get("services") or [], "workloads": state.get("workloads") or []}
    if view == "policies":
        return {"policies": state.get("policies") or [], "peer_authentications": state.get("peer_authentications") or []}
    return certificates


# -- finding the proxy (I/O) ---------------------------------------------------


def proxy_netns(cluster: str, proxy: str, namespace: str) -> tuple[str, str]:
    """(netns name, what to call the proxy) of PROXY; raises LookupError saying what is missing."""
    from shoal import netns
    from shoal.local.layout import Layout, node_index

    layout = Layout(cluster)
    node = proxy.removeprefix("ztunnel-").removeprefix("ztunnel/")
    if node.startswith("node") and node[4:].isdigit():
        name = layout.node_netns(node_index(node))
        if not netns.exists(name):
            raise LookupError(f"cluster {cluster!r} has no {node}")
        return name, f"ztunnel-{node}"
    gateway = proxy.removeprefix("waypoint/")
    store = layout.store()
    pods = [p for p in store.list("Pod", namespace)[0]
            if (p["metadata"].get("labels") or {}).get(GATEWAY_NAME_LABEL) == gateway
            and ((p.get("status") or {}).get("shoal") or {}).get("netns")]
    if not pods:
        raise LookupError(f"no running waypoint {namespace}/{gateway} (nor a node of that name); "
                          "see `shoal waypoint list` and `shoal check`")
    return pods[0]["status"]["shoal"]["netns"], f"waypoint {namespace}/{gateway}"  # a path: run_in takes both


def cmd_proxy_config(args) -> int:
    from shoal.local.observe import admin_dump

    cluster = context.resolve(args)
    try:
        where, what = proxy_netns(cluster, args.proxy, args.namespace)
    except LookupError as e:
        return fail(str(e))
    try:
        dump = admin_dump(where, ADMIN_PORT)
    except (OSError, ValueError) as e:
        return fail(f"the {what} does not answer on 127.0.0.1:{ADMIN_PORT}: {getattr(e, 'reason', e)}; "
                    f"see its log (`shoal local logs`)")
    if args.output == "json" or args.view == "all":
        print(json.dumps(selected(args.view, dump), indent=2))
    else:
        print(render(args.view, dump))
    sys.stdout.flush()
    return 0
