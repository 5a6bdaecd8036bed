"""`shoal local up --runtime containerd`, end to end (root): one 2-node cluster for the whole module.

Each node runs its own containerd (CRI, runc, Debian's bridge + host-local CNI with shoal-cni
chained by the node agent); pods run the project's toolbox image. On it, the local cluster's
core checks: curl across nodes through the mesh (bytes, access log, metrics), iperf3 and
redis-benchmark, STRICT and DENY; then what the CNI chain is for: a pod whose very first action
is a connection to a STRICT service gets through the mesh, and the same pod without shoal-cni
in the chain is refused; with the node agent stopped an enrolled pod waits in ContainerCreating
with the plugin's message, a pod that is not enrolled starts at once, and the waiting pod starts
captured once the agent is back. Last, `down` after the daemon was SIGKILLed leaves nothing:
no containerd or shim, no mount, netns, cgroup, CNI state or image store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from shoal.contracts import METRICS_PORT
from shoal.local import containerd_down, observe, runtime_containerd, shoal_image
from shoal.local.cri_client import Cri
from shoal.local.kubelet import RESTART_MARKER

from support import metrics
from support.cluster import LocalCluster, unique_name
from support.polling import eventually
from support.root import needs_root

pytestmark = [needs_root("runs a local cluster on containerd"), pytest.mark.timeout(1200)]

SERVICE = "server.shop.svc.cluster.local"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
FIRST_CONNECTION = ("curl -sS --max-time 5 http://server.shop.svc.cluster.local/; echo \"first-exit=$?\"; "
                    "exec sleep infinity")


def pod(name: str, namespace: str, node: str, containers: list[dict], sa: str | None = None,
        labels: dict | None = None) -> dict:
    spec = {"nodeName": node, "containers": containers, **({"serviceAccountName": sa} if sa else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                             "labels": labels or {}}, "spec": spec}


SLEEPER = [{"name": "sh", "command": ["sleep", "infinity"]}]
MANIFESTS = [
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": "shop", "labels": {"shoal.io/dataplane-mode": "ambient"}}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "strict", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}},
    pod("server", "shop", "node2", [
        {"name": "http", "command": ["sh", "-c", "mkdir -p /srv && echo \"hello from $POD_NAME\" > /srv/index.html "
                                                 "&& exec python3 -m http.server 8080 -d /srv"],
         "readinessProbe": {"tcpSocket": {"port": 8080}}},
        {"name": "iperf", "command": ["iperf3", "-s", "-p", "5201"]},
        {"name": "redis", "command": ["redis-server", "--port", "6379", "--save", "", "--appendonly", "no",
                                      "--protected-mode", "no"]},
    ], labels={"app": "server"}),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": "shop"},
     "spec": {"selector": {"app": "server"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                                       {"name": "iperf", "port": 5201},
                                                       {"name": "redis", "port": 6379}]}},
    pod("client", "shop", "node1", SLEEPER, sa="client"),
    pod("other", "shop", "node1", SLEEPER, sa="other"),
    pod("outsider", "legacy", "node1", SLEEPER),
]


class ContainerdCluster(LocalCluster):
    """The cluster, with shop's pods by default, and the ztunnels' logs and metrics."""

    def exec(self, pod, *argv, namespace="shop", check=False, timeout=60):
        return super().exec(pod, *argv, namespace=namespace, check=check, timeout=timeout)

    def curl(self, pod, url, *options, namespace="shop", max_time=5):
        return super().curl(pod, url, *options, namespace=namespace, max_time=max_time)

    def access_log(self, node: int, direction: str) -> list[dict]:
        return [r for r in observe.access_log(self.layout, node) if r["direction"] == direction]

    def metric(self, node: int, name: str, **labels) -> float:
        return metrics.value(self.scrape(node, METRICS_PORT), name, **labels) or 0.0

    def status(self, name: str, namespace: str) -> dict:
        return self.pods(namespace).get(name, {}).get("status") or {}


@pytest.fixture(scope="module")
def cluster():
    outside = {path: path.exists() for path in (runtime_containerd.SHIM_STATE, runtime_containerd.CNI_CACHE)}
    forward = IP_FORWARD.read_text()
    c = ContainerdCluster(unique_name("ctrd"))
    try:
        c("up", "--nodes", "2", "--redirect", "iptables", "--runtime", "containerd", timeout=900)
        c.apply(MANIFESTS)
        eventually(lambda: c.curl("client", f"http://{SERVICE}/").stdout == "hello from server\n", 120,
                   lambda: f"the server to answer through the mesh; pods: {c.items('pods', 'shop')}", interval=0.5)
        c.outside_before, c.forward_before = outside, forward
        yield c
    finally:
        c.down()


def test_pods_run_in_containerd_with_the_toolbox_image_and_exec_logs_images_work(cluster):
    status = cluster.status("client", "shop")
    paths = runtime_containerd.NodePaths.of(cluster.layout, 1)
    assert status["shoal"]["runtime"] == "containerd"
    assert status["shoal"]["netns"].startswith(str(paths.base / "state")), status  # the CRI's, not /var/run/netns
    assert status["podIP"].startswith("198.19.1."), status  # host-local on node1's range
    # The CNI bridge and its forwarding live in the node's netns: nothing of it in the host's.
    assert IP_FORWARD.read_text() == cluster.forward_before
    assert subprocess.run(["ip", "link", "show", "cni0"], capture_output=True).returncode != 0
    # exec runs in the container's own files: the toolbox has no checkout of shoal in it
    inside = cluster.exec("client", "sh", "-c", f"test -e {Path(__file__).resolve()} && echo host || echo container",
                          namespace="shop")
    assert inside.stdout.strip() == "container", inside.stdout + inside.stderr
    assert "GET / HTTP" in cluster("logs", "-n", "shop", "server", "-c", "http").stdout
    images = cluster("images").stdout
    refs = json.loads((cluster.layout.run_dir / "images.json").read_text())
    for node in ("node1", "node2"):
        assert any(line.split()[:2] == [node, refs["toolbox"]] for line in images.splitlines()), images
        assert any(line.split()[:2] == [node, refs["pause"]] for line in images.splitlines()), images


def test_a_container_that_exits_is_restarted_as_a_new_container_with_its_runs_in_the_log(cluster):
    cluster.apply([pod("crasher", "legacy", "node1", [{"name": "app", "command": ["sh", "-c", "echo run; exit 3"]}])])

    def restarted():
        statuses = cluster.status("crasher", "legacy").get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 1 else None
    status = eventually(restarted, 120, lambda: f"crasher to restart: {cluster.status('crasher', 'legacy')}")
    assert status["lastState"]["terminated"]["exitCode"] == 3, status
    log = cluster("logs", "-n", "legacy", "crasher").stdout
    assert log.startswith("run\n") and "--- shoal: restart 1 of container app" in log, log
    cluster.delete([pod("crasher", "legacy", "node1", [])])


def test_curl_across_nodes_goes_through_both_ztunnels_with_mtls_and_is_counted(cluster):
    labels = {"reporter": "source", "destination_service": SERVICE}
    opened = cluster.metric(1, "istio_tcp_connections_opened_total", **labels)
    before = len(cluster.access_log(2, "inbound"))
    result = cluster.curl("client", f"http://{SERVICE}/")
    assert (result.returncode, result.stdout) == (0, "hello from server\n"), result.stderr
    line = eventually(lambda: [r for r in cluster.access_log(2, "inbound")[before:] if r["src_pod"] == "client"],
                      30, "node2's inbound access-log line")[-1]
    assert line["mtls"] and line["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client", line
    assert line["dst_pod"] == "server"
    eventually(lambda: cluster.metric(1, "istio_tcp_connections_opened_total", **labels) > opened, 30,
               "node1's ztunnel to count the connection")


def test_iperf3_and_redis_benchmark_through_the_mesh(cluster):
    result = cluster.exec("client", "iperf3", "-c", SERVICE, "-p", "5201", "-t", "2", "-J", namespace="shop",
                          check=False, timeout=90)
    assert result.returncode == 0, result.stderr or result.stdout[-300:]
    report = json.loads(result.stdout)
    assert 0 < report["end"]["sum_received"]["bytes"] <= report["end"]["sum_sent"]["bytes"]
    bench = cluster.exec("client", "redis-benchmark", "-h", SERVICE, "-n", "2000", "-c", "4", "-q", "-t", "set,get",
                         namespace="shop", check=False, timeout=90)
    assert bench.returncode == 0 and bench.stdout.count("requests per second") == 2, bench.stdout + bench.stderr


def test_strict_refuses_a_plaintext_client_that_is_not_enrolled(cluster):
    server_ip = cluster.pod_ip("server", "shop")
    before = len(cluster.access_log(2, "inbound_plaintext"))
    refused = cluster.curl("outsider", f"http://{server_ip}:8080/", namespace="legacy")
    assert refused.returncode != 0 and "hello" not in refused.stdout
    line = eventually(lambda: cluster.access_log(2, "inbound_plaintext")[before:], 30, "the refusal's log line")[-1]
    assert "STRICT" in line["error"], line


DENY_CLIENT = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "deny-client", "namespace": "shop"},
               "spec": {"action": "DENY", "rules": [{"from": [{"source": {
                   "principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}


def test_deny_blocks_its_principal_only(cluster):
    cluster.apply([DENY_CLIENT])
    try:
        eventually(lambda: cluster.curl("client", f"http://{SERVICE}/").returncode != 0, 30, "DENY to apply")
        other = cluster.curl("other", f"http://{SERVICE}/")
        assert (other.returncode, other.stdout) == (0, "hello from server\n"), other.stderr
    finally:
        cluster.delete([DENY_CLIENT], check=False)
    eventually(lambda: cluster.curl("client", f"http://{SERVICE}/").returncode == 0, 30, "DENY to be lifted")


def first_connection_pod(name: str, namespace: str = "shop") -> dict:
    return pod(name, namespace, "node2", [{"name": "app", "command": ["sh", "-c", FIRST_CONNECTION]}])


def first_exit(cluster, name: str, namespace: str = "shop") -> str:
    def seen():
        logs = cluster("logs", "-n", namespace, name, check=False).stdout
        return logs if "first-exit=" in logs else None
    return eventually(seen, 120, lambda: f"pod {namespace}/{name} to log its first connection; "
                                         f"status {cluster.status(name, namespace)}")


def stop_node_agent(cluster) -> None:
    cluster.delete([{"apiVersion": "v1", "kind": "Pod",  # `up` starts it again
                     "metadata": {"name": "node-agent-node2", "namespace": "shoal-system"}}])
    eventually(lambda: "node-agent-node2" not in cluster.pods("shoal-system"), 60, "node2's agent to stop")


def test_the_first_connection_is_captured_only_through_shoal_cni_and_enrolled_pods_wait_for_the_agent(cluster):
    conflist = runtime_containerd.NodePaths.of(cluster.layout, 2).conf_dir / "10-shoal-local.conflist"
    chained = json.loads(conflist.read_text())
    assert [p["type"] for p in chained["plugins"]][-1] == "shoal-cni", chained

    # With the chain: the pod's very first connection, to a STRICT service, goes through the mesh.
    before = len(cluster.access_log(2, "inbound"))
    cluster.apply([first_connection_pod("early")])
    assert "hello from server\nfirst-exit=0" in first_exit(cluster, "early")
    assert [r for r in cluster.access_log(2, "inbound")[before:] if r["src_pod"] == "early" and r["mtls"]]

    # Without shoal-cni in the chain (and no agent to put it back), the same pod is not captured before its
    # first connection, and STRICT refuses it: the chain is what made the difference.
    stop_node_agent(cluster)
    unchained = {**chained, "plugins": [p for p in chained["plugins"] if p["type"] != "shoal-cni"]}
    conflist.write_text(json.dumps(unchained))
    cluster.apply([first_connection_pod("bypass")])
    log = first_exit(cluster, "bypass")
    assert "hello" not in log and "first-exit=0" not in log, log

    # The chain back, the agent still stopped: an enrolled pod waits, with the plugin's message; a pod whose
    # namespace is not enrolled starts at once.
    conflist.write_text(json.dumps(chained))
    cluster.apply([first_connection_pod("waiter"), first_connection_pod("plain", namespace="legacy")])
    assert "first-exit=" in first_exit(cluster, "plain", "legacy")
    event = eventually(lambda: [e for e in cluster.items("events", "shop")
                                if e["involvedObject"]["name"] == "waiter"
                                and e["reason"] == "FailedCreatePodSandBox"], 120, "the waiting pod's event")[-1]
    assert "shoal-cni: the shoal node agent is not reachable" in event["message"], event
    status = cluster.status("waiter", "shop")
    assert status["phase"] == "Pending", status
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating", status

    # The agent back: the waiting pod starts, captured from its first connection.
    cluster("up")
    assert "hello from server\nfirst-exit=0" in first_exit(cluster, "waiter")


def test_a_waypoint_runs_on_containerd_and_carries_the_namespaces_traffic(cluster):
    """The waypoint is a pod of shoal's own that is not hostNetwork: containerd runs it too."""
    cluster.run("waypoint", "apply", "-n", "shop")
    cluster("label", "namespace", "shop", "shoal.io/use-waypoint=waypoint")
    waypoint = "spiffe://cluster.local/ns/shop/sa/waypoint"

    inbound_before, outbound_before = len(cluster.access_log(2, "inbound")), len(cluster.access_log(1, "outbound"))
    seen = {}

    def through_the_waypoint():
        # Judged on every record since the label, not on the lines one curl added: the kubelet copies a
        # container's log every 0.3 s, so a connection's record can land after the next check began.
        answer = cluster.curl("client", f"http://{SERVICE}/")
        seen["answer"] = (answer.returncode, answer.stdout[-200:], answer.stderr[-200:])
        return answer.stdout == "hello from server\n" and [
            r for r in cluster.access_log(1, "outbound")[outbound_before:]
            if r["src_pod"] == "client" and r["plan"] == "waypoint" and r["dst_identity"] == waypoint
            and r["error"] is None]
    phases = lambda: {n: p.get("status", {}).get("phase") for n, p in cluster.pods("shop").items()}  # noqa: E731
    last = lambda direction, node: [{k: r.get(k) for k in ("src_pod", "dst_pod", "plan", "src_identity", "error")}  # noqa: E731
                                    for r in cluster.access_log(node, direction)[-2:]]
    eventually(through_the_waypoint, 120, lambda: f"the server to be reached through the waypoint; pods: {phases()}; "
               f"last answer: {seen.get('answer')}; last outbound on node1: {last('outbound', 1)}", interval=1)
    eventually(lambda: [r for r in cluster.access_log(2, "inbound")[inbound_before:]
                        if r["dst_pod"] == "server" and r["src_identity"] == waypoint and r["mtls"]], 60,
               lambda: f"the server's ztunnel to log the waypoint's mTLS stream; last: {last('inbound', 2)}")
    (pod,) = [p for n, p in cluster.pods("shop").items() if n.startswith("waypoint")]
    assert pod["status"]["shoal"]["runtime"] == "containerd", pod["status"]
    # The CLI reaches it in the netns the CRI made (not one under /run/netns).
    dump = json.loads(cluster.run("waypoint", "config", "-n", "shop").stdout)
    assert dump["certificate"], dump


