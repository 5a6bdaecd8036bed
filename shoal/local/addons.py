"""Addons of a local cluster: what `shoal local up --addons NAME,...` runs beside the mesh.

`prometheus`: Debian's `prometheus` (installed by scripts/setup.sh) in a pod
of its own on node 1, `shoal-system/prometheus`, on the node's network
(`<node 1's IP>:9090`, reachable from every node and pod). A second
container of the pod, `shoal.observe.targets`, keeps its file_sd targets in
step with the store's pods, as Kubernetes service discovery would: every
ztunnel, node agent, waypoint and the control plane, by their
`prometheus.io/*` annotations. Its configuration, recording rules and data
live under the cluster's run directory, so `shoal local down` removes them
with the rest (the pod's processes go with its cgroup).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shoal.local.components import SYSTEM_NAMESPACE
from shoal.local.errors import ClusterError
from shoal.local.layout import Layout, node_ip, node_name
from shoal.observe import prometheus

PROMETHEUS_POD = "prometheus"
ADDON_LABEL = "shoal.io/addon"


@dataclass(frozen=True)
class Addon:
    name: str
    needs: str                                  # the program it runs, which scripts/setup.sh installs
    pod: Callable[[Layout], dict]


def prometheus_dir(layout: Layout) -> Path:
    return layout.run_dir / "addons" / "prometheus"


def prometheus_url(layout: Layout) -> str:
    """Where the cluster's Prometheus answers, from inside any node's network namespace."""
    return f"http://{node_ip(1)}:{prometheus.PORT}"


def prometheus_pod(layout: Layout) -> dict:
    """Writes the configuration and rules, and returns the pod that runs Prometheus and its targets writer."""
    root = prometheus_dir(layout)
    (root / "data").mkdir(parents=True, exist_ok=True)
    targets, rules, config = root / "targets.json", root / "rules.yml", root / "prometheus.yml"
    if not targets.exists():
        targets.write_text("[]\n")   # Prometheus starts before the first pass of the writer
    rules.write_text(prometheus.rules_yaml())
    config.write_text(prometheus.config_yaml(str(targets), str(rules)))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": PROMETHEUS_POD, "namespace": SYSTEM_NAMESPACE,
                     "labels": {"app": "prometheus", ADDON_LABEL: "prometheus"}},
        "spec": {"nodeName": node_name(1), "hostNetwork": True, "containers": [
            {"name": "targets", "command": [sys.executable, "-m", "shoal.observe.targets", "--cluster",
                                            layout.cluster, "--out", str(targets)]},
            {"name": "prometheus", "command": [
                "prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=0.0.0.0:{prometheus.PORT}", "--storage.tsdb.retention.time=6h",
                "--web.console.templates=/nonexistent", "--web.console.libraries=/nonexistent"],
             "readinessProbe": {"httpGet": {"port": prometheus.PORT, "path": "/-/ready"}}},
        ]},
    }


ADDONS = {"prometheus": Addon("prometheus", "prometheus", prometheus_pod)}


def parse(text: str | None) -> list[str]:
    """`--addons a,b` -> ["a", "b"]; a name that is no addon is an error naming the ones there are."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in ADDONS]
    if unknown:
        raise ClusterError(f"unknown addon {', '.join(unknown)}; the addons are: {', '.join(sorted(ADDONS))}")
    return list(dict.fromkeys(names))


def install(layout: Layout, names: list[str], progress=print) -> list[str]:
    """Runs the named addons in a cluster that is up; returns the pods it started (none when already there)."""
    from shoal.local.cluster import wait_ready

    missing = [ADDONS[n].needs for n in names if shutil.which(ADDONS[n].needs) is None]
    if missing:
        raise ClusterError(f"{', '.join(missing)} is not installed: run scripts/setup.sh (as root) first")
    store = layout.store()
    started = []
    for name in names:
        pod = ADDONS[name].pod(layout)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if store.get("Pod", *key) is None:
            store.apply(pod)
            started.append(f"{key[0]}/{key[1]}")
        progress(f"addon {name}: {key[0]}/{key[1]} on {pod['spec']['nodeName']}")
    wait_ready(layout, [tuple(p.split("/", 1)) for p in started], progress)
    return started
