"""The five set-ups of BENCHMARKS.md, each a namespace of the local cluster, and what is the mesh in each.

Every set-up gets the same three pods and one Service `server`:

    server        node2   bench.loadgen's HTTP server (8080, 1 KiB answers) and iperf3 -s (5201)
    client-cross  node1   an idle client: the benchmark execs the load generator and iperf3 in it
    client-same   node2   the same, on the server's node

and differs only in its path:

    baseline         no mesh
    ambient-l4       the namespace enrolled: ztunnel, HBONE, ztunnel
    ambient-l7       enrolled, and its Services bound to a waypoint
    sidecar-haproxy  a HAProxy sidecar in each pod, mTLS between them (bench.sidecar_haproxy)
    sidecar-haproxy-http  the same with HAProxy in `mode http`: an L7 sidecar, ambient-l7's match
    sidecar-shoal    a ztunnel sidecar in each pod, HBONE between them (bench.sidecar_shoal)

The mesh's processes, whose CPU and memory are the set-up's cost: for
ambient, the ztunnels and node agents of the nodes on the path (and the
namespace's waypoint); for sidecars, the sidecars of the two pods on the path.
The control plane serves every set-up but baseline alike, and is not counted.

`Sidecars.add_pods` puts the same sidecar into any pod list, which is how the
memory-against-pods series builds its pods.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from shoal.contracts import DATAPLANE_MODE, USE_WAYPOINT
from shoal.local.components import SYSTEM_NAMESPACE
from shoal.local.layout import Layout

from bench import sidecar_haproxy, sidecar_shoal
from bench.usage import Selector

SERVER_NODE = "node2"
PLACEMENTS = {"cross-node": ("client-cross", "node1"), "same-node": ("client-same", "node2")}
HTTP_PORT = 8080
IPERF_PORT = 5201
WAYPOINT = "waypoint"


@dataclass(frozen=True)
class SetUp:
    name: str
    namespace_labels: dict
    sidecar: str | None = None      # "haproxy", "haproxy-http" or "shoal"
    waypoint: bool = False

    @property
    def carries_tcp(self) -> bool:
        """Whether any TCP (iperf3) goes through: HAProxy in mode http answers a non-HTTP stream with 400."""
        return self.sidecar != "haproxy-http"

    @property
    def namespace(self) -> str:
        return f"bench-{self.name}"

    @property
    def ambient(self) -> bool:
        return DATAPLANE_MODE in self.namespace_labels


SETUPS = {s.name: s for s in (
    SetUp("baseline", {}),
    SetUp("ambient-l4", {DATAPLANE_MODE: "ambient"}),
    SetUp("ambient-l7", {DATAPLANE_MODE: "ambient", USE_WAYPOINT: WAYPOINT}, waypoint=True),
    SetUp("sidecar-haproxy", {}, sidecar="haproxy"),
    SetUp("sidecar-haproxy-http", {}, sidecar="haproxy-http"),
    SetUp("sidecar-shoal", {}, sidecar="shoal"),
)}


def namespace(name: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(namespace_name: str, name: str, node: str, containers: list[dict], labels: dict | None = None,
        service_account: str | None = None) -> dict:
    spec = {"nodeName": node, "containers": containers}
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace_name, "labels": labels or {}}, "spec": spec}


def idle_container() -> dict:
    return {"name": "app", "command": ["sleep", "infinity"]}


def latency_objects(setup: SetUp, body_bytes: int) -> list[dict]:
    python = sys.executable
    ns = setup.namespace
    server = pod(ns, "server", SERVER_NODE, [
        {"name": "http", "command": [python, "-m", "bench.loadgen", "server", "--port", str(HTTP_PORT),
                                     "--body-bytes", str(body_bytes)],
         "readinessProbe": {"tcpSocket": {"port": HTTP_PORT}}},
        {"name": "iperf", "command": ["iperf3", "-s", "-p", str(IPERF_PORT)]}], labels={"app": "server"})
    clients = [pod(ns, name, node, [idle_container()]) for name, node in PLACEMENTS.values()]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": ns},
               "spec": {"selector": {"app": "server"},
                        "ports": [{"name": "http", "port": HTTP_PORT}, {"name": "iperf", "port": IPERF_PORT}]}}
    return [namespace(ns, setup.namespace_labels), server, *clients, service]


class Sidecars:
    """Puts a set-up's sidecar into pods, and readies it once the pods run."""

    def __init__(self, layout: Layout, agents: "sidecar_shoal.HandoffAgents | None") -> None:
        self.layout = layout
        self.agents = agents

    def add_pods(self, kind: str | None, objects: list[dict]) -> list[dict]:
        """The objects with a sidecar container (and its labels) in every Pod."""
        if kind is None:
            return objects
        out = []
        for obj in objects:
            if obj["kind"] == "Pod":
                meta, spec = obj["metadata"], obj["spec"]
                ns, name = meta["namespace"], meta["name"]
                if is_haproxy(kind):
                    sidecar = sidecar_haproxy.container(self.layout, ns, name, haproxy_mode(kind))
                else:
                    sidecar = sidecar_shoal.container(self.layout, ns, name, spec["nodeName"])
                    meta = {**meta, "labels": {**meta.get("labels", {}), **sidecar_shoal.POD_LABELS}}
                    self.agents.serve(ns, name)
                obj = {**obj, "metadata": meta, "spec": {**spec, "containers": [*spec["containers"], sidecar]}}
            out.append(obj)
        return out

    def ready(self, kind: str | None, pods: list[dict], timeout: float = 120) -> None:
        """Once the pods run: certificates and capture (HAProxy), or capture once the ztunnel took its pod."""
        if is_haproxy(kind):
            for p in pods:
                meta, spec = p["metadata"], p["spec"]
                sidecar_haproxy.ready(self.layout, meta["namespace"], meta["name"], spec["nodeName"],
                                      spec.get("serviceAccountName") or "default")
        elif kind == "shoal":
            for p in pods:
                self.agents.capture(p["metadata"]["namespace"], p["metadata"]["name"], timeout)