def mesh_pods(cluster, component: str) -> dict[int, dict]:
    """The component's pod on each node (by label: a rollout names its pods anew)."""
    return {int(p["spec"]["nodeName"][4:]): p for p in cluster.pods("shoal-system", **{"shoal.io/component": component})
            .values()}


def test_the_node_agent_and_the_ztunnel_are_containers_of_the_shoal_image(cluster):
    """As their DaemonSets run them on Kubernetes: the CRI made them from the shoal image, and the processes that
    serve the node are those containers' tasks, in the image's files and the node's netns."""
    for component in ("node-agent", "ztunnel"):
        pods = mesh_pods(cluster, component)
        assert sorted(pods) == [1, 2], pods
        for node, pod in pods.items():
            (container,) = pod["status"]["containerStatuses"]
            assert container["image"] == shoal_image.REF and container["ready"], container
            cri = Cri(runtime_containerd.socket_of(cluster.layout, node))
            try:
                task = cri.container(container["containerID"].removeprefix("containerd://"))
                assert dict(cri.images()).get(shoal_image.REF), "the node's containerd has the shoal image"
            finally:
                cri.close()
            assert task.pid == pod["status"]["shoal"]["container_pid"], (task, pod["status"])
            argv = Path(f"/proc/{task.pid}/cmdline").read_bytes().split(b"\0")
            assert argv[1:3] == [b"/opt/shoal/bin/shoal", b"--log-format"] and component.encode() in argv, argv
            assert Path(f"/proc/{task.pid}/root/opt/shoal/bin/shoal").exists(), "it runs in the image's files"
            assert os.stat(f"/proc/{task.pid}/ns/net").st_ino == os.stat(
                f"/run/netns/{cluster.layout.node_netns(node)}").st_ino, "hostNetwork: the node's netns"
    # The node agent has the host's pids (hostPID) and the privilege its DaemonSet gives; the ztunnel three caps.
    agent = mesh_pods(cluster, "node-agent")[1]["status"]["shoal"]["container_pid"]
    assert os.readlink(f"/proc/{agent}/ns/pid") == os.readlink("/proc/self/ns/pid")
    ztunnel = mesh_pods(cluster, "ztunnel")[1]["status"]["shoal"]["container_pid"]
    caps = {line.split(":")[0]: int(line.split()[1], 16) for line in
            Path(f"/proc/{ztunnel}/status").read_text().splitlines() if line.startswith("Cap")}
    assert caps["CapEff"] == (1 << 12) | (1 << 13) | (1 << 21), hex(caps["CapEff"])  # NET_ADMIN, NET_RAW, SYS_ADMIN
    # The control plane is a Deployment on Kubernetes: it stays a process of the checkout.
    (control_plane,) = mesh_pods(cluster, "control-plane").values()
    assert "image" not in control_plane["status"]["containerStatuses"][0], control_plane["status"]


