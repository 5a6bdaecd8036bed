"""The node agent inside `shoal local`, in both modes: enrollment by annotation with no restart,
traffic through the real ztunnels, un-enrollment, and nothing left after `down`."""

from __future__ import annotations

from pathlib import Path

from shoal import netns
from shoal.contracts import NODE_AGENT_PORT

from na_topology import bpftool_cgroup
from node_agent import netfilter
from support import metrics
from support.cluster import LocalCluster, in_each, running_cluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("shoal local builds network namespaces")


def manifest(enrolled: bool) -> list[dict]:
    """Namespace demo, annotated into the mesh or not, with a server on node2 and a client on node1."""
    def pod(name: str, node: str, command: list[str]) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "demo"},
                "spec": {"nodeName": node, "containers": [{"name": "app", "command": command}]}}
    annotations = {"shoal.io/dataplane-mode": "ambient"} if enrolled else {}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "annotations": annotations}},
            pod("server", "node2", ["python3", "-m", "http.server", "8080"]),
            pod("client", "node1", ["sleep", "3600"])]


def enrolled_pods(cluster: LocalCluster, node: int) -> float | None:
    return metrics.value(cluster.scrape(node, NODE_AGENT_PORT), "shoal_node_agent_enrolled_pods")


def curl(cluster: LocalCluster) -> str:
    result = cluster.curl("client", "http://198.19.2.2:8080/", "-o", "/dev/null", "-w", "%{http_code}",
                          namespace="demo", max_time=8)
    return result.stdout.strip()


def capture_in(cluster: LocalCluster, pod: str) -> bool:
    layout = cluster.layout
    if "SHOAL_OUTPUT" in netfilter.save(layout.pod_netns("demo", pod)):
        return True
    return bool(bpftool_cgroup(str(layout.pod_cgroup("demo", pod))))


MODES = {"iptables": "iptables", "ebpf": "ebpf"}   # each test runs in both at once (in_each): its waits overlap


def test_enroll_by_annotation_in_a_local_cluster():
    in_each(MODES, enroll_by_annotation)


def enroll_by_annotation(mode: str) -> None:
    with running_cluster(f"na{mode[:3]}", nodes=2, redirect=mode) as cluster:
        cluster.apply(manifest(enrolled=False))
        eventually(lambda: curl(cluster) == "200", 30, "the server to answer outside the mesh", interval=0.1)
        assert not capture_in(cluster, "client") and not capture_in(cluster, "server")

        # Enrolling a namespace of running pods: no restart, and traffic flows through the ztunnels.
        cluster.apply(manifest(enrolled=True))
        for node in (1, 2):
            eventually(lambda: enrolled_pods(cluster, node) == 1, 30, f"the pod on node{node} enrolled", interval=0.1)
        assert capture_in(cluster, "client") and capture_in(cluster, "server")
        assert curl(cluster) == "200"
        pods = cluster("get", "pods", "-n", "demo").stdout
        assert " 0 " in pods.splitlines()[1] and " 0 " in pods.splitlines()[2]  # no restarts
        ztunnel_log = cluster.logs("ztunnel-node2", "shoal-system")
        assert '"dst_addr": "198.19.2.2:8080"' in ztunnel_log and '"mtls": true' in ztunnel_log

        # Leaving: redirection removed, traffic goes straight again.
        cluster.apply(manifest(enrolled=False))
        eventually(lambda: not capture_in(cluster, "client") and not capture_in(cluster, "server"), 30,
                   "redirection removed", interval=0.1)
        assert curl(cluster) == "200"
    assert not netns.names(cluster.layout.prefix)
    pins = Path("/sys/fs/bpf/shoal")
    assert not list(pins.glob(f"{cluster.name}-node*")) if pins.exists() else True


def strict_probed_manifest(gate: Path) -> list[dict]:
    """An enrolled namespace under STRICT mTLS, and a pod with a readiness probe that can only pass once
    `gate` exists (so the probe that makes it Ready came through the pod's capture)."""
    serve = ("import os, time, http.server\n"
             f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
             "http.server.HTTPServer(('', 8080), http.server.SimpleHTTPRequestHandler).serve_forever()\n")
    return [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "demo", "labels": {"shoal.io/dataplane-mode": "ambient"}}},
            {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
             "metadata": {"name": "strict", "namespace": "demo"}, "spec": {"mtls": {"mode": "STRICT"}}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed", "namespace": "demo"},
             "spec": {"nodeName": "node1", "containers": [{
                 "name": "app", "command": ["python3", "-c", serve],
                 "readinessProbe": {"httpGet": {"port": 8080, "path": "/"}}}]}}]


def test_under_strict_mtls_the_kubelets_probes_pass_and_other_host_processes_do_not(tmp_path):
    """The node agent's default probe exemption in a local cluster is shoal's kubelet (the daemon's cgroup)."""
    in_each(MODES, lambda mode: probes_pass_and_other_host_processes_do_not(mode, tmp_path / f"serve-{mode}"))


def probes_pass_and_other_host_processes_do_not(mode: str, gate: Path) -> None:
    with running_cluster(f"np{mode[:3]}", nodes=1, redirect=mode) as cluster:
        cluster.apply(strict_probed_manifest(gate))
        eventually(lambda: enrolled_pods(cluster, 1) == 1, 30, "the pod enrolled", interval=0.1)
        gate.touch()
        cluster.wait_pods_ready("demo", 1)  # the kubelet's probe reached the app, past STRICT

        ip = cluster.pod_ip("probed", "demo")
        host = netns.run(cluster.layout.node_netns(1),
                         ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{ip}:8080/"], check=False)
        assert host.returncode != 0 and host.stdout != "200", host.stdout
        eventually(lambda: "plaintext refused" in cluster.logs("ztunnel-node1", "shoal-system"), 10,
                   "the ztunnel refusing the host process")
