"""End to end (root): the ztunnel's DNS proxy in the local cluster, both redirect modes.

Namespace `names` is enrolled with `shoal.io/dns-capture: "true"`. Pod
`client` has two containers: a shell, and its own resolver on port 53 of
all its addresses (127.0.0.1 is what the local cluster's resolv.conf names;
its pod IP is a resolver off loopback), which knows only
`other.test` and logs every query it gets. Real clients ask: glibc
(`getent`, which also retries over TCP on a truncated answer), curl, and
a raw UDP client for the malformed query. An outside server
(shoal-<cluster>-outside12) is reached by a ServiceEntry's name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shoal import netns
from shoal.local.outside import ensure_outside
from control_plane.translate.service_entry import allocate

from support.cluster import LocalCluster, in_each, running_in_each_mode
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

PYTHON = sys.executable
RESOLVER_APP = str(Path(__file__).with_name("dns_resolver_app.py"))
WEB_APP = str(Path(__file__).parents[1] / "waypoint" / "wp_apps.py")
API = "api.outside.test"
API_VIP = allocate([API])[API][0]        # the one entry host without addresses in this cluster
MANY = tuple(f"198.18.48.{i}" for i in range(100, 160))   # 60 addresses: more than a 512-byte UDP answer holds

MANIFEST = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "names", "labels": {
        "shoal.io/dataplane-mode": "ambient", "shoal.io/dns-capture": "true"}}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "names"},
     "spec": {"nodeName": "node1", "containers": [
         {"name": "sh", "command": ["sleep", "infinity"]},
         {"name": "resolver", "command": [PYTHON, RESOLVER_APP, "0.0.0.0", "53"]}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "names"},
     "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "api", "namespace": "names"},
     "spec": {"hosts": [API], "resolution": "DNS", "location": "MESH_EXTERNAL",
              "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
              "endpoints": [{"address": "198.18.48.12"}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "many", "namespace": "names"},
     "spec": {"hosts": ["many.outside.test"], "addresses": list(MANY), "resolution": "NONE",
              "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}},
]

DENY_API = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "no-api", "namespace": "names"},
            "spec": {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "api"}],
                     "action": "DENY", "rules": [{}]}}
WAYPOINT = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "egress", "namespace": "names"},
            "spec": {"gatewayClassName": "shoal-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}

RAW_CLIENT = """
import socket, sys, json
from shoal import dns_message as dm
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("127.0.0.1", 53))
out = []
first = [bytes.fromhex(sys.argv[1])] if sys.argv[1] != "-" else []
for message in first + [dm.build_query(sys.argv[2], int(sys.argv[3]), 77)]:
    s.send(message)
    reply = s.recv(4096)
    out.append({"id": int.from_bytes(reply[:2], "big"), "rcode": dm.response_code(reply),
                "addresses": dm.answer_addresses(reply) if dm.response_code(reply) == 0 else []})
print(json.dumps(out))
"""

# DNS over TCP to the pod's own IP, a resolver that is not on loopback (in eBPF mode the connect is seen by
# connect4, not by the iptables chain that takes loopback DNS to the proxy).
TCP_CLIENT = """
import socket, sys, json
from shoal import dns_message as dm
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect(("198.18.0.1", 9))           # no packet: only to learn the pod's own address
resolver = probe.getsockname()[0]
s = socket.create_connection((resolver, 53), timeout=5)
out = []
for i, name in enumerate(sys.argv[1:]):
    s.sendall(dm.frame(dm.build_query(name, 1, 100 + i)))
    framer, replies = dm.TcpFramer(), []
    while not replies:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("the connection closed before an answer")
        replies = list(framer.feed(chunk))
    code = dm.response_code(replies[0])
    out.append({"name": name, "rcode": code, "addresses": dm.answer_addresses(replies[0]) if code == 0 else []})
print(json.dumps({"resolver": resolver, "answers": out}))
"""


def outside_api(c: LocalCluster):
    """The outside server a ServiceEntry names, started in its own netns (wired here, in the caller's thread)."""
    name, _ = ensure_outside(c.layout, 12)
    log = c.layout.run_dir / "outside12.log"
    return netns.popen(name, [PYTHON, WEB_APP, "outside-api", "8080"], stdout=open(log, "w"),
                       stderr=open(log.with_suffix(".err"), "w"))


def answering(c: LocalCluster) -> None:
    c.apply(MANIFEST)
    c.wait_pods_ready("names", 1, timeout=120)
    c.resolver_log = c.layout.pod_log("names", "client", "resolver")
    c.resolver_skip = 0
    eventually(lambda: getent(c, "ahostsv4", API), 90, "the DNS proxy to answer in the client pod", interval=0.5)
    # Until the ServiceEntry reached the ztunnel, its name was not the proxy's to answer and went to
    # the pod's resolver (a slow config push under load): what the tests judge starts here.
    c.resolver_skip = len(resolver_saw(c))


@pytest.fixture(scope="module")
def clusters():
    """A 1-node cluster per redirect mode, side by side; each test runs its steps in both at once (`in_each`)."""
    with running_in_each_mode("ns", nodes=1) as both:
        servers = []
        try:
            for c in both.values():
                servers.append(outside_api(c))
            in_each(both, answering)
            yield both
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)


def getent(cluster, database: str, name: str) -> list[str]:
    out = cluster.exec("client", "getent", database, name, namespace="names", check=False)
    return sorted({line.split()[0] for line in out.stdout.splitlines()}) if out.returncode == 0 else []


