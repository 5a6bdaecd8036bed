"""Which processes Prometheus scrapes, found the way Kubernetes service discovery finds them.

A pod that wants to be scraped says so with the annotations every Prometheus
set-up for Kubernetes reads: `prometheus.io/scrape: "true"`,
`prometheus.io/port` and (optionally) `prometheus.io/path`. The local
cluster's ztunnels, node agents, control plane and the waypoints the control
plane deploys carry them, and so do the manifests in `daemonset/`.

`scrape_groups` is pure: pods in, Prometheus file_sd target groups out (the
JSON that `file_sd_configs` reads), with the labels a `kubernetes_sd_configs`
job relabels into (`namespace`, `pod`, `node`, `app`, and `job` named after
the mesh component). `run` is its thin driver: it lists the local store's
pods every few seconds and rewrites the file when they changed, atomically,
as Prometheus expects of a file it watches.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

SCRAPE = "prometheus.io/scrape"
PORT = "prometheus.io/port"
PATH = "prometheus.io/path"
COMPONENT_LABEL = "shoal.io/component"
WAYPOINT_LABEL = "gateway.networking.k8s.io/gateway-name"


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The annotations that ask for a pod's `port` to be scraped (what the pod templates carry)."""
    return {SCRAPE: "true", PORT: str(port), PATH: path}


@dataclass(frozen=True)
class Target:
    address: str                    # host:port
    labels: tuple[tuple[str, str], ...]


def job_of(pod: dict) -> str:
    """The mesh part a pod is (ztunnel, node-agent, control-plane, waypoint), else "pods"."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(COMPONENT_LABEL):
        return labels[COMPONENT_LABEL]
    if labels.get(WAYPOINT_LABEL):
        return "waypoint"
    return "pods"


def target_of(pod: dict) -> Target | None:
    """Where to scrape a pod, or None: not annotated for it, not running, no address, or a bad port."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    if str(annotations.get(SCRAPE, "")).lower() != "true" or status.get("phase") != "Running":
        return None
    ip = status.get("podIP") or status.get("hostIP")
    try:
        port = int(annotations.get(PORT, ""))
    except ValueError:
        return None
    if not ip or not 0 < port < 65536:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    labels = {"job": job_of(pod), "namespace": str(meta.get("namespace", "")), "pod": str(meta.get("name", "")),
              "node": str((pod.get("spec") or {}).get("nodeName", "")),
              "app": str((meta.get("labels") or {}).get("app", "")),
              "__metrics_path__": str(annotations.get(PATH) or "/metrics")}
    return Target(f"{host}:{port}", tuple(sorted(labels.items())))


def scrape_groups(pods: Iterable[dict]) -> list[dict]:
    """file_sd target groups, one per target, in a stable order (so an unchanged set writes the same bytes)."""
    targets = sorted({t for t in map(target_of, pods) if t is not None}, key=lambda t: (t.labels, t.address))
    return [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]


def write_if_changed(path: Path, groups: list[dict]) -> bool:
    """Writes the groups to `path` through a rename (Prometheus never reads half a file); False if unchanged."""
    text = json.dumps(groups, indent=1) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return True


def run(cluster: str, out: Path, interval: float = 2.0) -> None:
    """Keeps `out` in step with the local cluster's pods until killed (the pod's container)."""
    from shoal.local.layout import Layout
    store = Layout(cluster).store()
    while True:
        pods, _ = store.list("Pod")
        write_if_changed(out, scrape_groups(pods))
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write Prometheus file_sd targets for a local cluster's pods")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--out", required=True, type=Path, help="the file_sd JSON file to keep up to date")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between looks at the store")
    args = parser.parse_args(argv)
    run(args.cluster, args.out, args.interval)


if __name__ == "__main__":
    main()
