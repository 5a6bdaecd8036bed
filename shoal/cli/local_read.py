"""The reading verbs of `shoal local`, with kubectl's habits: get, describe, events, logs.

- `get pods,svc` and `get all` (pods, services, deployments); AGE is an age;
  `-o wide|json|yaml`; several kinds print one block each, names as kind/name.
- `describe KIND NAME`: pods, services and namespaces as `shoal describe` has
  them; any other kind as its metadata, status conditions, findings, events.
- `logs`: `-c` must name one of the pod's containers; the kubelet writes a
  marker line before each restart, `--previous` prints the run before the
  last restart; `-f` follows; `--tail N`; `--timestamps` puts before each
  line the time the kubelet first saw it (it stamps each log's size every
  second, beside the log: `kubelet.stamps_path`).
"""

from __future__ import annotations

import json
import sys
import time

import yaml

from shoal.cli.output import age, fail, table
from shoal.local.layout import Layout
from shoal.store import CLUSTER_SCOPED

KIND_ALIASES = {
    "Pod": ("pods", "pod", "po"),
    "Service": ("services", "service", "svc"),
    "Deployment": ("deployments", "deployment", "deploy"),
    "Namespace": ("namespaces", "namespace", "ns"),
    "Node": ("nodes", "node", "no"),
    "Endpoints": ("endpoints", "ep"),
    "Event": ("events", "event", "ev"),
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
ALL = ("Pod", "Service", "Deployment")   # what `get all` lists, as kubectl's `all` category


class UnknownKind(ValueError):
    pass


def resolve_kind(word: str) -> str:
    for kind, aliases in KIND_ALIASES.items():
        if word.lower() in aliases or word == kind:
            return kind
    raise UnknownKind(f"unknown resource type {word!r}; known: {', '.join(a[0] for a in KIND_ALIASES.values())}, all")


def resolve_kinds(text: str) -> list[str]:
    """`pods,svc` -> [Pod, Service]; `all` -> ALL; raises UnknownKind."""
    kinds: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        for kind in ALL if word == "all" else (resolve_kind(word),):
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        raise UnknownKind("name a resource type, such as pods or pods,svc or all")
    return kinds


# -- get -------------------------------------------------------------------------


def row(kind: str, obj: dict, wide: bool, show_namespace: bool) -> dict:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    out = {"NAMESPACE": meta.get("namespace", "")} if show_namespace and kind not in CLUSTER_SCOPED else {}
    out["NAME"] = meta["name"]
    if kind == "Pod":
        containers = status.get("containerStatuses", [])
        ready = sum(1 for c in containers if c.get("ready"))
        waiting = next((c["state"]["waiting"]["reason"] for c in containers if "waiting" in c.get("state", {})), None)
        out["READY"] = f"{ready}/{len(containers)}"
        out["STATUS"] = status.get("reason") or waiting or status.get("phase", "Pending")
        out["RESTARTS"] = sum(c.get("restartCount", 0) for c in containers)
        if wide:
            # Every address of a dual-stack pod, primary first (status.podIPs; kubectl shows only the first).
            out["IP"] = ",".join(p["ip"] for p in status.get("podIPs") or [] if p.get("ip")) \
                or status.get("podIP", "<none>")
            out["NODE"] = spec.get("nodeName", "<none>")
            # On a containerd cluster: the image each container runs (the toolbox for one that names none).
            images = [c["image"] for c in containers if c.get("image")]
            if images:
                out["IMAGES"] = ",".join(images)
    elif kind == "Service":
        out["TYPE"] = spec.get("type", "ClusterIP")
        out["CLUSTER-IP"] = spec.get("clusterIP", "<none>")
        external = list(spec.get("externalIPs") or []) + [
            i.get("ip") or i.get("hostname") for i in ((status.get("loadBalancer") or {}).get("ingress") or [])]
        out["EXTERNAL-IP"] = ",".join(external) or ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
        out["PORTS"] = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
        if wide:
            out["SELECTOR"] = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>"
            out["IP-FAMILIES"] = ",".join(spec.get("ipFamilies") or []) or "<none>"
            out["CLUSTER-IPS"] = ",".join(spec.get("clusterIPs") or []) or "<none>"
    elif kind == "Deployment":
        out["REPLICAS"] = spec.get("replicas", 1)
    elif kind == "Node":
        out["INTERNAL-IP"] = ",".join(a["address"] for a in status.get("addresses", []) if a["type"] == "InternalIP")
        out["POD-CIDR"] = ",".join(spec.get("podCIDRs") or [spec.get("podCIDR", "")])
    elif kind == "Endpoints":
        out["ENDPOINTS"] = ",".join(a["ip"] for s in obj.get("subsets", []) for a in s.get("addresses", [])) or "<none>"
    elif kind == "Event":
        involved = obj.get("involvedObject") or {}
        out = {**({"NAMESPACE": meta.get("namespace", "")} if show_namespace else {}),
               "LAST SEEN": age(obj.get("lastTimestamp")), "TYPE": obj.get("type", ""),
               "REASON": obj.get("reason", ""), "OBJECT": f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
               "MESSAGE": obj.get("message", "")}
        return out
    elif kind == "Namespace" and wide:
        out["LABELS"] = ",".join(f"{k}={v}" for k, v in (meta.get("labels") or {}).items()) or "<none>"
    conditions = {c.get("type"): c for c in status.get("conditions") or ()} if kind not in ("Pod", "Node") else {}
    if "ResolvedRefs" in conditions:   # a mesh object: what the analysis says of it
        out["ACCEPTED"] = conditions["Accepted"]["status"] if "Accepted" in conditions else "-"
        out["RESOLVED"] = conditions["ResolvedRefs"]["status"]
    out["AGE"] = age(meta.get("creationTimestamp"))
    return out


def get(store, kinds: list[str], name: str | None, namespace: str | None, all_namespaces: bool,
        output: str, out=sys.stdout) -> int:
    if name and len(kinds) > 1:
        return fail("a name goes with one resource type; `get pods NAME`, not `get pods,svc NAME`")
    lists = []
    for kind in kinds:
        ns = None if (all_namespaces or kind in CLUSTER_SCOPED or kind == "Node") else (namespace or "default")
        items, rv = store.list(kind, ns)
        if name:
            items = [i for i in items if i["metadata"]["name"] == name]
            if not items:
                return fail(f"{kind} {name!r} not found" + (f" in namespace {ns}" if ns else ""))
        lists.append((kind, ns, items, rv))
    if output in ("json", "yaml"):
        everything = [i for _, _, items, _ in lists for i in items]
        doc = everything[0] if name else {"apiVersion": "v1", "kind": "List", "items": everything,
                                          "metadata": {"resourceVersion": str(max(rv for *_, rv in lists))}}
        print(json.dumps(doc, indent=2) if output == "json" else yaml.safe_dump(doc, sort_keys=False), file=out)
        return 0
    blocks = []
    for kind, ns, items, _ in lists:
        if not items:
            continue
        rows = [row(kind, i, output == "wide", ns is None) for i in items]
        if len(kinds) > 1:
            for r in rows:
                r["NAME"] = f"{kind.lower()}/{r['NAME']}"
        headers = list(dict.fromkeys(header for r in rows for header in r))  # a column any row has
        blocks.append(table(headers, [[r.get(h, "<none>") for h in headers] for r in rows]))
    if not blocks:
        where = namespace or "default"
        print("No resources found" + ("." if all_namespaces else f" in {where} namespace."), file=sys.stderr)
        return 0
    print("\n\n".join(blocks), file=out)
    return 0


# -- describe ---------------------------------------------------------------------


def describe_generic(store, obj: dict) -> str:
    from shoal.cli.describe import Mesh

    meta, status = obj["metadata"], obj.get("status") or {}
    kind = obj["kind"]
    mesh = Mesh([o for k in store.kinds() for o in store.list(k)[0]])
    lines = [f"Name:        {meta['name']}"]
    if kind not in CLUSTER_SCOPED:
        lines.append(f"Namespace:   {meta.get('namespace', 'default')}")
    lines += [f"Kind:        {kind}", f"Created:     {meta.get('creationTimestamp', '')} ({age(meta.get('creationTimestamp'))} ago)",
              "Labels:      " + (", ".join(f"{k}={v}" for k, v in (meta.get("labels") or {}).items()) or "<none>")]
    conditions = status.get("conditions") or []
    lines.append("Conditions:" if conditions else "Conditions:  <none>")
    lines += [f"  {c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}" for c in conditions]
    namespace = meta.get("namespace", "default")
    for title, found in (("Findings", mesh.findings_about(kind, namespace, meta["name"])),
                         ("Events", mesh.events_about(kind, namespace, meta["name"]))):
        lines.append(f"{title}:" if found else f"{title}:  <none>")
        lines += [f"  {line}" for line in found]
    return "\n".join(lines)


def describe(store, kind: str, name: str, namespace: str) -> int:
    from shoal.cli.describe import describe as describe_mesh

    if kind in ("Pod", "Service", "Namespace"):
        text = describe_mesh([o for k in store.kinds() for o in store.list(k)[0]], kind, namespace, name)
    else:
        obj = store.get(kind, namespace, name)
        text = describe_generic(store, obj) if obj is not None else None
    if text is None:
        return fail(f"{kind} {name!r} not found" + ("" if kind in CLUSTER_SCOPED else f" in namespace {namespace}"))
    print(text)
    return 0


# -- logs --------------------------------------------------------------------------


def runs(data: bytes) -> list[list[tuple[int, bytes]]]:
    """A container log cut into its runs, oldest first, each a list of (end offset, line); every run after
    the first starts with its marker line."""
    from shoal.local.kubelet import RESTART_MARKER

    marker = RESTART_MARKER.encode()
    out: list[list[tuple[int, bytes]]] = [[]]
    offset = 0
    for line in data.splitlines(keepends=True):
        offset += len(line)
        if line.startswith(marker) and (out[-1] or len(out) > 1):
            out.append([])
        out[-1].append((offset, line))
    return out


def read_stamps(path) -> list[tuple[int, str]]:
    """(log size, time) checkpoints the kubelet wrote beside a log, in order."""
    from shoal.local.kubelet import stamps_path

    out = []
    try:
        for raw in stamps_path(path).read_text().splitlines():
            size, _, when = raw.partition(" ")
            if size.isdigit() and when:
                out.append((int(size), when))
    except OSError:
        pass
    return out


def with_times(lines: list[tuple[int, bytes]], stamps: list[tuple[int, str]], now: str) -> list[bytes]:
    """Each line prefixed with the time of the first checkpoint that covers it (when the kubelet first saw
    it, to within its stamping interval); a line no checkpoint covers yet gets `now`."""
    out, i = [], 0
    for end, line in lines:
        while i < len(stamps) and stamps[i][0] < end:
            i += 1
        out.append(f"{stamps[i][1] if i < len(stamps) else now} ".encode() + line)
    return out


def logs(layout: Layout, pod: dict, container: str | None, previous: bool, follow: bool, tail: int | None,
         timestamps: bool = False) -> int:
    from shoal.store import now_rfc3339

    meta = pod["metadata"]
    where = f"pod {meta['namespace']}/{meta['name']}"
    containers = [c["name"] for c in pod["spec"].get("containers", [])]
    if container is not None and container not in containers:
        return fail(f"container {container!r} is not in {where}; its containers: {', '.join(containers) or 'none'}")
    name = container or (containers[0] if len(containers) == 1 else None)
    if name is None:
        return fail(f"{where} has containers {', '.join(containers)}; choose one with -c")
    path = layout.pod_log(meta["namespace"], meta["name"], name)
    if not path.exists():
        return fail(f"no log yet for container {name} of {where}: it has not started")
    with open(path, "rb") as f:
        history = runs(f.read())
        if previous:
            if len(history) < 2:
                return fail(f"container {name} of {where} has not restarted: there is no previous run")
            lines, follow = history[-2], False
        else:
            lines = [line for run in history for line in run]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        out = with_times(lines, read_stamps(path), now_rfc3339()) if timestamps else [line for _, line in lines]
        sys.stdout.buffer.write(b"".join(out))
        sys.stdout.flush()
        pending = b""
        while follow:
            chunk = f.read()
            if chunk:
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n") if timestamps else (pending, b"", b"")
                if complete:
                    text = complete + (b"\n" if timestamps else b"")
                    if timestamps:   # seen now, as they arrive
                        text = b"".join(f"{now_rfc3339()} ".encode() + line
                                        for line in text.splitlines(keepends=True))
                    sys.stdout.buffer.write(text)
                    sys.stdout.flush()
            else:
                time.sleep(0.2)
    return 0
