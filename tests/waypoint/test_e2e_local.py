"""End to end through the local cluster (root): the waypoint between real pods.

One 2-node cluster (iptables redirect), the real control plane, node agents,
ztunnels and a waypoint that the control plane deploys for a Gateway made
by `shoal waypoint apply`. Namespace `shop` is enrolled and uses the
waypoint; `reviews` has v1 and v2 (DestinationRule subsets), `flaky` fails
every other request, `reviews-shadow` receives mirrors. curl in a client pod
is the client; the apps are python http.server processes that log every hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from pathlib import Path

import pytest

from shoal.contracts import METRICS_PORT

from support import metrics
from support.cluster import LocalCluster, running_cluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

PYTHON = sys.executable
APP = str(Path(__file__).with_name("wp_apps.py"))
GRPC_APP = str(Path(__file__).with_name("wp_grpc_app.py"))
REVIEWS = "http://reviews.shop.svc.cluster.local"
FLAKY = "http://flaky.shop.svc.cluster.local"
WAYPOINT = {"gateway.networking.k8s.io/gateway-name": "waypoint"}  # the label of the waypoint's pods


def deployment(name, labels, argv):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"serviceAccountName": labels["app"],
                                  "containers": [{"name": "app", "command": argv,
                                                  "readinessProbe": {"tcpSocket": {"port": 8080}}}]}}}}


def service(name, app):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def apps() -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {
            "shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"}}},
        deployment("reviews-v1", {"app": "reviews", "version": "v1"}, [PYTHON, APP, "reviews-v1", "8080"]),
        deployment("reviews-v2", {"app": "reviews", "version": "v2"}, [PYTHON, APP, "reviews-v2", "8080"]),
        deployment("shadow", {"app": "shadow"}, [PYTHON, APP, "shadow", "8080"]),
        deployment("flaky", {"app": "flaky"}, [PYTHON, APP, "flaky", "8080", "--fail-every-other"]),
        deployment("greeter-v1", {"app": "greeter", "version": "v1"}, [PYTHON, GRPC_APP, "server", "greeter-v1", "8080"]),
        deployment("greeter-v2", {"app": "greeter", "version": "v2"}, [PYTHON, GRPC_APP, "server", "greeter-v2", "8080"]),
        service("reviews", "reviews"), service("reviews-shadow", "shadow"), service("flaky", "flaky"),
        service("catalog", "reviews"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "catalog-v2", "namespace": "shop"},
         "spec": {"selector": {"app": "reviews", "version": "v2"}, "ports": [{"name": "http", "port": 80,
                                                                             "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "greeter", "namespace": "shop"},
         "spec": {"selector": {"app": "greeter"}, "ports": [{"name": "grpc", "port": 9090, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "shop"},
         "spec": {"nodeName": "node1", "serviceAccountName": "client",
                  "containers": [{"name": "sh", "command": ["sleep", "infinity"]}]}},
    ]


ROUTING = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: abort
    match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 2s, percentage: {value: 100}}}
    timeout: 0.5s
    route: [{destination: {host: reviews, subset: v1}}]
  - name: mirror
    match: [{uri: {prefix: /mirror}}]
    mirror: {host: reviews-shadow}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: split
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 2, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: greeter, namespace: shop}
spec:
  host: greeter
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: greeter, namespace: shop}
spec:
  hosts: [greeter]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: greeter, subset: v2}}]
  - route: [{destination: {host: greeter, subset: v1}}]
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: catalog, namespace: shop}
spec:
  service: catalog
  backends:
  - {service: catalog-v2, weight: 100}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""


class Shop(LocalCluster):
    """The cluster, seen from namespace shop: its client pod's requests, the apps' hits, the waypoint."""

    def sh(self, script: str, timeout: float = 90):
        return self.exec("client", "sh", "-c", script, namespace="shop", check=False, timeout=timeout)

    def request(self, url: str, *options: str):
        return self.curl("client", url, *options, namespace="shop", max_time=10)

    def status(self, url: str, *headers: str) -> int:
        options = [a for h in headers for a in ("-H", h)]
        return int(self.request(url, "-o", "/dev/null", "-w", "%{http_code}", *options).stdout.strip() or 0)

    def pod(self, **labels: str) -> dict | None:
        """The first of shop's pods with these labels, or None."""
        return next(iter(self.pods("shop", **labels).values()), None)

    def hits(self, **labels: str) -> list[dict]:
        """What the app in the first pod with these labels logged: one line per request it answered."""
        out = self.logs(self.pod(**labels)["metadata"]["name"], "shop")
        return [json.loads(l) for l in out.splitlines() if l.startswith('{"hit"')]

    def waypoint_log(self, path: str) -> list[dict]:
        """The waypoint's access-log lines for requests to `path`."""
        out = self.logs(self.pod(**WAYPOINT)["metadata"]["name"], "shop")
        return [line for line in (json.loads(l) for l in out.splitlines() if l.startswith("{"))
                if line.get("path") == path]

    def waypoint_metric(self, **labels) -> float:
        netns = self.pod(**WAYPOINT)["status"]["shoal"]["netns"].rsplit("/", 1)[1]
        return metrics.value(metrics.scrape(METRICS_PORT, netns=netns), "istio_requests_total", **labels) or 0.0


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("wp", nodes=2, redirect="iptables", kind=Shop) as c:
        c.apply(apps())
        # with its access log, which the tests below read (a waypoint writes none unless asked for)
        assert "waypoint shop/waypoint applied" in c.run("waypoint", "apply", "-n", "shop", "--access-log").stdout
        c.apply(ROUTING)
        eventually(lambda: c.pod(**WAYPOINT), 30, "the control plane to deploy the waypoint", interval=0.3)
        eventually(lambda: c.status(f"{REVIEWS}/ready", "end-user: jason") == 200, 60,
                   "reviews to answer through the waypoint", interval=0.3)
        yield c


