"""The local kubelet with real processes (hostNetwork pods in a node netns of its own):
- a container's restart is counted when it starts again, as Kubernetes' restartCount is, not when it exits;
  during the back-off the count is the restarts so far and the exit is the last state;
- readiness probes from the node's netns, on the kubelet's loop: an httpGet probe that answers 200 makes
  the container ready, a tcpSocket probe to a port nothing listens on keeps it not ready."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import types

import pytest

from shoal import netns, store
from shoal.local import kubelet as kubelet_module
from shoal.local.kubelet import RESTART_MARKER, Kubelet, remove_cgroup
from shoal.local.layout import Layout
from support.root import needs_root

pytestmark = needs_root("a network namespace and a cgroup for the pod")

WAIT = 20.0  # seconds a state may take to come, at the most (never asserted)


@pytest.fixture
def kubelet(tmp_path):
    layout = Layout(f"krestart{os.getpid()}")
    cluster_store = store.Store(layout.cluster, root=tmp_path / "run")
    cluster_store.init()
    netns.create(layout.node_netns(1))
    try:
        yield Kubelet(layout, cluster_store)
    finally:
        remove_cgroup(layout.cgroup_dir)
        netns.remove(layout.node_netns(1))
        shutil.rmtree(layout.run_dir, ignore_errors=True)


async def until(state, what: str):
    """Waits for `state()` to be truthy (it is read in process, so no poll misses a step); returns it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not (found := state()):
        if loop.time() > deadline:
            raise AssertionError(f"waited {WAIT:g}s for {what}")
        await asyncio.sleep(0.01)
    return found


async def started_pod(kubelet: Kubelet, name: str, script: str, probe: dict | None = None):
    container = {"name": "app", "command": ["sh", "-c", script], **({"readinessProbe": probe} if probe else {})}
    kubelet.store.apply({"kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                         "spec": {"nodeName": "node1", "hostNetwork": True, "containers": [container]}})
    await kubelet.start(kubelet.store.get("Pod", "default", name), [])
    runtime = kubelet.pods[("default", name)]
    return runtime, runtime.containers[0]


def test_a_container_in_back_off_has_its_exit_counted_as_no_restart_yet(kubelet, monkeypatch):
    monkeypatch.setattr(kubelet_module, "BACKOFF_START", 3600.0)  # the restart stays ahead for the whole test

    async def scenario():
        runtime, container = await started_pod(kubelet, "crasher", "echo run; exit 3")
        try:
            await until(lambda: container.waiting_reason == "CrashLoopBackOff", "the back-off")
            status = container.status()
            assert status["restartCount"] == 0
            assert status["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
            assert status["lastState"]["terminated"]["exitCode"] == 3
            log = kubelet.layout.pod_log("default", "crasher", "app").read_text()
            assert log == "run\n"  # no restart marker: no restart has happened
        finally:
            await kubelet.stop(runtime)

    asyncio.run(scenario())


def test_a_restart_is_counted_when_the_container_runs_again(kubelet):
    async def scenario():
        # the first run exits 3, the second stays up
        runtime, container = await started_pod(kubelet, "once", "test -e ran || { touch ran; exit 3; }; exec sleep 600")
        try:
            await until(lambda: container.running and container.last_exit == 3, "the second run")
            status = container.status()
            assert status["restartCount"] == 1 and "running" in status["state"]
            assert status["lastState"]["terminated"]["exitCode"] == 3
            log = kubelet.layout.pod_log("default", "once", "app").read_text()
            assert log.count(RESTART_MARKER) == 1 and f"{RESTART_MARKER}1 of container app" in log
        finally:
            await kubelet.stop(runtime)

    asyncio.run(scenario())


def test_readiness_probes_from_the_node_netns(kubelet):
    serve = f"exec {sys.executable} -m http.server 18080 --bind 127.0.0.1"

    async def scenario():
        served, web = await started_pod(kubelet, "web", serve, {"httpGet": {"path": "/", "port": 18080}})
        closed, idle = await started_pod(kubelet, "idle", "exec sleep 600", {"tcpSocket": {"port": 18081}})
        try:
            await until(lambda: web.ready, "the httpGet probe to pass")
            await until(lambda: idle.running, "the idle container to run")
            assert not await kubelet_module.probe_once(closed, idle.probe)
            assert await kubelet_module.probe_once(closed, {"tcpSocket": {"port": 18080}})  # the same node netns
            assert not idle.ready
        finally:
            await kubelet.stop(served)
            await kubelet.stop(closed)

    asyncio.run(scenario())


def test_a_stopped_pod_leaves_no_probe_or_log_stamping_behind(kubelet):
    """Stopping a pod cancels its containers' runs while they wait on the process: their probes went on
    probing the gone pod, and their log stamping went on, for the daemon's whole life."""
    async def scenario():
        before = asyncio.all_tasks()
        runtime, container = await started_pod(kubelet, "probed", "exec sleep 600", {"tcpSocket": {"port": 18082}})
        await until(lambda: container.running, "the container to run")
        await kubelet.stop(runtime)
        await asyncio.sleep(0)  # cancelled tasks finish on the loop's next turn
        assert asyncio.all_tasks() == before
        assert kubelet._logs == {}

    asyncio.run(scenario())


def test_a_probe_of_a_node_whose_netns_is_gone_fails_and_does_not_raise():
    runtime = types.SimpleNamespace(host_network=True, ip="127.0.0.1", node_netns="shoal-no-such-node-netns")
    assert asyncio.run(kubelet_module.probe_once(runtime, {"tcpSocket": {"port": 1}})) is False
