"""`shoal local`: up, apply, delete, get, logs, exec, down."""

from __future__ import annotations

import json
import os
import sys
import time

import yaml

from shoal.cli import mesh_status
from shoal.local import cluster as local_cluster
from shoal.local import keys, manifest
from shoal.local.merge import three_way
from shoal.local.layout import Layout, cluster_name
from shoal.store import CLUSTER_SCOPED, NotFound

KIND_ALIASES = {
    "Pod": ("pods", "pod", "po"),
    "Service": ("services", "service", "svc"),
    "Deployment": ("deployments", "deployment", "deploy"),
    "Namespace": ("namespaces", "namespace", "ns"),
    "Node": ("nodes", "node", "no"),
    "Endpoints": ("endpoints", "ep"),
    "ServiceAccount": ("serviceaccounts", "serviceaccount", "sa"),
    "VirtualService": ("virtualservices", "virtualservice", "vs"),
    "DestinationRule": ("destinationrules", "destinationrule", "dr"),
    "AuthorizationPolicy": ("authorizationpolicies", "authorizationpolicy", "ap"),
    "PeerAuthentication": ("peerauthentications", "peerauthentication", "pa"),
    "HTTPRoute": ("httproutes", "httproute"),
    "Gateway": ("gateways", "gateway", "gtw"),
    "TrafficSplit": ("trafficsplits", "trafficsplit", "ts"),
    "ConfigMap": ("configmaps", "configmap", "cm"),
    "Secret": ("secrets", "secret"),
    "Ingress": ("ingresses", "ingress", "ing"),
}


def resolve_kind(word: str) -> str:
    for kind, aliases in KIND_ALIASES.items():
        if word.lower() in aliases or word == kind:
            return kind
    raise SystemExit(f"error: unknown resource type {word!r}; known: {', '.join(a[0] for a in KIND_ALIASES.values())}")


def register(sub) -> None:
    local = sub.add_parser("local", help="run a whole mesh on this machine, in network namespaces")
    verbs = local.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name, func, help):
        p = verbs.add_parser(name, help=help)
        p.add_argument("--cluster", default="default", type=cluster_name, help="cluster name (default: default)")
        p.set_defaults(func=func)
        return p

    p = verb("up", cmd_up, "create the cluster, or bring it back to its running state")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--redirect", choices=("iptables", "ebpf", "auto"), default="auto")

    verb("down", cmd_down, "remove every namespace, process, cgroup, rule and file of the cluster")

    for name, func in (("apply", cmd_apply), ("delete", cmd_delete)):
        p = verb(name, func, f"{name} objects from Kubernetes-style YAML")
        p.add_argument("-f", "--filename", required=True, action="append", help="file, directory or -")
    p.add_argument("--ignore-not-found", action="store_true",
                   help="succeed when an object is already gone (default: an error)")

    p = verb("get", cmd_get, "list objects")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=("table", "wide", "json", "yaml"), default="table")

    for name, field in (("label", "labels"), ("annotate", "annotations")):
        p = verb(name, cmd_metadata, f"set or remove {field} (key=value to set, key- to remove)")
        p.add_argument("kind")
        p.add_argument("name")
        p.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-")
        p.add_argument("-n", "--namespace", default="default")
        p.set_defaults(field=field)

    p = verb("logs", cmd_logs, "print a pod's container log")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-c", "--container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int)

    p = verb("exec", cmd_exec, "run a command inside a pod (its netns and cgroup)")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("command", nargs="*", help="after --: the command and its arguments")

    p = verb("rollout", cmd_rollout, "restart the ztunnel node by node, each new pod beside the old one")
    p.add_argument("action", choices=("restart",))
    p.add_argument("target", metavar="ztunnel", help="what to roll out: ztunnel (or daemonset/ztunnel)")
    p.add_argument("--node", action="append", metavar="NODE", help="only this node (repeatable; default: all)")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def cmd_up(args) -> int:
    layout = Layout(args.cluster)
    t0 = time.monotonic()
    try:
        started = local_cluster.up(layout, args.nodes, args.redirect, progress=lambda m: print(m, flush=True))
    except local_cluster.ClusterError as e:
        return _fail(str(e))
    if started:
        print(f"cluster {args.cluster!r} is up: {args.nodes} nodes, started {', '.join(started)} "
              f"({time.monotonic() - t0:.1f}s)")
    else:
        print(f"cluster {args.cluster!r} is already up; nothing changed")
    return 0


def cmd_down(args) -> int:
    try:
        removed = local_cluster.down(Layout(args.cluster))
    except local_cluster.ClusterError as e:
        return _fail(str(e))
    print(f"cluster {args.cluster!r} removed: {', '.join(removed)}" if removed
          else f"cluster {args.cluster!r} was not up; nothing to remove")
    return 0


