"""End to end through the local cluster, in both redirect modes (root).

A 2-node cluster per mode, the real control plane, node agents and ztunnels;
an enrolled namespace `shop` with servers on node2 and clients on node1, and
an unenrolled namespace `legacy` for plaintext clients. Checks bytes,
captures, metrics and access logs, policy, and the loss of the control plane.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs a local cluster")

from shoal import netns  # noqa: E402
from shoal.local.layout import Layout  # noqa: E402

PYTHON = sys.executable
APPS = str(Path(__file__).with_name("zt_apps.py"))
SHOP_SERVICE = "server.shop.svc.cluster.local"


def shoal(*args, cluster, check=True, input=None, timeout=120):
    argv = [*args[:2], "--cluster", cluster, *args[2:]]  # before any `--` of exec
    result = subprocess.run([PYTHON, "-m", "shoal", *argv], capture_output=True, text=True,
                            input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)}: {result.stderr or result.stdout}")
    return result


def manifests() -> str:
    def pod(name, ns, node, containers, sa=None, labels=None):
        spec = {"nodeName": node, "containers": containers}
        if sa:
            spec["serviceAccountName"] = sa
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
                "spec": spec}
    sleeper = [{"name": "sh", "command": ["sleep", "infinity"]}]
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"shoal.io/dataplane-mode": "ambient"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}},
        pod("server", "shop", "node2", [
            {"name": "http", "command": [PYTHON, APPS, "http", "8080"], "readinessProbe": {"tcpSocket": {"port": 8080}}},
            {"name": "echo", "command": [PYTHON, APPS, "echo", "9000"]},
            {"name": "iperf", "command": ["iperf3", "-s", "-p", "5201"]},
            {"name": "redis", "command": ["redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]},
        ], labels={"app": "server"}),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": "shop"},
         "spec": {"selector": {"app": "server"}, "ports": [
             {"name": "http", "port": 80, "targetPort": 8080}, {"name": "echo", "port": 9000},
             {"name": "iperf", "port": 5201}, {"name": "redis", "port": 6379}]}},
        pod("client", "shop", "node1", sleeper, sa="client"),
        pod("other", "shop", "node1", sleeper, sa="other"),
        pod("outsider", "legacy", "node1", sleeper),
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


class Cluster:
    def __init__(self, name: str, mode: str):
        self.name, self.mode = name, mode
        self.layout = Layout(name)

    def exec(self, pod, *argv, ns="shop", timeout=60):
        return shoal("local", "exec", "-n", ns, pod, "--", *argv, cluster=self.name, check=False, timeout=timeout)

    def curl(self, pod, url, ns="shop", *extra):
        return self.exec(pod, "curl", "-sS", "--max-time", "5", *extra, url, ns=ns)

    def pod_ip(self, name, ns="shop"):
        pods = json.loads(shoal("local", "get", "pods", "-n", ns, "-o", "json", cluster=self.name).stdout)
        items = pods["items"] if isinstance(pods, dict) else pods
        return next(p["status"]["podIP"] for p in items if p["metadata"]["name"] == name)

    def log_lines(self, node: int) -> list[dict]:
        out = shoal("local", "logs", "-n", "shoal-system", f"ztunnel-node{node}", cluster=self.name).stdout
        return [json.loads(l) for l in out.splitlines() if l.startswith("{") and '"connection complete"' in l]

    def metrics(self, node: int) -> str:
        def get():
            with urllib.request.urlopen("http://127.0.0.1:15020/metrics", timeout=5) as r:
                return r.read().decode()
        return netns.run_in(self.layout.node_netns(node), get)

    def metric(self, node: int, name: str, **labels) -> float:
        total = 0.0
        for line in self.metrics(node).splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def apply(self, text: str):
        shoal("local", "apply", "-f", "-", cluster=self.name, input=text)

    def delete(self, text: str):
        shoal("local", "delete", "-f", "-", cluster=self.name, input=text, check=False)


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.fixture(scope="module", params=["iptables", "ebpf"])
def cluster(request):
    mode = request.param
    c = Cluster(f"zt{mode[0]}{os.getpid() % 1000}", mode)
    try:
        shoal("local", "up", "--nodes", "2", "--redirect", mode, cluster=c.name, timeout=180)
        c.apply(manifests())
        wait_until(lambda: c.curl("client", f"http://{SHOP_SERVICE}/").stdout.startswith("peer="), 60,
                   "the server to answer through the mesh")
        yield c
    finally:
        shoal("local", "down", cluster=c.name, check=False, timeout=180)


def test_service_across_nodes_keeps_client_ip_and_logs_one_line(cluster):
    client_ip = cluster.pod_ip("client")
    before = len([l for l in cluster.log_lines(1) if l["direction"] == "outbound"])
    result = cluster.curl("client", f"http://{SHOP_SERVICE}/")
    assert result.returncode == 0, result.stderr
    seen = result.stdout
    lines = wait_until(lambda: [l for l in cluster.log_lines(1) if l["direction"] == "outbound"][before:] or None,
                       10, "the access-log line")
    assert len(lines) == 1
    assert lines[0]["mtls"] and lines[0]["dst_service"] == SHOP_SERVICE
    assert lines[0]["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert lines[0]["upstream"].endswith(":15008")
    assert seen == f"peer={client_ip}\n"


def test_underlay_carries_only_tls_to_15008(cluster, tmp_path):
    capture = tmp_path / "cap.txt"
    with open(capture, "w") as out:
        dump = subprocess.Popen(["ip", "netns", "exec", cluster.layout.underlay_netns, "tcpdump", "-i", "br0", "-l",
                                 "-nn", "-A", "tcp and net 198.19.0.0/16"], stdout=out, stderr=subprocess.DEVNULL)
    time.sleep(0.7)
    try:
        assert cluster.curl("client", f"http://{SHOP_SERVICE}/").returncode == 0
        time.sleep(0.7)
    finally:
        dump.terminate()
        dump.wait()
    text = capture.read_text(errors="replace")
    headers = [l for l in text.splitlines() if " IP " in l and " > " in l]
    assert headers, "the capture saw no pod traffic on the underlay"
    assert all(re.search(r"\.15008[ :]", l) for l in headers), headers[:4]
    assert "peer=" not in text and "GET / HTTP" not in text


def test_metrics_match_bytes_sent(cluster):
    labels = {"reporter": "source", "destination_service": SHOP_SERVICE}
    rx0 = cluster.metric(1, "istio_tcp_received_bytes_total", **labels)
    tx0 = cluster.metric(1, "istio_tcp_sent_bytes_total", **labels)
    opened0 = cluster.metric(1, "istio_tcp_connections_opened_total", **labels)
    size = 2_000_000
    result = cluster.exec("client", PYTHON, APPS, "send", SHOP_SERVICE, "9000", str(size))
    assert result.stdout.strip() == str(size), result.stderr
    wait_until(lambda: cluster.metric(1, "istio_tcp_received_bytes_total", **labels) - rx0 == size, 10,
               "received bytes to match")
    assert cluster.metric(1, "istio_tcp_sent_bytes_total", **labels) - tx0 == size
    assert cluster.metric(1, "istio_tcp_connections_opened_total", **labels) - opened0 == 1
    assert cluster.metric(2, "istio_tcp_received_bytes_total", reporter="destination",
                          connection_security_policy="mutual_tls", destination_service=SHOP_SERVICE) >= size


def test_iperf3_and_redis_through_the_mesh(cluster):
    result = cluster.exec("client", "iperf3", "-c", SHOP_SERVICE, "-p", "5201", "-t", "2", "-J", timeout=60)
    assert result.returncode == 0, result.stderr or result.stdout[-300:]
    report = json.loads(result.stdout)
    assert report["end"]["sum_received"]["bytes"] > 0
    # iperf3 counts what it wrote into its socket; what sat in buffers when the clock stopped is not received.
    assert 0 < report["end"]["sum_received"]["bytes"] <= report["end"]["sum_sent"]["bytes"]
    assert not report.get("error")
    assert cluster.exec("client", "redis-cli", "-h", SHOP_SERVICE, "set", "mesh", "works").stdout.strip() == "OK"
    assert cluster.exec("client", "redis-cli", "-h", SHOP_SERVICE, "get", "mesh").stdout.strip() == "works"
    bench = cluster.exec("client", "redis-benchmark", "-h", SHOP_SERVICE, "-n", "2000", "-c", "4", "-q", "-t", "set,get")
    assert bench.returncode == 0 and bench.stdout.count("requests per second") == 2, bench.stdout + bench.stderr


STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""


def test_strict_refuses_plaintext_and_clients_without_a_mesh_certificate(cluster):
    server_ip = cluster.pod_ip("server")
    ok = cluster.curl("outsider", f"http://{server_ip}:8080/", ns="legacy")
    assert ok.returncode == 0 and ok.stdout.startswith("peer="), ok.stderr  # PERMISSIVE by default
    cluster.apply(STRICT)
    try:
        wait_until(lambda: cluster.curl("outsider", f"http://{server_ip}:8080/", ns="legacy").returncode != 0, 20,
                   "STRICT to apply")
        line = [l for l in cluster.log_lines(2) if l["direction"] == "inbound_plaintext"][-1]
        assert "STRICT" in line["error"]
        assert cluster.curl("client", f"http://{SHOP_SERVICE}/").returncode == 0  # mesh clients still pass
        direct = cluster.curl("outsider", f"https://{server_ip}:15008/", "legacy", "-k", "--http2-prior-knowledge")
        assert direct.returncode != 0
        line = wait_until(lambda: [l for l in cluster.log_lines(2) if l["direction"] == "inbound"
                                   and "TLS handshake failed" in (l["error"] or "")], 10, "the refused handshake")[-1]
        assert line["response_flags"] == "UPE"
    finally:
        cluster.delete(STRICT)


DENY_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
"""

