"""The control plane's translator over a large cluster: `python -m bench translate`.

What the control plane does when its source lists a cluster (and then when pods change), with no
process, store or network around it: the translator alone, fed `shoal.store.Event`s.

For each size (16,384 and 65,536 pods by default), in namespaces of 256 pods each, every other
namespace enrolled (shoal.io/dataplane-mode: ambient), each namespace with a Service selecting its pods,
and `--policies` AuthorizationPolicies (1,000) spread over the namespaces:
1. list: every Namespace, Service and policy, then every Pod, as one batch (`apply_events`), then `flush`,
   as the feed does with a source's initial list;
2. change: `--changes` pods (1,000) relabelled in one batch, then `flush`.

Figures, per pod of the batch: wall time and CPU time of apply and flush (CPU time is this process's: it
says less about other load on the machine), and the number of Workloads published as a check that the
work was done. Each size runs `--repeats` times (3) with a fresh translator; every figure is the median,
with `_min` and `_max`. Prints a table and writes bench/results/<timestamp>-translate/results.json.
"""

from __future__ import annotations

import argparse
import time

from bench.report import Run, summarize, table
from control_plane.translate import Translator
from shoal.model import Protocol, ResourceType
from shoal.store import Event

PODS_PER_NAMESPACE = 256


def cluster(pods: int, policies: int = 0) -> tuple[list[dict], list[dict]]:
    """(Namespaces, Services and policies; Pods): `pods` pods in namespaces of PODS_PER_NAMESPACE."""
    others, made = [], []
    namespaces = (pods + PODS_PER_NAMESPACE - 1) // PODS_PER_NAMESPACE
    for n in range(namespaces):
        namespace = f"ns{n}"
        labels = {"shoal.io/dataplane-mode": "ambient"} if n % 2 == 0 else {}
        others.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        others.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
                       "spec": {"selector": {"app": "web"}, "clusterIP": f"10.96.{n // 256}.{n % 256}",
                                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        for p in range(min(PODS_PER_NAMESPACE, pods - n * PODS_PER_NAMESPACE)):
            made.append(pod(namespace, p, n))
    others.extend({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": f"allow-{i}", "namespace": f"ns{i % namespaces}"},
                   "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                            "rules": [{"from": [{"source": {"namespaces": [f"ns{(i + 1) % namespaces}"]}}]}]}}
                  for i in range(policies))
    return others, made


def pod(namespace: str, p: int, n: int, version: str = "v1") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{p}", "namespace": namespace, "uid": f"uid-{n}-{p}",
                         "labels": {"app": "web", "version": version}},
            "spec": {"nodeName": f"node{p % 8 + 1}", "serviceAccountName": "web",
                     "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"10.{n // 256}.{n % 256}.{p}",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def timed(step) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of step()."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def one_run(pods: int, changes: int, policies: int) -> dict:
    others, made = cluster(pods, policies)
    translator = Translator()
    apply_wall, apply_cpu = timed(lambda: translator.apply_events(Event("ADDED", o) for o in [*others, *made]))
    flush_wall, flush_cpu = timed(translator.flush)
    workloads = translator.snapshot()[ResourceType.WORKLOAD]
    hbone = sum(1 for w in workloads.values() if w.protocol == Protocol.HBONE)
    step = max(1, len(made) // max(1, changes))
    relabelled = [{**p, "metadata": {**p["metadata"], "labels": {"app": "web", "version": "v2"}}}
                  for p in made[::step][:changes]]
    change_apply_wall, _ = timed(lambda: translator.apply_events(Event("MODIFIED", p) for p in relabelled))
    change_flush_wall, _ = timed(translator.flush)
    us = 1e6 / len(made)
    per_change = 1e6 / max(1, len(relabelled))
    return {"apply_us": apply_wall * us, "flush_us": flush_wall * us, "list_us": (apply_wall + flush_wall) * us,
            "list_cpu_us": (apply_cpu + flush_cpu) * us, "change_us": (change_apply_wall + change_flush_wall) * per_change,
            "workloads": len(workloads), "hbone": hbone}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench translate", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16384,65536", help="pod counts, comma-separated")
    parser.add_argument("--changes", type=int, default=1000, help="pods relabelled in the change batch")
    parser.add_argument("--policies", type=int, default=1000, help="AuthorizationPolicies among the objects")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; figures are medians")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: give pod counts as integers, comma-separated (16384,65536)")
    if not sizes or min(sizes) < 1 or args.repeats < 1 or args.changes < 1 or args.policies < 0:
        parser.error("--sizes needs positive pod counts, --repeats and --changes at least 1, --policies 0 or more")
    run = Run("translate", {"sizes": sizes, "changes": args.changes, "policies": args.policies,
                            "repeats": args.repeats, "pods_per_namespace": PODS_PER_NAMESPACE})
    for size in sizes:
        runs = [one_run(size, args.changes, args.policies) for _ in range(args.repeats)]
        row = {"pods": size, "workloads": runs[0]["workloads"], "hbone": runs[0]["hbone"]}
        for key in ("apply_us", "flush_us", "list_us", "list_cpu_us", "change_us"):
            row.update(summarize([r[key] for r in runs], key))
        run.add(**row)
    print(table(run.results, ["pods", "workloads", "hbone", "apply_us", "flush_us", "list_us", "list_cpu_us",
                              "change_us"], "translator, microseconds per pod (median of the repeats)"))
    print(f"results: {run.write()}")
    return 0