def _mesh_validator():
    try:
        from control_plane.translate import validate
    except ImportError:
        return None
    return validate


def _store(args):
    store = Layout(args.cluster).store()
    if not store.exists():
        raise SystemExit(f"error: cluster {args.cluster!r} is not up; run `shoal local up --cluster {args.cluster}`")
    return store


def _load(args) -> list[dict]:
    objects = []
    for path in args.filename:
        objects.extend(manifest.load(path))
    return objects


def cmd_apply(args) -> int:
    store = _store(args)
    try:
        objects = _load(args)
        namespaces = {n["metadata"]["name"] for n in store.list("Namespace")[0]}
        errors = manifest.validate(objects, existing_namespaces=namespaces, mesh_validator=_mesh_validator())
        if errors:
            raise manifest.ManifestError(", ".join(args.filename), errors)
    except manifest.ManifestError as e:
        return _fail(str(e))
    before = {id(o): store.get(o["kind"], (o.get("metadata") or {}).get("namespace"), o["metadata"]["name"])
              for o in objects}
    stored = store.apply_many(objects, merge=three_way)
    for obj, new in zip(objects, stored):
        old = before[id(obj)]
        verb = "created" if old is None else (
            "unchanged" if old["metadata"]["resourceVersion"] == new["metadata"]["resourceVersion"] else "configured")
        print(f"{obj['kind'].lower()}/{obj['metadata']['name']} {verb}")
    sys.stdout.flush()
    mesh_status.report(mesh_status.refresh(store), [mesh_status.key_of(o) for o in stored], sys.stderr)
    return 0