ALLOW_OTHER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-other, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/other"]}}]}]
"""


def test_deny_blocks_and_allow_admits_only_its_principal(cluster):
    url = f"http://{SHOP_SERVICE}/"
    cluster.apply(DENY_CLIENT)
    try:
        wait_until(lambda: cluster.curl("client", url).returncode != 0, 20, "DENY to apply")
        assert cluster.curl("other", url).returncode == 0
        line = [l for l in cluster.log_lines(1) if l["direction"] == "outbound"
                and l["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"][-1]
        assert "policy denied" in line["error"] and "deny-client" in line["error"]
    finally:
        cluster.delete(DENY_CLIENT)
    wait_until(lambda: cluster.curl("client", url).returncode == 0, 20, "DENY to go")
    cluster.apply(ALLOW_OTHER)
    try:
        wait_until(lambda: cluster.curl("client", url).returncode != 0, 20, "ALLOW to apply")
        assert cluster.curl("other", url).stdout.startswith("peer=")
    finally:
        cluster.delete(ALLOW_OTHER)
    wait_until(lambda: cluster.curl("client", url).returncode == 0, 20, "ALLOW to go")


def test_known_workloads_keep_working_without_the_control_plane(cluster):
    url = f"http://{SHOP_SERVICE}/"
    # An existing connection: a long echo exchange started before the control plane goes.
    sender = subprocess.Popen([PYTHON, "-m", "shoal", "local", "exec", "-n", "shop", "client", "--cluster", cluster.name,
                               "--", PYTHON, APPS, "send", SHOP_SERVICE, "9000", "300000000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    expected = cluster.curl("client", url).stdout
    assert expected.startswith("peer=")
    store = cluster.layout.store()
    store.delete("Pod", "shoal-system", "control-plane-node1")
    try:
        wait_until(lambda: any("config stream lost" in l for l in shoal(
            "local", "logs", "-n", "shoal-system", "ztunnel-node1", cluster=cluster.name).stdout.splitlines()),
            30, "the ztunnel to lose the control plane")
        for _ in range(3):  # new connections, between workloads it already knows
            result = cluster.curl("client", url)
            assert result.stdout == expected, result.stderr
        out, err = sender.communicate(timeout=120)
        assert out.strip() == "300000000", err
    finally:
        if sender.poll() is None:
            sender.kill()
        shoal("local", "up", "--nodes", "2", "--redirect", cluster.mode, cluster=cluster.name, timeout=180)


def test_shoal_config_reads_the_ztunnel_dump(cluster):
    workloads = shoal("config", "workloads", "--node", "1", cluster=cluster.name)
    rows = [line.split() for line in workloads.stdout.splitlines()]
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert ["shop", "client"] == next(r[:2] for r in rows if r[1] == "client")
    certs = json.loads(shoal("config", "certs", "--node", "1", "-o", "json", cluster=cluster.name).stdout)
    mine = {c["identity"]: c for c in certs}
    assert mine["spiffe://cluster.local/ns/shop/sa/client"]["state"] == "valid"
    assert mine["spiffe://cluster.local/ns/shop/sa/client"]["expires_in_seconds"] > 3600
    services = shoal("config", "services", "--node", "2", cluster=cluster.name).stdout
    assert SHOP_SERVICE in services
    missing = shoal("config", "workloads", "--node", "9", cluster=cluster.name, check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