def test_a_killed_ztunnel_container_is_restarted_by_the_kubelet_and_traffic_flows_again(cluster):
    pod = mesh_pods(cluster, "ztunnel")[2]  # the server's side
    name, status = pod["metadata"]["name"], pod["status"]
    restarts, pid = status["containerStatuses"][0]["restartCount"], status["shoal"]["container_pid"]
    os.kill(pid, signal.SIGKILL)

    def restarted():
        now = cluster.pods("shoal-system").get(name, {}).get("status") or {}
        c = (now.get("containerStatuses") or [{}])[0]
        return c.get("restartCount", 0) > restarts and c.get("ready") and now["shoal"].get("container_pid") != pid
    eventually(restarted, 180, lambda: f"{name} to be restarted: {cluster.pods('shoal-system').get(name)}")

    before = len(cluster.access_log(2, "inbound"))   # the killed one's last lines were copied at its exit

    def through_the_new_ztunnel():
        # Every record since the restart counts, not only the lines one curl added: the kubelet copies a
        # container's log every 0.3 s, so a connection's record can land after the next check began.
        answer = cluster.curl("client", f"http://{SERVICE}/")
        return answer.stdout == "hello from server\n" and [
            r for r in cluster.access_log(2, "inbound")[before:] if r["dst_pod"] == "server"]
    eventually(through_the_new_ztunnel, 120, "traffic to flow through the restarted ztunnel", interval=1)
    log = cluster.layout.pod_log("shoal-system", name, "ztunnel").read_text()
    assert f"{RESTART_MARKER}{restarts + 1} of container ztunnel" in log, log[-2000:]