def test_waypoint_is_deployed_and_listed(cluster):
    def listed_ready():
        # the waypoint may carry traffic before the kubelet's next probe has marked it ready
        out = cluster.run("waypoint", "list", "-n", "shop").stdout
        return out if re.search(r"shop\s+waypoint\s+service\s+1/1", out) else None
    eventually(listed_ready, 30, "the waypoint to be listed as ready (1/1)", interval=0.3)
    dump = json.loads(cluster.run("waypoint", "config", "-n", "shop").stdout)
    assert dump["certificate"]["identity"] == "spiffe://cluster.local/ns/shop/sa/waypoint"
    assert "reviews.shop.svc.cluster.local:80" in dump["route_tables"] and "shop/no-admin" in dump["policies"]
    assert cluster.pod(**WAYPOINT)["spec"]["serviceAccountName"] == "waypoint"


def test_weights_split_about_90_10(cluster):
    urls = " ".join([f"{REVIEWS}/split"] * 100)
    r = cluster.sh(f"curl -sS --max-time 30 {urls}")
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 100, (r.stdout, r.stderr)
    v2 = sum(l.startswith("reviews-v2") for l in lines)
    # Binomial(100, 0.1): 1..25 holds with probability > 99.99%.
    assert 1 <= v2 <= 25, v2


def test_header_match_routes_to_v2(cluster):
    r = cluster.request(f"{REVIEWS}/who", "-H", "end-user: jason")
    assert r.stdout.startswith("reviews-v2 GET /who"), (r.stdout, r.stderr)


def test_traffic_split_sends_the_root_service_to_its_backend(cluster):
    """SMI (the seeds' Linkerd article): `catalog` selects v1 and v2; the split sends all of it to catalog-v2."""
    r = cluster.sh("curl -sS --max-time 20 " + " ".join(["http://catalog.shop.svc.cluster.local/ts"] * 10))
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert lines == ["reviews-v2 GET /ts"] * 10, (r.stdout, r.stderr)


def test_fault_abort(cluster):
    assert cluster.status(f"{REVIEWS}/abort") == 418