def resolver_saw(cluster) -> list[dict]:
    """The queries the pod's own resolver got since the proxy was answering."""
    lines = cluster.resolver_log.read_text().splitlines() if cluster.resolver_log.exists() else []
    return [json.loads(line) for line in lines if line.startswith('{"transport"')][cluster.resolver_skip:]


def raw(cluster, first: bytes | None, name: str, qtype: int) -> list[dict]:
    """The replies to `first` (when given) then to a query for `name`, sent to the pod's resolver address."""
    out = cluster.exec("client", PYTHON, "-c", RAW_CLIENT, first.hex() if first else "-", name, str(qtype),
                       namespace="names",
                       check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_services_and_service_entry_hosts_are_answered_by_the_proxy_a_and_aaaa(clusters):
    in_each(clusters, services_and_service_entry_hosts_are_answered_by_the_proxy_a_and_aaaa)


def services_and_service_entry_hosts_are_answered_by_the_proxy_a_and_aaaa(cluster):
    vip = next(s["spec"]["clusterIP"] for s in cluster.items("svc", "names") if s["metadata"]["name"] == "web")
    # the hosts file answers Services too, so ask the resolver address itself, as a program without nsswitch would
    for name in ("web", "web.names", "web.names.svc.cluster.local"):
        (answer,) = raw(cluster, None, name, 1)
        assert answer["addresses"] == [vip], (name, answer)
    assert getent(cluster, "ahostsv4", API) == [API_VIP]
    v6 = allocate([API])[API][1]
    (aaaa,) = raw(cluster, None, API, 28)
    assert aaaa["addresses"] == [v6]
    assert not any(q["name"].startswith(("web", API)) for q in resolver_saw(cluster))   # none went to the resolver


def test_other_names_are_forwarded_to_the_pods_own_resolver(clusters):
    in_each(clusters, other_names_are_forwarded_to_the_pods_own_resolver)


def other_names_are_forwarded_to_the_pods_own_resolver(cluster):
    assert getent(cluster, "ahostsv4", "other.test") == ["198.18.48.99"]
    assert {"transport": "udp", "name": "other.test"} in resolver_saw(cluster)
    assert getent(cluster, "ahostsv4", "nothing.test") == []


def test_tcp_to_a_resolver_off_loopback_is_answered_by_the_proxy_and_forwarded_to_that_resolver(clusters):
    in_each(clusters, tcp_to_a_resolver_off_loopback_is_answered_by_the_proxy_and_forwarded_to_that_resolver)


def tcp_to_a_resolver_off_loopback_is_answered_by_the_proxy_and_forwarded_to_that_resolver(cluster):
    vip = next(s["spec"]["clusterIP"] for s in cluster.items("svc", "names") if s["metadata"]["name"] == "web")
    out = cluster.exec("client", PYTHON, "-c", TCP_CLIENT, "web.names", "tcp-only.test", namespace="names",
                       check=False)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert not found["resolver"].startswith("127."), found
    web, other = found["answers"]
    assert (web["rcode"], web["addresses"]) == (0, [vip])                 # the proxy's answer
    assert other["rcode"] == 3                                            # the resolver's NXDOMAIN, forwarded
    seen = resolver_saw(cluster)
    assert {"transport": "tcp", "name": "tcp-only.test"} in seen          # reached the address dialled, over TCP
    assert {"transport": "tcp", "name": "web.names"} not in seen          # the proxy answered it itself


def test_a_truncated_udp_answer_is_asked_again_over_tcp(clusters):
    in_each(clusters, a_truncated_udp_answer_is_asked_again_over_tcp)


def a_truncated_udp_answer_is_asked_again_over_tcp(cluster):
    assert getent(cluster, "ahostsv4", "many.outside.test") == sorted(MANY)


def test_a_malformed_query_gets_formerr_and_the_next_one_an_answer(clusters):
    in_each(clusters, a_malformed_query_gets_formerr_and_the_next_one_an_answer)


def a_malformed_query_gets_formerr_and_the_next_one_an_answer(cluster):
    bad = bytes.fromhex("abcd01000001000000000000") + b"\x05ab"       # a label cut short
    formerr, after = raw(cluster, bad, API, 1)
    assert (formerr["id"], formerr["rcode"]) == (0xABCD, 1)
    assert (after["id"], after["rcode"], after["addresses"]) == (77, 0, [API_VIP])


def test_a_service_entry_is_reached_by_name_and_a_deny_policy_blocks_it(clusters):
    in_each(clusters, a_service_entry_is_reached_by_name_and_a_deny_policy_blocks_it)


def a_service_entry_is_reached_by_name_and_a_deny_policy_blocks_it(cluster):
    def fetched():
        out = cluster.curl("client", f"http://{API}/by-name", namespace="names", max_time=10)
        return out.stdout if out.returncode == 0 else None
    assert "outside-api GET /by-name" in eventually(fetched, 60, "the ServiceEntry by name", interval=0.5)
    cluster.apply([WAYPOINT, {**MANIFEST[3], "metadata": {**MANIFEST[3]["metadata"],
                                                         "labels": {"istio.io/use-waypoint": "egress"}}}, DENY_API])

    def refused():
        out = cluster.curl("client", f"http://{API}/after-deny", "-w", "%{http_code}", namespace="names", max_time=10)
        return out.stdout if out.stdout.endswith("403") else None
    eventually(refused, 120, "the DENY policy to refuse the entry at its waypoint", interval=0.5)
    log = (cluster.layout.run_dir / "outside12.log").read_text()
    assert "/after-deny" not in log
