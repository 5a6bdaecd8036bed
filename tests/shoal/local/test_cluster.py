"""The local cluster end to end: real namespaces, real processes, real iptables."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from support.cluster import LocalCluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("creates network namespaces, veths, cgroups")

APP = """
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: http
        command: ["sh", "-c", "mkdir -p www && echo $POD_NAME > www/index.html && exec python3 -m http.server 8080 -d www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {port: 8080, path: /}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: web}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: web}
spec:
  nodeName: node1
  containers: [{name: sh, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-1, namespace: web}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers:
  - name: http
    command: ["sh", "-c", "mkdir -p www && echo $POD_NAME > www/index.html && exec python3 -m http.server 9090 -d www"]
    readinessProbe: {tcpSocket: {port: 9090}}
---
apiVersion: v1
kind: Pod
metadata: {name: server-2, namespace: web}
spec:
  nodeName: node2
  containers:
  - name: http
    command: ["sh", "-c", "mkdir -p www && echo $POD_NAME > www/index.html && exec python3 -m http.server 9090 -d www"]
    readinessProbe: {tcpSocket: {port: 9090}}
"""


def host_network_state() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    # Link counters and flags like NO-CARRIER churn on their own; names and routes are what matter.
    names = "\n".join(sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()))
    return names, routes


@pytest.fixture(scope="module")
def app(cluster: LocalCluster):
    cluster.apply(APP)
    pods = cluster.wait_pods_ready("web", 5)
    return pods


def test_pods_are_placed_and_addressed(app):
    assert app["client-1"]["spec"]["nodeName"] == "node1"
    assert app["server-1"]["spec"]["nodeName"] == "node1"  # by nodeSelector
    assert app["server-2"]["spec"]["nodeName"] == "node2"
    assert app["server-2"]["status"]["podIP"].startswith("198.19.2.")
    assert app["client-1"]["status"]["podIP"].startswith("198.19.1.")
    status = app["client-1"]["status"]
    assert Path(status["shoal"]["netns"]).exists()
    assert Path(status["shoal"]["cgroup"], "cgroup.procs").read_text().split()


def test_pod_to_pod_across_nodes_by_ip(cluster, app):
    ip = app["server-2"]["status"]["podIP"]
    out = cluster.exec("client-1", "curl", "-sS", "-m", "5", f"http://{ip}:9090/", namespace="web").stdout
    assert out.strip() == "server-2"


def test_pod_to_pod_on_the_same_node(cluster, app):
    ip = app["server-1"]["status"]["podIP"]
    out = cluster.exec("client-1", "curl", "-sS", "-m", "5", f"http://{ip}:9090/", namespace="web").stdout
    assert out.strip() == "server-1"


@pytest.mark.parametrize("host", ["echo", "echo.web", "echo.web.svc.cluster.local", "VIP"])
def test_service_by_name_and_vip_balances_over_both_replicas(cluster, app, host):
    svc = json.loads(cluster("get", "svc", "echo", "-n", "web", "-o", "json").stdout)
    vip = svc["spec"]["clusterIP"]
    assert vip.startswith("198.18.")
    target = vip if host == "VIP" else host
    script = f"for i in $(seq 24); do curl -sS -m 5 http://{target}/; done"
    answers = cluster.exec("client-1", "sh", "-c", script, namespace="web").stdout.split()
    replicas = {n for n in app if n.startswith("echo-")}
    assert len(answers) == 24
    assert set(answers) == replicas, f"expected both replicas to answer, got {answers}"


def test_an_unmeshed_node_reaches_service_vips_too(cluster, app):
    vip = json.loads(cluster("get", "svc", "echo", "-n", "web", "-o", "json").stdout)["spec"]["clusterIP"]
    node = cluster.layout.node_netns(2)
    out = subprocess.run(["ip", "netns", "exec", node, "curl", "-sS", "-m", "5", f"http://{vip}/"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("echo-")


def test_exec_passes_exit_codes_through(cluster, app):
    assert cluster.exec("client-1", "sh", "-c", "exit 0", namespace="web", check=False).returncode == 0
    assert cluster.exec("client-1", "sh", "-c", "exit 42", namespace="web", check=False).returncode == 42
    assert cluster.exec("client-1", "false", namespace="web", check=False).returncode == 1
    missing = cluster.exec("nope", "true", namespace="web", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_exec_runs_in_the_pods_netns_and_cgroup(cluster, app):
    out = cluster.exec("client-1", "sh", "-c", "ip -o -4 addr show eth0; cat /proc/self/cgroup",
                       namespace="web").stdout
    assert app["client-1"]["status"]["podIP"] in out
    assert "/shoal/" + cluster.name + "/pods/web_client-1" in out


def test_the_system_pods_of_a_new_cluster_started_without_a_restart(cluster):
    """The ingress gateway read a key the control plane had not made yet, exited and was restarted."""
    restarts = {name: [c.get("restartCount") for c in (pod.get("status") or {}).get("containerStatuses", [])]
                for name, pod in cluster.pods("shoal-system").items()}
    assert restarts and all(counts == [0] for counts in restarts.values()), restarts


def test_up_twice_changes_nothing(cluster, app):
    layout = cluster.layout
    store = layout.store()
    rv_before = store.resource_version()
    rules_before = subprocess.run(["ip", "netns", "exec", layout.node_netns(1), "iptables-legacy-save"],
                                  capture_output=True, text=True).stdout
    out = cluster("up", "--nodes", "2", "--redirect", "iptables").stdout
    assert "nothing changed" in out
    time.sleep(0.5)
    assert store.resource_version() == rv_before
    rules_after = subprocess.run(["ip", "netns", "exec", layout.node_netns(1), "iptables-legacy-save"],
                                 capture_output=True, text=True).stdout
    def strip(text):  # comments and packet counters change by themselves
        return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]
    assert strip(rules_after) == strip(rules_before)


def test_up_with_other_settings_is_refused(cluster):
    result = cluster("up", "--nodes", "3", check=False)
    assert result.returncode != 0
    assert "is up with 2 nodes" in result.stderr


def test_a_crashing_pod_is_restarted_and_its_status_says_so(cluster, app):
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: web}
spec:
  containers: [{name: main, command: ["sh", "-c", "echo started $$; exit 3"]}]
""")
    def restarted_twice():
        pod = cluster.pods("web")["crasher"]
        statuses = (pod.get("status") or {}).get("containerStatuses", [])
        return pod if statuses and statuses[0]["restartCount"] >= 2 else None
    pod = eventually(restarted_twice, 30, lambda: f"two restarts: {cluster.pods('web')['crasher'].get('status')}")
    status = pod["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert pod["status"]["phase"] == "Running"
    table = cluster("get", "pods", "-n", "web").stdout
    line = next(l for l in table.splitlines() if l.startswith("crasher"))
    assert "CrashLoopBackOff" in line or "Running" in line
    assert int(line.split()[3]) >= 2  # RESTARTS column
    log = cluster("logs", "-n", "web", "crasher").stdout
    assert log.count("started") >= 2  # every run appends to the same log
    cluster("delete", "-f", "-", input="apiVersion: v1\nkind: Pod\nmetadata: {name: crasher, namespace: web}\n")


def test_a_pod_killed_from_outside_is_restarted(cluster, app):
    pod = cluster.pods("web")["server-2"]
    before = pod["status"]["containerStatuses"][0]["restartCount"]
    pids = Path(pod["status"]["shoal"]["cgroup"], "cgroup.procs").read_text().split()
    subprocess.run(["kill", "-9", *pids], check=True)
    def restarted_and_ready():
        status = cluster.pods("web")["server-2"]["status"]
        c = status["containerStatuses"][0]
        return status if c["restartCount"] > before and c["ready"] else None
    status = eventually(restarted_and_ready, 30, lambda: f"a restart: {cluster.pods('web')['server-2']['status']}")
    assert status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] != 0
    ip = status["podIP"]
    assert cluster.exec("client-1", "curl", "-sS", "-m", "5", f"http://{ip}:9090/",
                        namespace="web").stdout.strip() == "server-2"


def test_scaling_a_deployment_updates_endpoints(cluster, app):
    cluster.apply(APP.replace("replicas: 2", "replicas: 3"))
    cluster.wait_pods_ready("web", 6)
    def endpoints():
        ep = json.loads(cluster("get", "endpoints", "echo", "-n", "web", "-o", "json").stdout)
        return [a["ip"] for s in ep["subsets"] for a in s["addresses"]]
    eventually(lambda: len(endpoints()) == 3, 20, lambda: f"3 endpoints, not {endpoints()}")
    cluster.apply(APP)
    eventually(lambda: len([n for n in cluster.pods("web") if n.startswith("echo-")]) == 2, 20,
               "the Deployment back to 2 replicas")


def test_no_route_leads_outside_the_cluster_range(cluster, app):
    """Every route in every node and pod namespace stays in 198.18.0.0/15 (or is the pod's link to its node)."""
    import ipaddress

    cluster_range = ipaddress.ip_network("198.18.0.0/15")
    layout = cluster.layout
    names = [layout.node_netns(1), layout.node_netns(2), layout.underlay_netns,
             *(Path(p["status"]["shoal"]["netns"]).name for p in app.values())]
    for name in names:
        routes = subprocess.run(["ip", "netns", "exec", name, "ip", "-j", "route", "show", "table", "all"],
                                capture_output=True, text=True, check=True).stdout
        for route in json.loads(routes):
            dst, gateway = route.get("dst"), route.get("gateway")
            if route.get("type") in ("local", "broadcast", "multicast") or route.get("table") == "local":
                continue
            if dst == "default":
                # Only pods have one, and it points at their node over the veth.
                assert "-pod-" in name and gateway == "169.254.1.1", (name, route)
                continue
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            if net.version == 6:
                assert net.is_link_local or net.is_multicast, (name, route)
                continue
            assert net.subnet_of(cluster_range) or str(net) == "169.254.1.1/32", (name, route)


def test_label_and_annotate_set_and_remove_keys(cluster, app):
    cluster("label", "namespace", "web", "team=blue", "tier=back")
    cluster("annotate", "pod", "client-1", "-n", "web", "note=hi")
    ns = json.loads(cluster("get", "ns", "web", "-o", "json").stdout)
    assert ns["metadata"]["labels"] == {"team": "blue", "tier": "back"}
    pod = json.loads(cluster("get", "pods", "client-1", "-n", "web", "-o", "json").stdout)
    assert pod["metadata"]["annotations"]["note"] == "hi"
    cluster("label", "namespace", "web", "team-", "tier-")
    ns = json.loads(cluster("get", "ns", "web", "-o", "json").stdout)
    assert not ns["metadata"].get("labels")
    missing = cluster("label", "namespace", "ghost", "a=b", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    bad = cluster("label", "namespace", "web", "oops", check=False)
    assert bad.returncode == 1 and "neither KEY=VALUE nor KEY-" in bad.stderr
