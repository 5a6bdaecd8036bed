"""The local cluster's daemon: the controllers, the scheduler, and every node's kubelet and kube-proxy.

`shoal local up` starts it once per cluster (detached, in its own cgroup).
It is level-triggered: any change in the store marks the cluster dirty, and
one reconcile pass then lists what it needs and converges, so a missed or
repeated event costs nothing. Writes that would change nothing are skipped,
which is what keeps the loop from feeding itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from shoal import lifecycle, log
from shoal.local import controllers, cri_pods, runtime_containerd, services
from shoal.local.kubelet import Kubelet
from shoal.local.layout import Layout, cluster_name, families, node_index
from shoal.store import Expired, Store

logger = log.get("shoal.local.daemon")

WATCHED = frozenset({"Namespace", "Pod", "Deployment", "Service", "Node"})


class Daemon:
    def __init__(self, layout: Layout, ip_family: str = "ipv4") -> None:
        self.layout = layout
        self.store: Store = layout.store()
        self.kubelet = Kubelet(layout, self.store, ip_family)
        self.families = families(ip_family)
        self.proxy_rules: dict[tuple[int, str], str] = {}
        self.dirty = asyncio.Event()
        if runtime_containerd.runtime_of(layout) == "containerd":
            self.kubelet.cri = cri_pods.backend(layout, self.kubelet)

    def nodes(self) -> list[int]:
        nodes, _ = self.store.list("Node")
        return sorted(node_index(n["metadata"]["name"]) for n in nodes)

    async def watch(self) -> None:
        rv = self.store.resource_version()
        while True:
            try:
                async for event in self.store.awatch(rv, WATCHED, bookmarks=False):
                    rv = event.resource_version
                    self.dirty.set()
            except Expired:
                rv = self.store.resource_version()
                self.dirty.set()

    async def reconcile(self) -> None:
        store = self.store
        nodes = self.nodes()
        namespaces = {n["metadata"]["name"] for n in store.list("Namespace")[0]}
        pods = store.list("Pod")[0]

        # Namespaces own their objects: what is left in a deleted namespace goes.
        orphans = [(kind, o["metadata"]["namespace"], o["metadata"]["name"])
                   for kind in ("Deployment", "Service", "Pod", "Endpoints", "ServiceAccount")
                   for o in store.list(kind)[0] if o["metadata"]["namespace"] not in namespaces]
        if orphans:
            store.delete_many(orphans)
            pods = store.list("Pod")[0]

        deployments = store.list("Deployment")[0]
        create, delete = controllers.reconcile_deployments(deployments, pods)
        if create or delete:
            store.apply_many(create)
            store.delete_many(delete)
            pods = store.list("Pod")[0]

        for (namespace, name), node in controllers.schedule(pods, len(nodes)).items():
            store.mutate("Pod", namespace, name, lambda p, n=node: p["spec"].__setitem__("nodeName", n))
        for pod in pods:
            reason = controllers.unschedulable(pod, len(nodes))
            if reason and (pod.get("status") or {}).get("reason") != "Unschedulable":
                store.update_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"],
                                    {"phase": "Pending", "reason": "Unschedulable", "message": reason})
        pods = store.list("Pod")[0]

        service_list = store.list("Service")[0]
        await self.kubelet.sync([p for p in pods if not controllers.unschedulable(p, len(nodes))], service_list)

        endpoints = controllers.endpoints_objects(service_list, pods)
        store.apply_many(endpoints)
        live = {(e["metadata"]["namespace"], e["metadata"]["name"]) for e in endpoints}
        stale = [("Endpoints", e["metadata"]["namespace"], e["metadata"]["name"])
                 for e in store.list("Endpoints")[0]
                 if (e["metadata"]["namespace"], e["metadata"]["name"]) not in live]
        if stale:
            store.delete_many(stale)

        for family in self.families:
            with_endpoints = [(s, services.endpoints(s, pods, family)) for s in service_list]
            rules = services.proxy_rules(with_endpoints, family)
            for node in nodes:
                if self.proxy_rules.get((node, family)) != rules:
                    await asyncio.to_thread(services.apply_proxy_rules, self.layout.node_netns(node), rules, family)
                    self.proxy_rules[(node, family)] = rules

    async def run(self, shutdown: lifecycle.Shutdown) -> int:
        self.layout.daemon_pidfile.write_text(str(os.getpid()))
        tasks = [asyncio.create_task(self.watch()), asyncio.create_task(self.kubelet.status_writer()),
                 asyncio.create_task(self.kubelet.log_stamper())]
        stopping = asyncio.create_task(shutdown.wait())
        self.dirty.set()
        logger.info("local cluster daemon running", cluster=self.layout.cluster, nodes=self.nodes())
        try:
            while not shutdown.stopping.is_set():
                changed = asyncio.create_task(self.dirty.wait())
                await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if shutdown.stopping.is_set():
                    break
                self.dirty.clear()
                await asyncio.sleep(0.005)  # let a burst of events land in one pass
                try:
                    await self.reconcile()
                except Exception as e:  # keep running: the next pass retries everything
                    logger.error("reconcile failed", error=f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.5)
                    self.dirty.set()
        finally:
            for task in tasks:
                task.cancel()
            await self.kubelet.stop_all()
            self.layout.daemon_pidfile.unlink(missing_ok=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal-local-daemon")
    parser.add_argument("--cluster", default="default", type=cluster_name)
    parser.add_argument("--log-format", default="json")
    args = parser.parse_args(argv)
    log.setup(args.log_format)
    from shoal.local.cluster import ClusterConfig

    layout = Layout(args.cluster)
    config = ClusterConfig.read(layout)
    daemon = Daemon(layout, config.ip_family if config else "ipv4")

    # The default asyncio loop, not uvloop: the kubelet relies on preexec_fn for its processes.
    async def runner() -> int:
        shutdown = lifecycle.Shutdown()
        shutdown.install()
        return await daemon.run(shutdown)

    return asyncio.run(runner())


if __name__ == "__main__":
    sys.exit(main())