def test_delay_longer_than_timeout_gives_504(cluster):
    """The fault delay (2s) outlasts the route's timeout (0.5s): the waypoint answers 504 itself, saying
    why, and the request never reaches reviews."""
    assert cluster.status(f"{REVIEWS}/slow") == 504
    (line,) = eventually(lambda: cluster.waypoint_log("/slow"), 10, "the waypoint's access-log line for /slow")
    assert line["status"] == 504 and line["response_flags"] == "DI,UT"
    assert "/slow" not in [h["path"] for v in ("v1", "v2") for h in cluster.hits(app="reviews", version=v)]


def test_retries_turn_a_failing_first_try_into_success(cluster):
    before = len(cluster.hits(app="flaky"))
    statuses = [cluster.status(f"{FLAKY}/r{i}") for i in range(3)]
    assert statuses == [200, 200, 200]
    hits = cluster.hits(app="flaky")[before:]
    assert len(hits) == 6 and [h["status"] for h in hits] == [503, 200] * 3


def test_mirror_reaches_the_shadow_with_shadow_host(cluster):
    assert cluster.status(f"{REVIEWS}/mirror-me") == 200
    hits = eventually(lambda: [h for h in cluster.hits(app="shadow") if h["path"] == "/mirror-me"], 10, "the mirror")
    assert hits[0]["host"] == "reviews.shop.svc.cluster.local-shadow", hits[0]   # the request's Host + -shadow


def test_deny_policy_on_a_path_gives_403(cluster):
    assert cluster.status(f"{REVIEWS}/admin/users") == 403
    assert cluster.status(f"{REVIEWS}/public", "end-user: jason") == 200


def test_istio_requests_total_counts(cluster):
    before = cluster.waypoint_metric(response_code="418", reporter="waypoint", destination_service=
                                     "reviews.shop.svc.cluster.local", source_workload="client")
    for _ in range(3):
        assert cluster.status(f"{REVIEWS}/abort") == 418
    after = cluster.waypoint_metric(response_code="418", reporter="waypoint",
                                    destination_service="reviews.shop.svc.cluster.local", source_workload="client")
    assert after - before == 3
    assert cluster.waypoint_metric(response_code="403", response_flags="RBAC") >= 1


def test_grpc_through_the_waypoint_routes_by_metadata(cluster):
    def call(*metadata):
        r = cluster.exec("client", PYTHON, GRPC_APP, "client", "greeter.shop.svc.cluster.local:9090", "3", *metadata,
                         namespace="shop", check=False)
        return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")], r.stderr
    replies, err = call()
    assert [r.get("reply", r) for r in replies] == [f"greeter-v1: hello {i}" for i in range(3)], err
    replies, err = call("x-canary=yes")
    assert [r.get("reply", r) for r in replies] == [f"greeter-v2: hello {i}" for i in range(3)], err
    assert cluster.waypoint_metric(request_protocol="grpc", grpc_response_status="0",
                                   destination_service="greeter.shop.svc.cluster.local") >= 6


def test_a_large_upload_streams_through_the_waypoint_with_flat_memory(cluster, tmp_path):
    size = 80 << 20      # five times the most the waypoint keeps whole for a retry
    upload, digest = tmp_path / "upload.bin", hashlib.sha256()
    with upload.open("wb") as f:
        for _ in range(size >> 20):
            piece = os.urandom(1 << 20)
            digest.update(piece)
            f.write(piece)
    procs = Path(cluster.pod(**WAYPOINT)["status"]["shoal"]["cgroup"], "cgroup.procs")

    def rss() -> int:
        total = 0
        for pid in procs.read_text().split():
            status = Path(f"/proc/{pid}/status")
            found = re.search(r"VmRSS:\s+(\d+) kB", status.read_text()) if status.exists() else None
            total += int(found.group(1)) * 1024 if found else 0
        return total

    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = cluster.curl("client", f"{REVIEWS}/upload-large", "--data-binary", f"@{upload}", "-o", "/dev/null",
                              "-w", "%{http_code}", namespace="shop", max_time=180)
    finally:
        done.set()
        sampler.join()
    assert result.stdout.strip() == "200", result
    hits = [h for version in ("v1", "v2") for h in cluster.hits(app="reviews", version=version)
            if h["path"] == "/upload-large"]
    assert [(h["size"], h["sha256"]) for h in hits] == [(size, digest.hexdigest())]
    grew = peak[0] - base
    assert grew < 32 << 20, f"the waypoint's RSS grew by {grew >> 20} MiB carrying an {size >> 20} MiB upload"


