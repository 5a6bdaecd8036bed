"""A pod that should be meshed but cannot be is reported: log, metric, and a Warning Event about the pod.

- the agent (in-process, fake redirection) reports a running pod of an enrolled namespace whose sandbox
  is nowhere, once, however often it reconciles, and counts it in shoal_node_agent_unmeshable_pods;
- the Kubernetes source writes the Event to the API (the list/watch double, real client), and the
  local source to the local store, where `shoal local events` reads it.
"""

from __future__ import annotations

import asyncio

from kubernetes import client

from node_agent import reconcile
from node_agent.sources import UNMESHABLE, KubeSource, LocalSource
from shoal import store
from support.kube_api import KubeDouble
from support.polling import eventually_async
from test_agent_logic import FakeRedirection, FakeSource, ns, running_agent


class ReportingSource(FakeSource):
    def __init__(self, pods, namespaces):
        super().__init__(pods, namespaces)
        self.reports = []

    async def report(self, namespace, name, uid, message):
        self.reports.append((namespace, name, uid, message))


def test_a_running_enrolled_pod_with_no_sandbox_is_reported_once(tmp_path):
    lost = {"metadata": {"name": "lost", "namespace": "demo", "uid": "u-lost"}, "spec": {"nodeName": "node1"},
            "status": {"phase": "Running", "podIP": "198.19.1.8"}}

    async def main():
        source = ReportingSource({"demo/lost": lost}, {"demo": ns(True)})
        async with running_agent(tmp_path, source, FakeRedirection()) as agent:
            await source.ready.wait()
            await eventually_async(lambda: source.reports, 10, "the report")
            for _ in range(3):
                await source.change()
                await asyncio.sleep(0.1)  # resyncs go by too
            assert source.reports == [("demo", "lost", "u-lost", reconcile.NO_SANDBOX)]
            assert agent.metrics.unmeshable._value.get() == 1
            assert agent.want == {}

    asyncio.run(main())


def test_the_kube_source_writes_a_warning_event_about_the_pod():
    with KubeDouble() as double:
        config = client.Configuration()
        config.host = double.url
        source = KubeSource("node1", api_client=client.ApiClient(config))
        asyncio.run(source.report("demo", "lost", "u-lost", "its sandbox was not found"))
        asyncio.run(source.report("demo", "lost", "u-lost", "its sandbox was not found"))  # the same: one Event
        events = double.events
    assert len(events) == 1, events
    event = events[0]
    assert (event["reason"], event["type"], event["message"]) == (UNMESHABLE, "Warning", "its sandbox was not found")
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "lost", "namespace": "demo",
                                       "uid": "u-lost"}
    assert event["source"] == {"component": "shoal-node-agent", "host": "node1"}


def test_the_local_source_writes_the_event_into_the_store(tmp_path):
    cluster = store.Store("evtest", root=tmp_path / "run")
    cluster.init()
    source = LocalSource("evtest", "node1", root=tmp_path / "run")
    asyncio.run(source.report("demo", "lost", "u-lost", "its sandbox was not found"))
    events = cluster.list("Event")[0]
    assert [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in events] == \
        [("lost", UNMESHABLE, "its sandbox was not found")]
