"""The agent's decisions in-process: a fake redirection and source, the real hand-off over a socket.

No root, no kernel: what is checked is the order of things (the ztunnel acks
before redirection goes in; a nack installs nothing; redirection outlives the
ztunnel's absence; a ztunnel that comes back gets the whole set again).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

from shoal.handoff_io import HandoffClient

from node_agent.agent import AgentConfig, NodeAgent
from support.polling import eventually_async


class FakeCapture:
    mode = "iptables"


class FakeRedirection:
    """Records what would be installed; `recorded()` is the ledger."""

    def __init__(self):
        self.mode = "fake"
        self.capture = FakeCapture()
        self.installed_pods = {}
        self.log = []
        self.listeners = []
        self.stale_probes = False  # as the kubelet's cgroup being made anew would make it

    def install(self, pod, *, sync_probes=True):
        self.installed_pods[pod.uid] = pod
        self.log.append(("install", pod.uid))

    def remove(self, pod, *, sync_probes=True):
        self.installed_pods.pop(pod.uid, None)
        self.log.append(("remove", pod.uid))

    def installed(self, pod):
        return pod.uid in self.installed_pods

    def recorded(self):
        return dict(self.installed_pods)

    def sync_probes(self):
        self.log.append(("probes", tuple(sorted(self.installed_pods))))
        self.stale_probes = False

    def probes_stale(self):
        return self.stale_probes

    def set_inbound_listener(self, pod, fd):
        self.listeners.append((pod.uid, os.fstat(fd).st_ino))

    def attach_ztunnel(self, cgroup):
        pass

    def close(self):
        pass


class FakeSource:
    def __init__(self, pods, namespaces):
        self.pods, self.namespaces = pods, namespaces
        self.on_change = None
        self.ready = asyncio.Event()

    async def run(self, on_change):
        self.on_change = on_change
        await on_change(dict(self.pods), dict(self.namespaces))
        self.ready.set()
        await asyncio.Event().wait()

    async def change(self):
        await self.on_change(dict(self.pods), dict(self.namespaces))


def pod(name, uid):
    return {"metadata": {"name": name, "namespace": "demo", "uid": uid},
            "spec": {"nodeName": "node1", "serviceAccountName": "sa"},
            "status": {"phase": "Running", "podIP": "198.19.1.7", "shoal": {"netns": "/proc/self/ns/net",
                                                                             "cgroup": "/sys/fs/cgroup"}}}


def ns(enrolled):
    return {"metadata": {"name": "demo", "annotations": {"shoal.io/dataplane-mode": "ambient"} if enrolled else {}}}


class GatedZtunnel:
    """Acks an add only when told to; can refuse."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.refuse = False
        self.adds = []
        self.deletes = []
        self.listener = None

    async def add_workload(self, workload, netns_fd):
        os.close(netns_fd)
        self.adds.append(workload.uid)
        await self.gate.wait()
        if self.refuse:
            raise RuntimeError("cannot serve this pod")
        import socket
        self.listener = self.listener or socket.socket()
        return self.listener

    async def del_workload(self, uid):
        self.deletes.append(uid)


@asynccontextmanager
async def running_agent(tmp_path, source, redirection, resync_seconds=0.05):
    """The agent over `source` and `redirection` for the body; its hand-off socket is tmp_path/z.sock."""
    config = AgentConfig(node="node1", socket=tmp_path / "z.sock", metrics_port=0, resync_seconds=resync_seconds)
    agent = NodeAgent(config, redirection, source)
    stopping = asyncio.Event()
    task = asyncio.create_task(agent.run(stopping))
    try:
        yield agent
    finally:
        stopping.set()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def connected(tmp_path, ztunnel):
    """`ztunnel` connected to the agent through the real HandoffClient for the body, gone after it."""
    client = HandoffClient(tmp_path / "z.sock", ztunnel, retry_seconds=0.02)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        client.stop()
        await asyncio.gather(task, return_exceptions=True)