def is_haproxy(kind: str | None) -> bool:
    return kind in ("haproxy", "haproxy-http")


def haproxy_mode(kind: str) -> str:
    return "http" if kind == "haproxy-http" else "tcp"


def sidecar_filter(kind: str) -> Callable[[list[str]], bool]:
    return sidecar_haproxy.is_sidecar if is_haproxy(kind) else sidecar_shoal.is_sidecar


def node_mesh(layout: Layout, nodes: list[str]) -> list[Selector]:
    """The ambient mesh's per-node processes on `nodes`: ztunnels and node agents."""
    return [Selector((layout.pod_cgroup(SYSTEM_NAMESPACE, f"{component}-{node}"),), part=component)
            for node in nodes for component in ("ztunnel", "node-agent")]


def mesh(layout: Layout, setup: SetUp, placement: str) -> list[Selector]:
    """The processes a request of `placement` passes through in `setup`, besides client and server."""
    client, client_node = PLACEMENTS[placement]
    if setup.sidecar:
        cgroups = tuple(layout.pod_cgroup(setup.namespace, p) for p in (client, "server"))
        return [Selector(cgroups, sidecar_filter(setup.sidecar), part="sidecar")]
    if not setup.ambient:
        return []
    selectors = node_mesh(layout, sorted({client_node, SERVER_NODE}))
    if setup.waypoint:
        selectors.append(waypoint(layout, setup))
    return selectors


def waypoint(layout: Layout, setup: SetUp) -> Selector:
    """The set-up's waypoint pods' processes (its memory is a goal of its own, issue 18)."""
    return Selector(tuple(sorted((layout.cgroup_dir / "pods").glob(f"{setup.namespace}_{WAYPOINT}*"))),
                    part="waypoint")
