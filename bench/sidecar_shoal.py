"""`sidecar-shoal`: shoal's own ztunnel run as a sidecar, one per pod, in the pod's netns.

So that ambient and sidecars are compared with the same proxy code, the
sidecar is the product's `shoal ztunnel` process, unchanged. Each pod of the
set-up gets one more container running it inside the pod's netns, with its
node's bootstrap token (the CA signs only identities with a pod on that
node), and it serves that one pod:

- The benchmark plays the node agent's part for it alone: a hand-off socket
  per pod (`shoal.handoff_io.HandoffServer`, held by `HandoffAgents` in the
  benchmark's process) that hands over the pod's own netns and nothing else.
- Once the ztunnel has taken the pod (its ack), the benchmark installs the
  pod's capture (`bench.sidecar_capture`): outbound to 15001, inbound to
  15006, HBONE on 15008 as it is; the ztunnel's own sockets carry mark 0x539.
- The pods carry Istio's `networking.istio.io/tunnel: http` label (a pod
  whose own proxy accepts HBONE), so the control plane publishes them as
  HBONE although their namespace is not enrolled and no node agent captures
  them. A sidecar ztunnel then opens HBONE (mTLS) to the other's 15008.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from shoal.contracts import CONTROL_PLANE_GRPC_PORT, READINESS_PORT, TUNNEL_HBONE, TUNNEL_LABEL
from shoal.handoff import Acked, Workload
from shoal.handoff_io import HandoffServer
from shoal.local.components import shoal_argv
from shoal.local.layout import Layout, node_index, node_ip

from bench import sidecar_capture
from bench.report import BenchError

CONTAINER = "ztunnel"
CAPTURE = sidecar_capture.ZTUNNEL
POD_LABELS = {TUNNEL_LABEL: TUNNEL_HBONE}


def socket_path(layout: Layout, namespace: str, pod: str) -> Path:
    return layout.run_dir / "bench-sidecars" / f"{namespace}_{pod}.sock"


def container(layout: Layout, namespace: str, pod: str, node: str) -> dict:
    argv = shoal_argv("ztunnel", "--cluster", layout.cluster, "--node", node,
                      "--control-plane", f"{node_ip(1)}:{CONTROL_PLANE_GRPC_PORT}",
                      "--socket", str(socket_path(layout, namespace, pod)),
                      "--token-file", str(layout.node_token(node_index(node))),
                      "--ca-bundle", str(layout.ca_bundle))
    return {"name": CONTAINER, "command": argv,
            "readinessProbe": {"httpGet": {"port": READINESS_PORT, "path": "/healthz/ready"}}}


def is_sidecar(argv: list[str]) -> bool:
    return "ztunnel" in argv and "shoal" in argv


@dataclass
class _Pod:
    namespace: str
    name: str
    server: HandoffServer
    netns_fd: int | None = None
    taken: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class HandoffAgents:
    """The node agent's part for sidecar ztunnels: one hand-off socket per pod, served from a
    thread of the benchmark's process, each handing over its own pod's netns."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sidecar-handoff", daemon=True)
        self.thread.start()
        self.pods: dict[tuple[str, str], _Pod] = {}

    def _call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def serve(self, namespace: str, name: str) -> None:
        """Listens for the pod's ztunnel; the pod itself may not exist yet (it is read at Hello)."""
        key = (namespace, name)
        if key in self.pods:
            return
        server = HandoffServer(socket_path(self.layout, namespace, name),
                               snapshot=lambda: self._snapshot(key), on_event=lambda e, _: self._event(key, e))
        self.pods[key] = _Pod(namespace, name, server)
        self._call(server.start())

    def _snapshot(self, key: tuple[str, str]) -> list[tuple[Workload, int]]:
        pod = self.pods[key]
        obj = self.layout.store().get("Pod", *key)
        if obj is None:
            return []
        if pod.netns_fd is None:
            pod.netns_fd = os.open(obj["status"]["shoal"]["netns"], os.O_RDONLY | os.O_CLOEXEC)
        spec = obj.get("spec") or {}
        workload = Workload(uid=obj["metadata"]["uid"], name=pod.name, namespace=pod.namespace,
                            service_account=spec.get("serviceAccountName") or "default")
        return [(workload, pod.netns_fd)]

    def _event(self, key: tuple[str, str], event) -> None:
        if isinstance(event, Acked):
            for fd in event.fds:
                os.close(fd)
            if event.kind == "add":
                pod = self.pods[key]
                pod.error = event.error
                pod.taken.set()

    def wait_taken(self, namespace: str, name: str, timeout: float) -> None:
        """Returns once the pod's ztunnel acked its pod; raises with the ztunnel's error or on timeout."""
        pod = self.pods[(namespace, name)]
        if not pod.taken.wait(timeout):
            raise BenchError(f"the sidecar ztunnel of {namespace}/{name} did not take its pod within {timeout:.0f}s; "
                               f"see `shoal local logs -n {namespace} {name} -c {CONTAINER} --cluster {self.layout.cluster}`")
        if pod.error:
            raise BenchError(f"the sidecar ztunnel of {namespace}/{name} refused its pod: {pod.error}")

    def capture(self, namespace: str, name: str, timeout: float = 60) -> None:
        """Waits for the ztunnel to hold the pod, then sends the pod's traffic to it."""
        self.wait_taken(namespace, name, timeout)
        sidecar_capture.install(self.layout.pod_netns(namespace, name), CAPTURE)

    def forget(self, namespace: str) -> None:
        """Stops serving every pod of `namespace` (after the namespace was deleted)."""
        for key in [k for k in self.pods if k[0] == namespace]:
            self._stop(self.pods.pop(key))

    def _stop(self, pod: _Pod) -> None:
        self._call(pod.server.close())
        if pod.netns_fd is not None:
            os.close(pod.netns_fd)
            pod.netns_fd = None

    def close(self) -> None:
        for pod in self.pods.values():
            self._stop(pod)
        self.pods.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
