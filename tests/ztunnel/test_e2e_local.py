"""End to end through the local cluster, in both redirect modes (root).

A 2-node cluster per mode, the real control plane, node agents and ztunnels;
each test runs its steps in both modes' clusters at once (`in_each`), so that
their waits overlap;
an enrolled namespace `shop` with servers on node2 and clients on node1, and
an unenrolled namespace `legacy` for plaintext clients. Checks bytes,
captures, metrics and access logs, policy, and the loss of the control plane.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.contracts import METRICS_PORT
from shoal.local import observe

from support import metrics
from support.capture import tcpdump
from support.cli import SHOAL
from support.cluster import LocalCluster, in_each, running_in_each_mode
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

PYTHON = sys.executable
APPS = str(Path(__file__).with_name("zt_apps.py"))
SHOP_SERVICE = "server.shop.svc.cluster.local"


def manifests() -> list[dict]:
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
    return items


class Mesh(LocalCluster):
    """The cluster, with what these tests read of it: shop's pods by default, the ztunnels' logs and metrics."""

    def exec(self, pod, *argv, namespace="shop", check=False, timeout=60):
        return super().exec(pod, *argv, namespace=namespace, check=check, timeout=timeout)

    def curl(self, pod, url, *options, namespace="shop", max_time=5):
        return super().curl(pod, url, *options, namespace=namespace, max_time=max_time)

    def access_log(self, node: int, direction: str) -> list[dict]:
        return [r for r in observe.access_log(self.layout, node) if r["direction"] == direction]

    def metric(self, node: int, name: str, **labels) -> float:
        return metrics.value(self.scrape(node, METRICS_PORT), name, **labels) or 0.0


def serving(c: Mesh) -> None:
    c.apply(manifests())
    eventually(lambda: c.curl("client", f"http://{SHOP_SERVICE}/").stdout.startswith("peer="), 60,
               "the server to answer through the mesh", interval=0.3)


@pytest.fixture(scope="module")
def clusters():
    with running_in_each_mode("zt", nodes=2, kind=Mesh, prepare=serving) as both:
        yield both


def test_service_across_nodes_keeps_client_ip_and_logs_one_line(clusters):
    in_each(clusters, service_across_nodes_keeps_client_ip_and_logs_one_line)


def service_across_nodes_keeps_client_ip_and_logs_one_line(cluster):
    client_ip = cluster.pod_ip("client", "shop")
    before = len(cluster.access_log(1, "outbound"))
    result = cluster.curl("client", f"http://{SHOP_SERVICE}/")
    assert result.returncode == 0, result.stderr
    seen = result.stdout
    lines = eventually(lambda: cluster.access_log(1, "outbound")[before:], 10, "the access-log line")
    assert len(lines) == 1
    assert lines[0]["mtls"] and lines[0]["dst_service"] == SHOP_SERVICE
    assert lines[0]["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert lines[0]["upstream"].endswith(":15008")
    assert seen == f"peer={client_ip}\n"


def test_underlay_carries_only_tls_to_15008(clusters, tmp_path):
    in_each(clusters, lambda cluster: underlay_carries_only_tls_to_15008(cluster, tmp_path / f"{cluster.redirect}.txt"))


def underlay_carries_only_tls_to_15008(cluster, capture_file: Path):
    with tcpdump(cluster.layout.underlay_netns, "br0", "tcp and net 198.19.0.0/16", capture_file) as capture:
        assert cluster.curl("client", f"http://{SHOP_SERVICE}/").returncode == 0
    assert capture.headers, "the capture saw no pod traffic on the underlay"
    assert all(re.search(r"\.15008[ :]", l) for l in capture.headers), capture.headers[:4]
    assert "peer=" not in capture.text and "GET / HTTP" not in capture.text


def test_metrics_match_bytes_sent(clusters):
    in_each(clusters, metrics_match_bytes_sent)


def metrics_match_bytes_sent(cluster):
    labels = {"reporter": "source", "destination_service": SHOP_SERVICE}
    rx0 = cluster.metric(1, "istio_tcp_received_bytes_total", **labels)
    tx0 = cluster.metric(1, "istio_tcp_sent_bytes_total", **labels)
    opened0 = cluster.metric(1, "istio_tcp_connections_opened_total", **labels)
    size = 2_000_000
    result = cluster.exec("client", PYTHON, APPS, "send", SHOP_SERVICE, "9000", str(size))
    assert result.stdout.strip() == str(size), result.stderr
    eventually(lambda: cluster.metric(1, "istio_tcp_received_bytes_total", **labels) - rx0 == size, 10,
               "received bytes to match")
    assert cluster.metric(1, "istio_tcp_sent_bytes_total", **labels) - tx0 == size
    assert cluster.metric(1, "istio_tcp_connections_opened_total", **labels) - opened0 == 1
    assert cluster.metric(2, "istio_tcp_received_bytes_total", reporter="destination",
                          connection_security_policy="mutual_tls", destination_service=SHOP_SERVICE) >= size


def test_iperf3_and_redis_through_the_mesh(clusters):
    in_each(clusters, iperf3_and_redis_through_the_mesh)


def iperf3_and_redis_through_the_mesh(cluster):
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


def test_strict_refuses_plaintext_and_clients_without_a_mesh_certificate(clusters):
    in_each(clusters, strict_refuses_plaintext_and_clients_without_a_mesh_certificate)


def strict_refuses_plaintext_and_clients_without_a_mesh_certificate(cluster):
    server_ip = cluster.pod_ip("server", "shop")
    ok = cluster.curl("outsider", f"http://{server_ip}:8080/", namespace="legacy")
    assert ok.returncode == 0 and ok.stdout.startswith("peer="), ok.stderr  # PERMISSIVE by default
    cluster.apply(STRICT)
    try:
        eventually(lambda: cluster.curl("outsider", f"http://{server_ip}:8080/", namespace="legacy").returncode != 0,
                   20, "STRICT to apply")
        line = cluster.access_log(2, "inbound_plaintext")[-1]
        assert "STRICT" in line["error"]
        assert cluster.curl("client", f"http://{SHOP_SERVICE}/").returncode == 0  # mesh clients still pass
        direct = cluster.curl("outsider", f"https://{server_ip}:15008/", "-k", "--http2-prior-knowledge",
                              namespace="legacy")
        assert direct.returncode != 0
        line = eventually(lambda: [l for l in cluster.access_log(2, "inbound")
                                   if "TLS handshake failed" in (l["error"] or "")], 10, "the refused handshake")[-1]
        assert line["response_flags"] == "UPE"
    finally:
        cluster.delete(STRICT, check=False)


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


def test_deny_blocks_and_allow_admits_only_its_principal(clusters):
    in_each(clusters, deny_blocks_and_allow_admits_only_its_principal)


def deny_blocks_and_allow_admits_only_its_principal(cluster):
    url = f"http://{SHOP_SERVICE}/"
    cluster.apply(DENY_CLIENT)
    try:
        eventually(lambda: cluster.curl("client", url).returncode != 0, 20, "DENY to apply")
        assert cluster.curl("other", url).returncode == 0
        line = [l for l in cluster.access_log(1, "outbound")
                if l["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"][-1]
        assert "policy denied" in line["error"] and "deny-client" in line["error"]
    finally:
        cluster.delete(DENY_CLIENT, check=False)
    eventually(lambda: cluster.curl("client", url).returncode == 0, 20, "DENY to go")
    cluster.apply(ALLOW_OTHER)
    try:
        eventually(lambda: cluster.curl("client", url).returncode != 0, 20, "ALLOW to apply")
        assert cluster.curl("other", url).stdout.startswith("peer=")
    finally:
        cluster.delete(ALLOW_OTHER, check=False)
    eventually(lambda: cluster.curl("client", url).returncode == 0, 20, "ALLOW to go")


def test_known_workloads_keep_working_without_the_control_plane(clusters):
    in_each(clusters, known_workloads_keep_working_without_the_control_plane)


def known_workloads_keep_working_without_the_control_plane(cluster):
    url = f"http://{SHOP_SERVICE}/"
    # An existing connection: a long echo exchange started before the control plane goes.
    sender = subprocess.Popen([*SHOAL, "local", "exec", "-n", "shop", "client", "--cluster", cluster.name,
                               "--", PYTHON, APPS, "send", SHOP_SERVICE, "9000", "300000000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    expected = cluster.curl("client", url).stdout
    assert expected.startswith("peer=")
    store = cluster.layout.store()
    store.delete("Pod", "shoal-system", "control-plane-node1")
    try:
        eventually(lambda: "config stream lost" in cluster.logs("ztunnel-node1", "shoal-system"), 30,
                   "the ztunnel to lose the control plane")
        for _ in range(3):  # new connections, between workloads it already knows
            result = cluster.curl("client", url)
            assert result.stdout == expected, result.stderr
        out, err = sender.communicate(timeout=120)
        assert out.strip() == "300000000", err
    finally:
        if sender.poll() is None:
            sender.kill()
        cluster.up(2, cluster.redirect)


def test_shoal_config_reads_the_ztunnel_dump(clusters):
    in_each(clusters, shoal_config_reads_the_ztunnel_dump)


def shoal_config_reads_the_ztunnel_dump(cluster):
    workloads = cluster.run("config", "workloads", "--node", "1")
    rows = [line.split() for line in workloads.stdout.splitlines()]
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert ["shop", "client"] == next(r[:2] for r in rows if r[1] == "client")
    certs = json.loads(cluster.run("config", "certs", "--node", "1", "-o", "json").stdout)
    mine = {c["identity"]: c for c in certs}
    assert mine["spiffe://cluster.local/ns/shop/sa/client"]["state"] == "valid"
    assert mine["spiffe://cluster.local/ns/shop/sa/client"]["expires_in_seconds"] > 3600
    services = cluster.run("config", "services", "--node", "2").stdout
    assert SHOP_SERVICE in services
    missing = cluster.run("config", "workloads", "--node", "9", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
