"""Issue 17, end to end: IPv6 through the mesh on a local cluster, dual stack in both redirect modes and
IPv6 only, one cluster per (family, mode), every check on it.

What is checked, with curl and a Python HTTP server that answers with the peer address it saw:
- curl from an enrolled pod on node1 to a Service's IPv6 VIP and to a pod's IPv6 address on node2 gets
  its answer, and a capture on node1's link shows HBONE (IPv6 to :15008) and never the request's bytes;
- the server sees the client's own IPv6 address;
- a plaintext client outside the mesh reaches a PERMISSIVE pod over IPv6 and is refused by a STRICT one;
- an AuthorizationPolicy DENY blocks one identity over IPv6 and not another;
- the ztunnels' metrics count the IPv6 connections for the right workloads, and their access logs carry
  the IPv6 addresses, bracketed;
- (dual stack) a Python client with an AF_INET6 socket to the v4-mapped address of the Service's IPv4 VIP
  is captured: HBONE on the link, no plaintext;
- (iptables clusters) a waypoint routes a request to a Service's IPv6 VIP by a header match, its access log
  brackets the client's IPv6 address and the endpoint's, and istio_requests_total counts it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from support import metrics
from support.capture import tcpdump
from support.cli import shoal
from support.cluster import LocalCluster, unique_name
from support.polling import eventually
from support.root import IS_ROOT, needs_root

pytestmark = needs_root("runs a local cluster")

NS, OUTSIDE = "ds", "ds-outside"
SERVER_PORT = 8080
# Answers every GET with the peer address it saw; listens on :: for both families (IPV6_V6ONLY off).
ECHO_PEER = """
import http.server, socket
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("peer=" + self.client_address[0] + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 8080), Handler).serve_forever()
"""


def server_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"nodeName": "node2", "containers": [{"name": "app", "command": ["python3", "-c", ECHO_PEER],
                                                           "readinessProbe": {"tcpSocket": {"port": SERVER_PORT}}}]}}


def client_pod(name: str, namespace: str = NS, service_account: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": "node1", "serviceAccountName": service_account,
                     "containers": [{"name": "sh", "command": ["sleep", "infinity"]}]}}


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"ipFamilyPolicy": "PreferDualStack", "selector": {"app": name},
                     "ports": [{"port": 80, "targetPort": SERVER_PORT}]}}


MANIFEST = [
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": NS, "labels": {"shoal.io/dataplane-mode": "ambient"}}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OUTSIDE}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "blocked", "namespace": NS}},
    server_pod("server"), server_pod("strict"), service("server"),
    client_pod("client"), client_pod("blocked", service_account="blocked"), client_pod("outsider", OUTSIDE),
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "strict", "namespace": NS},
     "spec": {"selector": {"matchLabels": {"app": "strict"}}, "mtls": {"mode": "STRICT"}}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "deny-blocked", "namespace": NS},
     "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "DENY",
              "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/blocked"]}}]}]}},
]


class DualStackCluster(LocalCluster):
    def __init__(self, name: str, ip_family: str, redirect: str) -> None:
        super().__init__(name)
        self.ip_family, self.redirect = ip_family, redirect

    def up_with_family(self) -> None:
        self("up", "--nodes", "2", "--redirect", self.redirect, "--ip-family", self.ip_family)

    def ips(self, pod: str, namespace: str = NS) -> list[str]:
        return [p["ip"] for p in self.pods(namespace)[pod]["status"]["podIPs"]]

    def ipv6(self, pod: str, namespace: str = NS) -> str:
        return next(ip for ip in self.ips(pod, namespace) if ":" in ip)

    def vips(self, name: str) -> list[str]:
        return json.loads(self("get", "svc", name, "-n", NS, "-o", "json").stdout)["spec"]["clusterIPs"]

    def connections(self, node: int) -> list[dict]:
        """ztunnel-node<N>'s access-log records, as `shoal local logs` shows them."""
        text = self.logs(f"ztunnel-node{node}", namespace="shoal-system")
        return [json.loads(line) for line in text.splitlines()
                if line.startswith("{") and '"connection complete"' in line]