def test_redirection_goes_in_only_after_the_ack_and_stays_when_the_ztunnel_leaves(tmp_path):
    async def main():
        source = FakeSource({"demo/a": pod("a", "uid-a")}, {"demo": ns(True)})
        redirection = FakeRedirection()
        ztunnel = GatedZtunnel()
        async with running_agent(tmp_path, source, redirection) as agent:
            async with connected(tmp_path, ztunnel):
                await eventually_async(lambda: ztunnel.adds == ["uid-a"])
                await asyncio.sleep(0.2)  # several resyncs pass: nothing goes in before the ack
                assert redirection.log == [] and agent.enrolled() == set()
                ztunnel.gate.set()
                await eventually_async(lambda: agent.enrolled() == {"uid-a"})
                assert ("install", "uid-a") in redirection.log
                assert redirection.listeners == [("uid-a", os.fstat(ztunnel.listener.fileno()).st_ino)]
                samples = {x.name: x.value for x in agent.metrics.enroll_seconds.collect()[0].samples}
                assert samples["shoal_node_agent_enroll_seconds_count"] == 1
                assert samples["shoal_node_agent_enroll_seconds_sum"] >= 0.2  # it waited for the ack

            # The ztunnel goes away: the pod stays redirected, but is no longer counted enrolled.
            await eventually_async(lambda: not agent.server.connected)
            assert redirection.installed_pods.keys() == {"uid-a"}
            assert agent.enrolled() == set()

            # It comes back: the whole set is replayed and the pod is enrolled again, not reinstalled.
            installs = redirection.log.count(("install", "uid-a"))
            async with connected(tmp_path, ztunnel):
                await eventually_async(lambda: agent.enrolled() == {"uid-a"})
                assert ztunnel.adds == ["uid-a", "uid-a"]
                assert redirection.log.count(("install", "uid-a")) == installs

    asyncio.run(main())


def test_a_refused_pod_is_not_redirected_and_is_retried(tmp_path):
    async def main():
        source = FakeSource({"demo/a": pod("a", "uid-a")}, {"demo": ns(True)})
        redirection = FakeRedirection()
        ztunnel = GatedZtunnel()
        ztunnel.refuse = True
        ztunnel.gate.set()
        async with running_agent(tmp_path, source, redirection) as agent, connected(tmp_path, ztunnel):
            await eventually_async(lambda: len(ztunnel.adds) >= 3)  # refused, then tried again at each resync
            assert redirection.log == []
            errors = agent.metrics.reconcile_errors.labels(step="ztunnel-add")._value.get()
            assert errors >= 2
            ztunnel.refuse = False
            await eventually_async(lambda: agent.enrolled() == {"uid-a"})

            # Leaving the mesh: redirection out first, then the ztunnel is told.
            source.namespaces = {"demo": ns(False)}
            await source.change()
            await eventually_async(lambda: ztunnel.deletes == ["uid-a"])
            assert redirection.installed_pods == {}
            assert redirection.log[-2:] == [("remove", "uid-a"), ("probes", ())]

    asyncio.run(main())


def test_nothing_is_decided_before_the_first_list(tmp_path):
    """A restarted agent must not read an empty world as 'remove everything'."""
    async def main():
        redirection = FakeRedirection()
        from node_agent.model import PodTarget
        kept = PodTarget("uid-a", "demo", "a", "198.19.1.7", "/proc/self/ns/net", "/sys/fs/cgroup", "sa")
        redirection.installed_pods["uid-a"] = kept

        class SlowSource(FakeSource):
            async def run(self, on_change):
                await asyncio.sleep(0.3)
                await super().run(on_change)

        source = SlowSource({"demo/a": pod("a", "uid-a")}, {"demo": ns(True)})
        async with running_agent(tmp_path, source, redirection, resync_seconds=0.02):
            await asyncio.sleep(0.15)
            assert not (tmp_path / "z.sock").exists()  # the hand-off waits for the first list
            assert redirection.installed_pods == {"uid-a": kept}
            await eventually_async(lambda: (tmp_path / "z.sock").exists())
            assert ("remove", "uid-a") not in redirection.log

    asyncio.run(main())


def test_the_probe_snat_is_written_again_when_the_kubelets_cgroup_is_new(tmp_path):
    """A kubelet restarted by systemd gets a new cgroup, which the old SNAT rule does not match."""
    async def main():
        source = FakeSource({}, {"demo": ns(True)})
        redirection = FakeRedirection()
        async with running_agent(tmp_path, source, redirection):
            await source.ready.wait()
            await asyncio.sleep(0.15)  # resyncs pass; nothing changed, nothing written
            assert ("probes", ()) not in redirection.log
            redirection.stale_probes = True
            await eventually_async(lambda: ("probes", ()) in redirection.log)  # at the next resync, no pod change

    asyncio.run(main())
