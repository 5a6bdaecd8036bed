"""A `shoal local` cluster, driven through the `shoal` command as a user would drive it.

    with running_cluster("zt", nodes=2, redirect="ebpf") as cluster:
        cluster.apply(MANIFEST)
        cluster.exec("client", "curl", "-s", "http://server", namespace="shop")

`running_cluster` downs the cluster on the way out, also after an `up` that
failed half-way, so a fixture built on it never leaves one behind. `in_each`
runs the same steps in several clusters at once (one per redirect mode, say),
so that their waits overlap; `running_in_each_mode` brings up such clusters,
one per redirect mode, side by side:

    with running_in_each_mode("zt", prepare=apply_and_wait) as clusters:
        in_each(clusters, check_something)      # each check in both modes at once
"""

from __future__ import annotations

import json
import os
import subprocess
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from shoal.local.layout import Layout

from support import metrics
from support.cli import shoal
from support.polling import eventually

Manifest = str | list[dict]


def unique_name(prefix: str) -> str:
    """A cluster name of this test process, so that parallel runs do not meet."""
    return f"{prefix}{os.getpid() % 100000}"


class LocalCluster:
    def __init__(self, name: str) -> None:
        self.name = name
        self.layout = Layout(name)
        self.redirect = "iptables"      # what the last `up` asked for

    def run(self, command: str, verb: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """`shoal COMMAND VERB --cluster NAME ARGS...` (before any `--` of exec); kwargs as for `cli.shoal`."""
        return shoal(command, verb, "--cluster", self.name, *args, **kwargs)

    def __call__(self, verb: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """`shoal local VERB --cluster NAME ARGS...`."""
        return self.run("local", verb, *args, **kwargs)

    def up(self, nodes: int = 2, redirect: str = "iptables") -> subprocess.CompletedProcess:
        self.redirect = redirect
        return self("up", "--nodes", str(nodes), "--redirect", redirect)

    def down(self) -> subprocess.CompletedProcess:
        return self("down", check=False)

    def apply(self, manifest: Manifest, check: bool = True) -> subprocess.CompletedProcess:
        return self("apply", "-f", "-", input=_text(manifest), check=check)

    def delete(self, manifest: Manifest, check: bool = True) -> subprocess.CompletedProcess:
        return self("delete", "-f", "-", input=_text(manifest), check=check)

    def exec(self, pod: str, *argv: str, namespace: str = "default", check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
        return self("exec", "-n", namespace, pod, "--", *argv, check=check, timeout=timeout)

    def curl(self, pod: str, url: str, *options: str, namespace: str = "default",
             max_time: float = 5) -> subprocess.CompletedProcess:
        """curl from inside a pod; its exit code is the test's to judge."""
        return self.exec(pod, "curl", "-sS", "--max-time", f"{max_time:g}", *options, url, namespace=namespace,
                         check=False, timeout=max_time + 30)

    def logs(self, pod: str, namespace: str = "default") -> str:
        return self("logs", "-n", namespace, pod).stdout

    def items(self, kind: str, namespace: str = "default") -> list[dict]:
        return json.loads(self("get", kind, "-n", namespace, "-o", "json").stdout)["items"]

    def pods(self, namespace: str = "default", **labels: str) -> dict[str, dict]:
        """The namespace's pods by name; with `labels`, only those that carry them all."""
        return {p["metadata"]["name"]: p for p in self.items("pods", namespace)
                if labels.items() <= (p["metadata"].get("labels") or {}).items()}

    def pod_ip(self, name: str, namespace: str = "default") -> str:
        return self.pods(namespace)[name]["status"]["podIP"]

    def wait_pods_ready(self, namespace: str, count: int, timeout: float = 60) -> dict[str, dict]:
        def ready():
            pods = self.pods(namespace)
            ready = {n: p for n, p in pods.items() if any(c["type"] == "Ready" and c["status"] == "True"
                                                          for c in (p.get("status") or {}).get("conditions", []))}
            return ready if len(ready) >= count else None

        def state():
            statuses = {n: p.get("status") for n, p in self.pods(namespace).items()}
            return f"{count} ready pods in {namespace}: {json.dumps(statuses, indent=1)[:3000]}"
        return eventually(ready, timeout, state, interval=0.2)

    def scrape(self, node: int, port: int, host: str = "127.0.0.1") -> str:
        """/metrics of a process on node N (the ztunnel's 15020, the node agent's 15022, ...)."""
        return metrics.scrape(port, netns=self.layout.node_netns(node), host=host)


Cluster = TypeVar("Cluster", bound=LocalCluster)


@contextmanager
def running_cluster(prefix: str, nodes: int = 2, redirect: str = "iptables",
                    kind: type[Cluster] = LocalCluster) -> Iterator[Cluster]:
    """A cluster named after `prefix` and this process, up for the body; `kind` may add a test's own views."""
    cluster = kind(unique_name(prefix))
    try:
        cluster.up(nodes, redirect)
        yield cluster
    finally:
        cluster.down()


REDIRECT_MODES = ("iptables", "ebpf")


@contextmanager
def running_in_each_mode(prefix: str, nodes: int = 2, kind: type[Cluster] = LocalCluster,
                         prepare: Callable[[Cluster], object] | None = None) -> Iterator[dict[str, Cluster]]:
    """A cluster per redirect mode, by mode, named after `prefix`, the mode's initial and this process; brought
    up, then `prepare(cluster)`, in each at once; all downed on the way out, also after a failed up."""
    clusters = {mode: kind(unique_name(f"{prefix}{mode[0]}")) for mode in REDIRECT_MODES}

    def up(mode: str) -> None:
        clusters[mode].up(nodes, mode)
        if prepare is not None:
            prepare(clusters[mode])
    try:
        in_each({mode: mode for mode in clusters}, up)
        yield clusters
    finally:
        in_each(clusters, lambda cluster: cluster.down())


Each = TypeVar("Each")
Outcome = TypeVar("Outcome")


def in_each(clusters: dict[str, Each], step: Callable[[Each], Outcome]) -> dict[str, Outcome]:
    """`step(cluster)` in every cluster at once, a thread each; what each returned, by key. If the step failed
    in any of them, once all are done, an AssertionError naming the key of each failure, with its traceback.
    A value may also be what a step needs to make its own cluster (a redirect mode, say)."""
    with ThreadPoolExecutor(max(1, len(clusters))) as pool:
        futures = {key: pool.submit(step, cluster) for key, cluster in clusters.items()}
        outcomes, failures = {}, []
        for key, future in futures.items():
            try:
                outcomes[key] = future.result()
            except BaseException as error:   # noqa: BLE001 - pytest's fail/skip too: reported whole, below
                failures.append(f"in the {key} cluster: " + "".join(traceback.format_exception(error)).rstrip())
    if failures:
        raise AssertionError("\n\n".join(failures))
    return outcomes


def _text(manifest: Manifest) -> str:
    if isinstance(manifest, str):
        return manifest
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest})