CASES = [("dual", "iptables"), ("dual", "ebpf"), ("ipv6", "iptables"), ("ipv6", "ebpf")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{m}" for f, m in CASES])
def cluster(request):
    if not IS_ROOT:
        pytest.skip("needs root: runs a local cluster")
    family, mode = request.param
    cluster = DualStackCluster(unique_name(f"ds{family[0]}{mode[0]}"), family, mode)
    cluster.host_before = _host_ipv6()
    try:
        cluster.up_with_family()
        cluster.apply(MANIFEST)
        cluster.wait_pods_ready(NS, 4, timeout=120)
        cluster.wait_pods_ready(OUTSIDE, 1, timeout=120)
        # Enrolled, with their config in both ztunnels: the client reaches the server through the mesh.
        eventually(lambda: _served(cluster, "client", f"http://[{cluster.ipv6('server')}]:{SERVER_PORT}/"), 120,
                   lambda: "the first curl over IPv6 from client to server", interval=0.5)
        yield cluster
    finally:
        cluster.down()


def _host_ipv6() -> tuple[str, str, str]:
    """The host's own IPv6 forwarding switch, routes and addresses: what the cluster must leave alone."""
    def ip(*argv: str) -> str:
        return subprocess.run(["ip", "-6", *argv], capture_output=True, text=True, check=True).stdout
    return Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text(), ip("route", "show"), ip("-br", "addr", "show")


def _served(cluster: DualStackCluster, pod: str, url: str, namespace: str = NS) -> str | None:
    result = cluster.curl(pod, url, namespace=namespace)
    return result.stdout if result.returncode == 0 and result.stdout.startswith("peer=") else None


def _across_the_link(cluster: DualStackCluster, tmp_path, name: str, pod: str, url: str, *, python: str | None = None):
    """The answer to a GET of `url` (with a marker in its path) from `pod` on node1, and what node1's link saw."""
    marker = f"dsmarker{uuid.uuid4().hex[:12]}"
    with tcpdump(cluster.layout.node_netns(1), "eth0", "tcp", tmp_path / f"{name}.txt") as capture:
        if python:
            result = cluster.exec(pod, "python3", "-c", python, marker, namespace=NS, check=False)
        else:
            result = cluster.curl(pod, f"{url}{marker}", namespace=NS)
    return result, capture.text, marker


def test_curl_to_a_services_ipv6_vip_and_a_pods_ipv6_address_crosses_nodes_in_hbone(cluster, tmp_path):
    client_ip, server_ip = cluster.ipv6("client"), cluster.ipv6("server")
    vip = next(ip for ip in cluster.vips("server") if ":" in ip)
    for name, url in (("vip", f"http://[{vip}]/"), ("pod", f"http://[{server_ip}]:{SERVER_PORT}/")):
        result, link, marker = _across_the_link(cluster, tmp_path, name, "client", url)
        assert result.returncode == 0, f"{url}: curl failed: {result.stderr}"
        assert result.stdout.strip() == f"peer={client_ip}", f"{url}: the server saw {result.stdout!r}"
        assert f"IP6 {client_ip}." in link and f"> {server_ip}.15008:" in link, \
            f"{url}: no HBONE over IPv6 from {client_ip} to {server_ip}:15008 on node1's link:\n{link[-3000:]}"
        assert marker not in link, f"{url}: the request crossed node1's link in plaintext"
        assert f"> {server_ip}.{SERVER_PORT}:" not in link and f"> {vip}.80:" not in link


def test_the_cluster_shows_its_family_and_every_address_and_leaves_the_host_alone(cluster):
    listed = next(line.split() for line in shoal("local", "list").stdout.splitlines()
                  if line.startswith(cluster.name + " "))
    assert listed[3] == cluster.ip_family, listed
    ips = cluster.ips("server")
    versions = [ipaddress.ip_address(ip).version for ip in ips]
    assert versions == ([4, 6] if cluster.ip_family == "dual" else [6]), ips   # primary first, as Kubernetes orders
    assert cluster.pods(NS)["server"]["status"]["podIP"] == ips[0]
    wide = next(line for line in cluster("get", "pods", "-n", NS, "-o", "wide").stdout.splitlines()
                if line.startswith("server "))
    assert ",".join(ips) in wide, wide
    spec = json.loads(cluster("get", "svc", "server", "-n", NS, "-o", "json").stdout)["spec"]
    assert spec["ipFamilyPolicy"] == "PreferDualStack"
    assert spec["ipFamilies"] == (["IPv4", "IPv6"] if cluster.ip_family == "dual" else ["IPv6"])
    assert [ipaddress.ip_address(ip).version for ip in spec["clusterIPs"]] == versions
    forwarding, routes, addresses = _host_ipv6()
    assert forwarding == cluster.host_before[0], "the host's net.ipv6.conf.all.forwarding changed"
    assert "fd73:686f:616c" not in routes + addresses, "the cluster's IPv6 range is wired to the host"


def test_names_resolve_to_the_services_ipv6_vip(cluster):
    result = cluster.exec("client", "getent", "ahostsv6", f"server.{NS}.svc.cluster.local", namespace=NS)
    vip = next(ip for ip in cluster.vips("server") if ":" in ip)
    assert result.stdout.split()[0] == vip
    answer = cluster.curl("client", "http://server/", "-6", namespace=NS)
    assert answer.returncode == 0 and answer.stdout.strip() == f"peer={cluster.ipv6('client')}", answer


def test_strict_refuses_a_plaintext_outsider_over_ipv6_and_permissive_lets_it_in(cluster):
    outsider = cluster.ipv6("outsider", OUTSIDE)
    permissive = cluster.curl("outsider", f"http://[{cluster.ipv6('server')}]:{SERVER_PORT}/", namespace=OUTSIDE)
    assert permissive.returncode == 0 and permissive.stdout.strip() == f"peer={outsider}", permissive
    strict_url = f"http://[{cluster.ipv6('strict')}]:{SERVER_PORT}/"
    refused = cluster.curl("outsider", strict_url, namespace=OUTSIDE)
    assert refused.returncode != 0 and "peer=" not in refused.stdout, refused
    meshed = cluster.curl("client", strict_url, namespace=NS)
    assert meshed.returncode == 0 and meshed.stdout.strip() == f"peer={cluster.ipv6('client')}", meshed


def test_a_deny_policy_blocks_its_identity_over_ipv6(cluster):
    vip = next(ip for ip in cluster.vips("server") if ":" in ip)
    for url in (f"http://[{vip}]/", f"http://[{cluster.ipv6('server')}]:{SERVER_PORT}/"):
        denied = cluster.curl("blocked", url, namespace=NS)
        assert denied.returncode != 0 and "peer=" not in denied.stdout, f"{url}: {denied}"
        allowed = cluster.curl("client", url, namespace=NS)
        assert allowed.returncode == 0 and allowed.stdout.strip() == f"peer={cluster.ipv6('client')}", allowed


def test_metrics_and_access_logs_carry_the_ipv6_connections(cluster):
    client_ip, server_ip = cluster.ipv6("client"), cluster.ipv6("server")
    labels = dict(source_workload="client", destination_workload="server", reporter="destination",
                  connection_security_policy="mutual_tls")

    def opened() -> float:
        return metrics.value(cluster.scrape(2, 15020), "istio_tcp_connections_opened_total", **labels) or 0.0

    before = opened()
    for _ in range(3):
        answer = cluster.curl("client", f"http://[{server_ip}]:{SERVER_PORT}/", namespace=NS)
        assert answer.returncode == 0, answer
    eventually(lambda: opened() >= before + 3, 30,
               lambda: f"istio_tcp_connections_opened_total{labels} from {before} up by 3: {opened()}")

    def logged():
        return [c for c in cluster.connections(2) if c.get("direction") == "inbound"
                and str(c.get("src_addr", "")).startswith(f"[{client_ip}]:")
                and c.get("dst_addr") == f"[{server_ip}]:{SERVER_PORT}"]
    records = eventually(logged, 30, lambda: f"an inbound access-log record [{client_ip}]:* -> [{server_ip}]:8080 "
                                             f"on node2; last records: {cluster.connections(2)[-3:]}")
    assert all(r.get("mtls") is True and r.get("src_workload") == "client" and r.get("dst_workload") == "server"
               for r in records), records[-1]


MAPPED_CLIENT = """
import socket, sys
vip = sys.argv[1]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(("::ffff:" + vip, 80))
s.sendall(("GET /" + sys.argv[2] + " HTTP/1.0\\r\\nHost: server\\r\\n\\r\\n").encode())
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode().split("\\r\\n\\r\\n", 1)[1].strip())
"""


def test_an_af_inet6_socket_to_a_v4_mapped_service_address_is_captured(cluster, tmp_path):
    if cluster.ip_family != "dual":
        pytest.skip("an IPv6-only cluster has no IPv4 Service address to map")
    vip4 = next(ip for ip in cluster.vips("server") if ":" not in ip)
    client_ip4 = next(ip for ip in cluster.ips("client") if ":" not in ip)
    server_ip4 = next(ip for ip in cluster.ips("server") if ":" not in ip)
    script = MAPPED_CLIENT.replace("sys.argv[1]", repr(vip4)).replace("sys.argv[2]", "sys.argv[1]")
    result, link, marker = _across_the_link(cluster, tmp_path, "mapped", "client", "", python=script)
    assert result.returncode == 0, f"the AF_INET6 client failed: {result.stderr}"
    # The server listens on :: with IPV6_V6ONLY off, so it names an IPv4 peer in its mapped form.
    assert result.stdout.strip() == f"peer=::ffff:{client_ip4}", result.stdout
    assert f"IP {client_ip4}." in link and f"> {server_ip4}.15008:" in link, \
        f"no HBONE from {client_ip4} to {server_ip4}:15008 on node1's link:\n{link[-3000:]}"
    assert marker not in link, "the v4-mapped connection crossed node1's link in plaintext"


# --- A waypoint in dual stack and IPv6 only: the waypoint decides, over IPv6 ----------------------------------

WP_NS, WP_SERVICE = "ds-wp", "wp-web"
# The echo server of the pods above, naming itself first: which version answered shows what the route chose.
NAMED_ECHO = ECHO_PEER.replace('body = ("peer=" +', 'body = (__import__("sys").argv[1] + " peer=" +')
WAYPOINT_MANIFEST = [
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": WP_NS, "labels": {"shoal.io/dataplane-mode": "ambient"}}},
    *({"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": f"wp-{version}", "namespace": WP_NS, "labels": {"app": WP_SERVICE, "version": version}},
       "spec": {"nodeName": "node2", "containers": [{"name": "app", "command": ["python3", "-c", NAMED_ECHO, version],
                                                     "readinessProbe": {"tcpSocket": {"port": SERVER_PORT}}}]}}
      for version in ("v1", "v2")),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": WP_SERVICE, "namespace": WP_NS},
     "spec": {"ipFamilyPolicy": "PreferDualStack", "selector": {"app": WP_SERVICE},
              "ports": [{"name": "http", "port": 80, "targetPort": SERVER_PORT}]}},
    {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
     "metadata": {"name": WP_SERVICE, "namespace": WP_NS},
     "spec": {"host": WP_SERVICE, "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}},
    {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
     "metadata": {"name": WP_SERVICE, "namespace": WP_NS},
     "spec": {"hosts": [WP_SERVICE], "http": [
         {"name": "pick-v2", "match": [{"headers": {"x-pick": {"exact": "v2"}}}],
          "route": [{"destination": {"host": WP_SERVICE, "subset": "v2"}}]},
         {"name": "default", "route": [{"destination": {"host": WP_SERVICE, "subset": "v1"}}]}]}},
]
WAYPOINT_POD = {"gateway.networking.k8s.io/gateway-name": "waypoint"}


@pytest.fixture(scope="module")
def waypoint(cluster):
    """Namespace ds-wp uses a waypoint (its access log on); wp-web's route sends `x-pick: v2` to v2, the rest to
    v1. Only on the iptables clusters: the waypoint's path is the same in eBPF mode, and a cluster's worth of
    pods costs the suite's time."""
    if cluster.redirect != "iptables":
        pytest.skip("the waypoint over IPv6 is shown on the iptables clusters (dual and ipv6)")
    cluster.apply(WAYPOINT_MANIFEST)
    applied = cluster.run("waypoint", "apply", "-n", WP_NS, "--enroll-namespace", "--access-log").stdout
    assert f"waypoint {WP_NS}/waypoint applied" in applied, applied
    cluster.wait_pods_ready(WP_NS, 3, timeout=180)
    vip = next(ip for ip in json.loads(cluster("get", "svc", WP_SERVICE, "-n", WP_NS, "-o", "json").stdout)
               ["spec"]["clusterIPs"] if ":" in ip)
    eventually(lambda: (_served_by(cluster, f"http://[{vip}]/ready", "x-pick: v2") or "").startswith("v2 "), 120,
               lambda: f"wp-web's IPv6 VIP {vip} answered by v2 through the waypoint", interval=0.5)
    return vip


def _served_by(cluster: DualStackCluster, url: str, *headers: str) -> str | None:
    options = [option for header in headers for option in ("-H", header)]
    result = cluster.curl("client", url, *options, namespace=NS)
    return result.stdout if result.returncode == 0 else None


def test_a_waypoint_routes_a_request_to_a_services_ipv6_vip_logs_it_bracketed_and_counts_it(cluster, waypoint):
    vip = waypoint
    (pod_name,) = cluster.pods(WP_NS, **WAYPOINT_POD)
    netns = cluster.pods(WP_NS)[pod_name]["status"]["shoal"]["netns"].rsplit("/", 1)[1]
    labels = dict(reporter="waypoint", destination_service=f"{WP_SERVICE}.{WP_NS}.svc.cluster.local",
                  source_workload="client", source_workload_namespace=NS, destination_workload="wp-v2",
                  response_code="200")

    def counted() -> float:
        return metrics.value(metrics.scrape(15020, netns=netns), "istio_requests_total", **labels) or 0.0

    before = counted()
    path = f"/wp-{uuid.uuid4().hex[:10]}"
    # The route decides: the same URL goes to v2 with the header and to v1 without it.
    assert (_served_by(cluster, f"http://[{vip}]{path}", "x-pick: v2") or "").startswith("v2 peer="), path
    assert (_served_by(cluster, f"http://[{vip}]{path}-default") or "").startswith("v1 peer=")
    eventually(lambda: counted() >= before + 1, 30,
               lambda: f"istio_requests_total{labels} from {before} up by 1: {counted()}")

    def logged():
        lines = [json.loads(line) for line in cluster.logs(pod_name, namespace=WP_NS).splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line.get("event") == "request complete" and line.get("path") == path]
    (line,) = eventually(logged, 30, lambda: f"the waypoint's access-log line for {path}")
    # The client's ztunnel reaches the waypoint at its IPv6 address (the dialled family), so the waypoint
    # sees the client's own IPv6 address; the endpoint is v2's primary address (IPv6 in an IPv6-only cluster).
    assert line["src_addr"].startswith(f"[{cluster.ipv6('client')}]:"), line
    assert line["src_workload"] == "client" and line["route"] == "pick-v2" and line["status"] == 200, line
    v2_primary = cluster.ips("wp-v2", WP_NS)[0]
    expected = f"[{v2_primary}]:{SERVER_PORT}" if ":" in v2_primary else f"{v2_primary}:{SERVER_PORT}"
    assert line["upstream"] == expected, line