def kill_daemon(layout) -> None:
    pid = int(layout.daemon_pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
               30, "the daemon to die")


def test_after_the_daemon_was_killed_up_starts_the_pods_over_and_down_leaves_nothing_of_containerd(cluster):
    layout = cluster.layout
    kill_daemon(layout)
    assert runtime_containerd.containerd_pid(runtime_containerd.NodePaths.of(layout, 1)) is not None
    old_sandbox = cluster.status("client", "shop")["shoal"]["netns"]
    cluster("up")  # a new daemon; its kubelet removes the sandboxes the killed one left, and starts them again
    eventually(lambda: cluster.curl("client", f"http://{SERVICE}/").stdout == "hello from server\n", 120,
               lambda: f"the pods to run again; client: {cluster.status('client', 'shop')}", interval=0.5)
    assert cluster.status("client", "shop")["shoal"]["netns"] != old_sandbox, "the pod started over in a new sandbox"
    assert not Path(old_sandbox).exists(), "the sandbox the killed daemon left is gone"
    kill_daemon(layout)
    cluster("down")
    assert containerd_down.leftovers(layout) == []
    assert IP_FORWARD.read_text() == cluster.forward_before
    assert not layout.run_dir.exists() and not layout.cgroup_dir.exists()
    assert [n for n in os.listdir("/run/netns") if n.startswith(layout.prefix)] == [] \
        if os.path.isdir("/run/netns") else True
    for path, existed in cluster.outside_before.items():
        if not existed:
            assert not path.exists(), f"{path} was made by the cluster's containerd and is still there"
    results = runtime_containerd.CNI_CACHE / "results"
    if results.is_dir():
        assert [p for p in results.iterdir() if p.name.startswith(layout.prefix)] == []