def test_access_log_has_one_line_per_request(cluster):
    assert cluster.status(f"{REVIEWS}/logged-once") == 200
    lines = cluster.waypoint_log("/logged-once")
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["event"] == "request complete" and line["status"] == 200 and line["route"] == "split"
    assert line["src_workload"] == "client" and line["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert line["dst_service"] == "reviews.shop.svc.cluster.local"


def test_waypoint_for_all_takes_traffic_to_pod_ips_too(cluster):
    """`--for all`: a request straight to a pod's IP goes through the waypoint as well (workload traffic)."""
    cluster.run("waypoint", "apply", "-n", "shop", "--for", "all", "--access-log")
    url = f"http://{cluster.pod(app='reviews', version='v2')['status']['podIP']}:8080/direct"

    def through_waypoint():
        assert cluster.status(url) == 200
        return cluster.waypoint_log("/direct")
    lines = eventually(through_waypoint, 30, "pod-IP traffic to reach the waypoint", interval=0.3)
    assert lines[-1]["status"] == 200 and lines[-1]["dst_workload"].startswith("reviews-v2")
    cluster.run("waypoint", "apply", "-n", "shop", "--for", "service", "--access-log")


def test_zy_a_waypoint_not_asked_for_an_access_log_writes_none(cluster):
    """Applied again without --access-log: the annotation goes, the control plane replaces the waypoint with
    one started without `--access-log on`, which serves requests (the fault's 418 is its answer) and counts
    them, and logs no line for them."""
    cluster.run("waypoint", "apply", "-n", "shop")

    def replaced():
        pods = list(cluster.pods("shop", **WAYPOINT).values())
        return (len(pods) == 1 and "--access-log" not in pods[0]["spec"]["containers"][0]["command"]
                and cluster.status(f"{REVIEWS}/abort") == 418)
    eventually(replaced, 60, "the waypoint to be replaced by one without an access log", interval=0.3)
    labels = dict(response_code="418", reporter="waypoint", destination_service="reviews.shop.svc.cluster.local")
    before = cluster.waypoint_metric(**labels)
    assert cluster.status(f"{REVIEWS}/abort") == 418
    assert cluster.waypoint_metric(**labels) == before + 1
    assert cluster.waypoint_log("/abort") == []


def test_zz_deleting_the_waypoint_refuses_traffic_until_the_namespace_stops_asking_for_it(cluster):
    """Last in the module: `shoal waypoint delete` takes the Deployment and Service away. While the namespace
    still says use-waypoint, its traffic is refused (never sent around the L7 policy it asked for, issue 9
    item 10); once the label goes, traffic flows without L7 routing again (no fault abort any more)."""
    cluster.run("waypoint", "delete", "-n", "shop")
    eventually(lambda: not cluster.pod(**WAYPOINT), 30, "the waypoint pod to go", interval=0.3)
    assert "waypoint" not in [s["metadata"]["name"] for s in cluster.items("services", "shop")]
    eventually(lambda: cluster.status(f"{REVIEWS}/abort") == 0, 30, "traffic to the missing waypoint refused",
               interval=0.3)
    assert cluster.status(f"{REVIEWS}/abort") == 0            # refused: not 418 (the fault), not 200 (direct)
    cluster("label", "namespace", "shop", "shoal.io/use-waypoint-")
    eventually(lambda: cluster.status(f"{REVIEWS}/abort") == 200, 30, "traffic to go direct without the label",
               interval=0.3)
