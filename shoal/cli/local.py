"""`shoal local`: a whole mesh on this machine. up, status, list, down; apply, delete, label, annotate;
get, describe, events, logs, exec (the reading verbs live in `local_read`).

Every verb takes `--cluster NAME`; without it the cluster is $SHOAL_CLUSTER, else the only one up, else
`default` (see `context`)."""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import time

from shoal.cli import context, local_read, mesh_status
from shoal.cli.local_read import UnknownKind, resolve_kind
from shoal.cli.output import ERROR_PREFIX, fail, table
from shoal.local import addons
from shoal.local import cluster as local_cluster
from shoal.local import keys, manifest, runtime_containerd
from shoal.local.merge import three_way
from shoal.local.layout import IP_FAMILIES, Layout
from shoal.store import CLUSTER_SCOPED, NotFound

DEFAULT_NODES = 2
DEFAULT_REDIRECT = "auto"
DEFAULT_IP_FAMILY = "ipv4"
CLONE_NEWUTS = 0x04000000

def register(sub) -> None:
    local = sub.add_parser("local", help="run a whole mesh on this machine, in network namespaces")
    verbs = local.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name, func, help):
        p = verbs.add_parser(name, help=help, description=help)
        context.add_option(p)
        p.set_defaults(func=_in_current_cluster(func))
        return p

    p = verb("up", cmd_up, "create the cluster, or bring it back to its running state (an existing cluster keeps "
                           "its nodes and redirect mode; a flag that asks otherwise changes nothing)")
    p.add_argument("--nodes", type=int, default=None, help=f"number of nodes (default: {DEFAULT_NODES}, or the "
                                                           "existing cluster's)")
    p.add_argument("--redirect", choices=("iptables", "ebpf", "auto"), default=None,
                   help=f"how pods' traffic is captured (default: {DEFAULT_REDIRECT}, or the existing cluster's)")
    p.add_argument("--ip-family", choices=IP_FAMILIES, default=None,
                   help="the addresses of nodes, pods and Services: ipv4, dual (IPv4 and IPv6, IPv4 first) or ipv6 "
                        f"(default: {DEFAULT_IP_FAMILY}, or the existing cluster's)")
    p.add_argument("--runtime", choices=("netns", "containerd"), default=None,
                   help="what runs the pods: netns (processes in network namespaces, fast) or containerd (a "
                        "containerd per node, real OCI images, pod networks from CNI with shoal-cni chained) "
                        "(default: netns, or the existing cluster's)")
    p.add_argument("--addons", default="", metavar="NAME[,NAME]",
                   help="also run these beside the mesh: prometheus (default: none)")

    verb("images", cmd_images, "list the images each node's containerd has (--runtime containerd)")
    verb("down", cmd_down, "remove every namespace, process, cgroup, rule and file of the cluster")
    verb("status", cmd_status, "the cluster's daemon, nodes and mesh processes, and what is unhealthy (exit 1 then)")
    verbs.add_parser("list", help="list the local clusters that are up",
                     description="list the local clusters that are up").set_defaults(func=cmd_list)

    for name, func in (("apply", cmd_apply), ("delete", cmd_delete)):
        p = verb(name, func, f"{name} objects from Kubernetes-style YAML")
        p.add_argument("-f", "--filename", required=True, action="append", help="file, directory or -")
    p.add_argument("--ignore-not-found", action="store_true",
                   help="succeed when an object is already gone (default: an error)")

    p = verb("get", cmd_get, "list objects (kinds comma-separated, or all)")
    p.add_argument("kind", help="pods, svc, deploy, ns, nodes, ep, events, vs, dr, ap, pa, httproute, gtw, ...; "
                                "several as pods,svc; all for pods,services,deployments")
    p.add_argument("name", nargs="?", help="one object's name (default: all of them)")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (default: off)")
    p.add_argument("-o", "--output", choices=("table", "wide", "json", "yaml"), default="table",
                   help="output format (default: table)")

    p = verb("describe", cmd_describe, "one object in words: for pods, services and namespaces how the mesh sees "
                                       "them; for any kind its conditions, findings and events")
    p.add_argument("kind", help="pod, svc, ns, vs, dr, ...")
    p.add_argument("name", help="the object's name")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")

    p = verb("events", cmd_events, "list events (the control plane's refusals, ...)")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (default: off)")

    for name, field in (("label", "labels"), ("annotate", "annotations")):
        p = verb(name, cmd_metadata, f"set or remove {field} (key=value to set, key- to remove)")
        p.add_argument("kind", help="pod, svc, ns, deploy, ...")
        p.add_argument("name", help="the object's name")
        p.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-", help="KEY=VALUE sets a key, KEY- removes it")
        p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
        p.add_argument("--overwrite", action="store_true",
                       help="allow changing a key that already has another value (default: refuse)")
        p.set_defaults(field=field)

    p = verb("logs", cmd_logs, "print a pod's container log (runs separated by a restart marker)")
    p.add_argument("name", help="the pod")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-c", "--container", help="container (default: the pod's only one)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is written (default: off)")
    p.add_argument("-p", "--previous", action="store_true",
                   help="the run before the last restart (default: every run)")
    p.add_argument("--tail", type=int, help="only the last N lines (default: all)")
    p.add_argument("--timestamps", action="store_true",
                   help="each line's time, as the kubelet first saw it, to within a second (default: off)")

    p = verb("exec", cmd_exec, "run a command inside a pod: its netns, cgroup and hostname, POD_NAME and "
                               "POD_NAMESPACE set, in /")
    p.add_argument("name", help="the pod")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-c", "--container", help="whose env to take (default: the pod's first container)")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command (it always is; for "
                                                              "kubectl's habit)")
    p.add_argument("-t", "--tty", action="store_true", help="the command gets this terminal (default: off)")
    p.add_argument("command", nargs="*", help="after --: the command and its arguments")

    p = verb("rollout", cmd_rollout, "restart the ztunnel node by node, each new pod beside the old one")
    p.add_argument("action", choices=("restart",), help="what to do: restart")
    p.add_argument("target", metavar="ztunnel", help="what to roll out: ztunnel (or daemonset/ztunnel)")
    p.add_argument("--node", action="append", metavar="NODE", help="only this node (repeatable; default: all)")


def _in_current_cluster(func):
    """`func` with `args.cluster` made definite first (--cluster, $SHOAL_CLUSTER, the only cluster up)."""
    def run(args) -> int:
        context.resolve(args)
        return func(args)
    return run


def _fail(message: str) -> int:
    return fail(message)


def cmd_up(args) -> int:
    layout = Layout(context.resolve(args))
    existing = local_cluster.ClusterConfig.read(layout)
    if existing is not None:
        differs = [f"{flag} {asked} (it has {has})" for flag, asked, has in
                   (("--nodes", args.nodes, existing.nodes), ("--redirect", args.redirect, existing.redirect),
                    ("--ip-family", args.ip_family, existing.ip_family))
                   if asked is not None and asked != has]
        if differs:
            return _fail(f"cluster {args.cluster!r} is up with {existing.nodes} nodes, --redirect "
                         f"{existing.redirect} and --ip-family {existing.ip_family}; you asked for "
                         f"{', '.join(differs)}. Nothing changed: to change it, "
                         f"`shoal local down --cluster {args.cluster}` first")
    nodes = args.nodes or (existing.nodes if existing else DEFAULT_NODES)
    redirect = args.redirect or (existing.redirect if existing else DEFAULT_REDIRECT)
    ip_family = args.ip_family or (existing.ip_family if existing else DEFAULT_IP_FAMILY)
    t0 = time.monotonic()
    try:
        wanted = addons.parse(args.addons)   # a bad name stops here, before anything is made
        runtime_containerd.choose(layout, args.runtime)
        started = local_cluster.up(layout, nodes, redirect, progress=lambda m: print(m, flush=True),
                                   ip_family=ip_family)
        started += addons.install(layout, wanted, progress=lambda m: print(m, flush=True))
    except local_cluster.ClusterError as e:
        return _fail(str(e))
    if started:
        print(f"cluster {args.cluster!r} is up: {nodes} nodes, --ip-family {ip_family}, started {', '.join(started)} "
              f"({time.monotonic() - t0:.1f}s)")
    else:
        print(f"cluster {args.cluster!r} is already up ({nodes} nodes, --redirect {redirect}, --ip-family "
              f"{ip_family}); nothing changed")
    return 0


def cmd_images(args) -> int:
    from shoal.local import cri_client
    layout = Layout(args.cluster)
    if runtime_containerd.runtime_of(layout) != "containerd":
        return _fail(f"cluster {args.cluster!r} runs its pods as processes in network namespaces (--runtime netns), "
                     "which use no images; `shoal local up --runtime containerd` makes a cluster that does")
    config = local_cluster.ClusterConfig.read(layout)
    rows = []
    for node in range(1, (config.nodes if config else 0) + 1):
        client = cri_client.Cri(runtime_containerd.socket_of(layout, node), timeout=10)
        try:
            rows += [[f"node{node}", ref, f"{size / 1e6:.1f}MB"] for ref, size in client.images()]
        except cri_client.CriError as e:
            return _fail(f"containerd of node{node} did not answer: {e}; `shoal local up --cluster {args.cluster}` "
                         "starts it again")
        finally:
            client.close()
    print(table(["NODE", "IMAGE", "SIZE"], rows))
    return 0


def cmd_list(args) -> int:
    names = context.clusters_up()
    if not names:
        print("No local clusters are up; `shoal local up` makes one.", file=sys.stderr)
        return 0
    rows = []
    for name in names:
        layout = Layout(name)
        config = local_cluster.ClusterConfig.read(layout)
        rows.append([name, config.nodes if config else "?", config.redirect if config else "?",
                     config.ip_family if config else "?", "running" if local_cluster.daemon_pid(layout) else "stopped"])
    print(table(["NAME", "NODES", "REDIRECT", "IP-FAMILY", "DAEMON"], rows))
    return 0


def cmd_status(args) -> int:
    from shoal.local import health

    layout = Layout(context.resolve(args))
    store = _store(args)
    config = local_cluster.ClusterConfig.read(layout)
    print(f"cluster {args.cluster}: {config.nodes if config else '?'} nodes, --redirect "
          f"{config.redirect if config else '?'}, --ip-family {config.ip_family if config else '?'}")
    sys.stdout.flush()
    local_read.get(store, ["Node", "Pod"], None, "shoal-system", False, "wide")
    checks = health.judge(health.gather(layout))
    unhealthy = [c for c in checks if c.failed]
    print()
    print("Unhealthy:" if unhealthy else "Healthy: every check of `shoal check --only health` passed")
    for check in unhealthy:
        print(f"  {check.line()}")
    return 1 if unhealthy else 0


def cmd_down(args) -> int:
    try:
        removed = local_cluster.down(Layout(context.resolve(args)))
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
    store = Layout(context.resolve(args)).store()
    if not store.exists():
        raise SystemExit(f"{ERROR_PREFIX}cluster {args.cluster!r} is not up; run `shoal local up --cluster {args.cluster}`")
    return store


def _kind(word: str) -> str:
    try:
        return resolve_kind(word)
    except UnknownKind as e:
        raise SystemExit(f"{ERROR_PREFIX}{e}") from None


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
        errors = manifest.validate(objects, existing_namespaces=namespaces, mesh_validator=_mesh_validator(),
                                   service_ranges=store.service_ranges())
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
    try:
        kinds = local_read.resolve_kinds(args.kind)
    except UnknownKind as e:
        return _fail(str(e))
    return local_read.get(store, kinds, args.name, args.namespace, args.all_namespaces, args.output)


def cmd_describe(args) -> int:
    return local_read.describe(_store(args), _kind(args.kind), args.name, args.namespace)


def cmd_events(args) -> int:
    return local_read.get(_store(args), ["Event"], None, args.namespace, args.all_namespaces, "table")


def cmd_metadata(args) -> int:
    """`shoal local label|annotate KIND NAME k=v k2-`, as kubectl does it: a key that has another value
    already is changed only with --overwrite; nothing is changed when any change is refused."""
    store = _store(args)
    kind = _kind(args.kind)
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
    current = store.get(kind, args.namespace, args.name)
    have = ((current or {}).get("metadata") or {}).get(args.field) or {}
    clashes = [f"{key} is already {have[key]!r}" for key, value in changes.items()
               if value is not None and key in have and have[key] != value]
    if current is not None and clashes and not args.overwrite:
        return _fail(f"{kind} {args.name!r} not changed: {'; '.join(clashes)}; use --overwrite to change it")
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
        raise SystemExit(f"{ERROR_PREFIX}pod {args.namespace}/{args.name} not found in cluster {args.cluster!r}")
    return pod


def cmd_logs(args) -> int:
    pod = _pod_or_exit(args)
    return local_read.logs(Layout(args.cluster), pod, args.container, args.previous, args.follow, args.tail,
                           args.timestamps)


def cmd_exec(args) -> int:
    pod = _pod_or_exit(args)
    command = [*args.command, *getattr(args, "trailing", [])]
    if not command:
        return _fail("no command given: shoal local exec POD -- CMD ...")
    shoal_status = (pod.get("status") or {}).get("shoal")
    if not shoal_status or (pod.get("status") or {}).get("phase") not in ("Running",):
        return _fail(f"pod {args.namespace}/{args.name} is not running yet "
                     f"(phase {(pod.get('status') or {}).get('phase', 'Pending')})")
    containers = pod["spec"].get("containers") or [{}]
    container = next((c for c in containers if c.get("name") == args.container), None) if args.container \
        else containers[0]
    if container is None:
        return _fail(f"container {args.container!r} is not in pod {args.namespace}/{args.name}; its containers: "
                     + ", ".join(c.get("name", "?") for c in containers))
    if args.tty and not os.isatty(0):
        print("Unable to use a TTY - input is not a terminal", file=sys.stderr)
    # Join the pod's cgroup (as `kubectl exec` joins the container's), take the pod's name as hostname in
    # a UTS namespace of the command's own, its environment and /, then become the command.
    with open(os.path.join(shoal_status["cgroup"], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) != 0:
        return _fail(f"cannot make a UTS namespace for the pod's hostname: {os.strerror(ctypes.get_errno())}")
    socket.sethostname(args.name[:63])
    os.environ.update({"HOSTNAME": args.name, "POD_NAME": args.name, "POD_NAMESPACE": args.namespace,
                       "POD_IP": (pod.get("status") or {}).get("podIP", ""), "NODE_NAME": pod["spec"].get("nodeName", ""),
                       "POD_IPS": ",".join(p.get("ip", "") for p in (pod.get("status") or {}).get("podIPs") or [])})
    os.environ.update({e["name"]: str(e.get("value", "")) for e in container.get("env") or () if "name" in e})
    os.chdir("/")
    sys.stdout.flush()
    if shoal_status.get("runtime") == "containerd":  # into the container's namespaces: its files, its network
        if not shoal_status.get("container_pid"):
            return _fail(f"pod {args.namespace}/{args.name} has no running container to exec into")
        os.execvp("nsenter", ["nsenter", "--target", str(shoal_status["container_pid"]), "--mount", "--uts",
                              "--ipc", "--net", "--pid", "--", *command])
    netns_name = os.path.basename(shoal_status["netns"])
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
