"""The node agent's Kubernetes source against the list/watch double (support.kube_api.KubeDouble), real client."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from node_agent.sources import KubeSource
from shoal.kube_client import Backoff
from shoal.contracts import namespace_ambient

from support.kube_api import KubeDouble
from support.polling import eventually_async


def pod(name, node, uid=None):
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "demo", "uid": uid or f"uid-{name}"},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "198.19.1.9"}}


def namespace(annotations=None):
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "demo", "annotations": annotations or {}}}


class Recorder:
    def __init__(self):
        self.snapshots = []

    async def __call__(self, pods, namespaces):
        self.snapshots.append((pods, namespaces))

    async def until(self, predicate, timeout=10.0):
        """The latest snapshot, once `predicate(pods, namespaces)` holds for it."""
        def last():
            return self.snapshots[-1] if self.snapshots and predicate(*self.snapshots[-1]) else None
        return await eventually_async(last, timeout, lambda: f"the snapshot; the last one: "
                                      f"{self.snapshots[-1] if self.snapshots else None}", interval=0.02)


def enrolled(namespaces):
    return {n for n, obj in namespaces.items() if namespace_ambient(obj)}


@pytest.fixture
def double():
    with KubeDouble() as d:
        yield d


def test_lists_then_follows_pods_of_its_node_and_namespaces_and_relists_after_410(double):
    async def main():
        double.add(namespace())
        double.add(pod("a", "node1"))
        double.add(pod("elsewhere", "node2"))
        config = client.Configuration()
        config.host = double.url
        api = client.ApiClient(config)
        source = KubeSource("node1", api_client=api)
        recorder = Recorder()
        task = asyncio.create_task(source.run(recorder))
        try:
            pods, namespaces = await recorder.until(lambda p, n: "demo/a" in p and "demo" in n)
            assert set(pods) == {"demo/a"}  # only this node's pods
            assert double.list_requests("pods")[0]["fieldSelector"] == "spec.nodeName=node1"

            double.modify(namespace({"shoal.io/dataplane-mode": "ambient"}))
            await recorder.until(lambda p, n: enrolled(n) == {"demo"})
            double.add(pod("b", "node1"))
            await recorder.until(lambda p, n: set(p) == {"demo/a", "demo/b"})
            double.delete("Pod", "demo", "a")
            await recorder.until(lambda p, n: set(p) == {"demo/b"})

            # History compacted and streams dropped: the next watch gets 410 and lists again.
            lists_before = len(double.list_requests("pods"))
            double.behind_the_watch(lambda d: d.add(pod("c", "node1")))
            await recorder.until(lambda p, n: set(p) == {"demo/b", "demo/c"})
            await asyncio.sleep(0)
            assert len(double.list_requests("pods")) > lists_before
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            api.close()

    asyncio.run(main())


class Running:
    """The source running against the double, with a short backoff."""

    def __init__(self, double):
        self.api = double.api_client()
        self.source = KubeSource("node1", api_client=self.api, backoff=Backoff(initial=0.02, maximum=0.2))
        self.recorder = Recorder()

    async def __aenter__(self):
        self.task = asyncio.create_task(self.source.run(self.recorder))
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.api.close()


def test_a_pod_being_deleted_stays_until_it_is_gone(double):
    async def main():
        double.store.hold_pods = True
        double.add(namespace())
        double.add(pod("a", "node1"))
        async with Running(double) as run:
            await run.recorder.until(lambda p, n: "demo/a" in p)
            with double.api_client() as c:
                client.CoreV1Api(c).delete_namespaced_pod("a", "demo")
            pods, _ = await run.recorder.until(
                lambda p, n: "demo/a" in p and p["demo/a"]["metadata"].get("deletionTimestamp"))
            double.finish_deletion("Pod", "demo", "a")          # the kubelet stopped its containers
            await run.recorder.until(lambda p, n: p == {})

    asyncio.run(main())


@pytest.mark.parametrize("code", [401, 403, 429, 500])
def test_failures_are_retried_with_backoff_and_nothing_is_decided_before_the_first_list(double, code):
    async def main():
        double.add(namespace())
        double.add(pod("a", "node1"))
        double.fail(code, path="/pods", times=3)
        async with Running(double) as run:
            await run.recorder.until(lambda p, n: set(p) == {"demo/a"})
            assert all("demo/a" in pods for pods, _ in run.recorder.snapshots)   # never an empty view first
            assert not double.faults
            double.fail(code, path="/pods", watch=True)
            double.drop_watches()
            double.add(pod("b", "node1"))
            await run.recorder.until(lambda p, n: set(p) == {"demo/a", "demo/b"})

    asyncio.run(main())