def cmd_delete(args) -> int:
    store = _store(args)
    try:
        objects = _load(args)
    except manifest.ManifestError as e:
        return _fail(str(e))
    keys = [(o.get("kind", ""), (o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name", ""))
            for o in objects]
    missing = []
    for (kind, namespace, name), gone in zip(keys, store.delete_many(keys)):
        if gone:
            print(f"{kind.lower()}/{name} deleted")
        elif not args.ignore_not_found:
            missing.append(f"{kind} {name!r} not found" + ("" if kind in CLUSTER_SCOPED else
                                                            f" in namespace {namespace or 'default'}"))
    sys.stdout.flush()
    mesh_status.refresh(store)
    if missing:
        return _fail("; ".join(missing) + " (--ignore-not-found to accept that)")
    return 0


def cmd_get(args) -> int:
    store = _store(args)
    kind = resolve_kind(args.kind)
    namespace = None if (args.all_namespaces or kind in CLUSTER_SCOPED or kind == "Node") else (args.namespace or "default")
    items, rv = store.list(kind, namespace)
    if args.name:
        items = [i for i in items if i["metadata"]["name"] == args.name]
        if not items:
            return _fail(f"{kind} {args.name!r} not found" + (f" in namespace {namespace}" if namespace else ""))
    if args.output in ("json", "yaml"):
        doc = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items,
                                          "metadata": {"resourceVersion": str(rv)}}
        print(json.dumps(doc, indent=2) if args.output == "json" else yaml.safe_dump(doc, sort_keys=False), end="\n")
        return 0
    rows = [_row(kind, i, args.output == "wide", namespace is None) for i in items]
    if not rows:
        print(f"No {kind} found" + (f" in {namespace} namespace." if namespace else "."))
        return 0
    header = list(rows[0].keys())
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    print("   ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        print("   ".join(str(r[h]).ljust(w) for h, w in zip(header, widths)).rstrip())
    return 0


def _row(kind: str, obj: dict, wide: bool, show_namespace: bool) -> dict:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    row = {"NAMESPACE": meta.get("namespace", "")} if show_namespace and kind not in CLUSTER_SCOPED else {}
    row["NAME"] = meta["name"]
    if kind == "Pod":
        containers = status.get("containerStatuses", [])
        ready = sum(1 for c in containers if c.get("ready"))
        waiting = next((c["state"]["waiting"]["reason"] for c in containers if "waiting" in c.get("state", {})), None)
        row["READY"] = f"{ready}/{len(containers)}"
        row["STATUS"] = status.get("reason") or waiting or status.get("phase", "Pending")
        row["RESTARTS"] = sum(c.get("restartCount", 0) for c in containers)
        row["IP"] = status.get("podIP", "<none>")
        row["NODE"] = spec.get("nodeName", "<none>")
    elif kind == "Service":
        row["CLUSTER-IP"] = spec.get("clusterIP", "<none>")
        row["PORTS"] = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
        if wide:
            row["SELECTOR"] = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
    elif kind == "Deployment":
        row["REPLICAS"] = spec.get("replicas", 1)
    elif kind == "Node":
        addresses = {a["type"]: a["address"] for a in status.get("addresses", [])}
        row["INTERNAL-IP"] = addresses.get("InternalIP", "")
        row["POD-CIDR"] = spec.get("podCIDR", "")
    elif kind == "Endpoints":
        row["ENDPOINTS"] = ",".join(a["ip"] for s in obj.get("subsets", []) for a in s.get("addresses", [])) or "<none>"
    elif kind == "Namespace" and wide:
        row["LABELS"] = ",".join(f"{k}={v}" for k, v in (meta.get("labels") or {}).items())
    row["AGE"] = meta.get("creationTimestamp", "")
    return row


def cmd_metadata(args) -> int:
    """`shoal local label|annotate KIND NAME k=v k2-`, as kubectl does it (an existing key is overwritten)."""
    store = _store(args)
    kind = resolve_kind(args.kind)
    changes: dict[str, str | None] = {}
    for change in args.changes:
        if change.endswith("-") and "=" not in change:
            changes[change[:-1]] = None
        elif "=" in change:
            key, value = change.split("=", 1)
            changes[key] = value
        else:
            return _fail(f"{change!r} is neither KEY=VALUE nor KEY-")
    # Removing a key is always allowed (also one that an older shoal let in); a key set must be valid.
    refused = keys.problems(args.field, {k: v for k, v in changes.items() if v is not None})
    if refused:
        what = "label" if args.field == "labels" else "annotation"
        return _fail(f"{kind} {args.name!r} not {'labeled' if what == 'label' else 'annotated'}, nothing changed:\n"
                     + "\n".join(f"  - {what} {key}: {reason}" for key, reason in refused))
    try:
        store.patch_metadata(kind, args.namespace, args.name, **{args.field: changes})
    except NotFound:
        return _fail(f"{kind} {args.name!r} not found" + ("" if kind in CLUSTER_SCOPED else f" in {args.namespace}"))
    print(f"{kind.lower()}/{args.name} {'labeled' if args.field == 'labels' else 'annotated'}")
    sys.stdout.flush()
    mesh_status.report(mesh_status.refresh(store), [(kind, "" if kind in CLUSTER_SCOPED else args.namespace,
                                                     args.name)], sys.stderr)
    return 0


def _pod_or_exit(args) -> dict:
    store = _store(args)
    pod = store.get("Pod", args.namespace, args.name)
    if pod is None:
        raise SystemExit(f"error: pod {args.namespace}/{args.name} not found in cluster {args.cluster!r}")
    return pod


def cmd_logs(args) -> int:
    pod = _pod_or_exit(args)
    containers = [c["name"] for c in pod["spec"].get("containers", [])]
    name = args.container or (containers[0] if len(containers) == 1 else None)
    if name is None:
        return _fail(f"pod {args.name} has containers {', '.join(containers)}; choose one with -c")
    path = Layout(args.cluster).pod_log(args.namespace, args.name, name)
    if not path.exists():
        return _fail(f"no log yet for {args.namespace}/{args.name} container {name}")
    with open(path, "rb") as f:
        data = f.read()
        if args.tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-args.tail:])
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.2)
    return 0


def cmd_exec(args) -> int:
    pod = _pod_or_exit(args)
    command = [*args.command, *getattr(args, "trailing", [])]
    if not command:
        return _fail("no command given: shoal local exec POD -- CMD ...")
    shoal_status = (pod.get("status") or {}).get("shoal")
    if not shoal_status or (pod.get("status") or {}).get("phase") not in ("Running",):
        return _fail(f"pod {args.namespace}/{args.name} is not running yet "
                     f"(phase {(pod.get('status') or {}).get('phase', 'Pending')})")
    # Join the pod's cgroup (as `kubectl exec` joins the container's), then become the command.
    with open(os.path.join(shoal_status["cgroup"], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    netns_name = os.path.basename(shoal_status["netns"])
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", netns_name, *command])
    return 127  # not reached


def cmd_rollout(args) -> int:
    from shoal.local import rollout
    try:
        component = rollout.component_name(args.target)
        steps = rollout.restart(Layout(args.cluster), component, rollout.parse_nodes(args.node),
                                progress=lambda m: print(m, flush=True))
    except rollout.RolloutError as e:
        return _fail(str(e))
    print(f"daemonset/{component} restarted: " + ", ".join(f"{s.new} on node{s.node}" for s in steps))
    return 0
