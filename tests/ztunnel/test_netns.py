"""The ztunnel in real network namespaces (root): pods on a bridge, iptables capture, real TLS.

The node agent's part is played by the rig (it installs REDIRECT rules the
way the agent's iptables mode does, and hands each pod's netns fd to the
ztunnel); the control plane's part by a ProxyState filled in directly and a
test CA. Everything else is the ztunnel as it runs: listeners inside the
pods, HBONE/mTLS between them, source-IP preservation, policy, metrics.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal import handoff, netns
from shoal.model import (
    Action, Authorization, Endpoint, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol, Rule,
    Service, ServicePort, Source, Workload,
)
from shoal.certs import CertManager
from shoal.proxy_state import ProxyState
from ztunnel.config import Config
from ztunnel.proxy import Ztunnel

from support import metrics
from support.ca import TestCA
from support.capture import tcpdump
from support.polling import eventually
from support.rules import shoal_rules
from support.root import needs_root
import zt_netns
from zt_netns import sh

pytestmark = needs_root("creates network namespaces and iptables rules")

APPS = str(Path(__file__).with_name("zt_apps.py"))
PREFIX = f"shoal-zt{os.getpid() % 100000}-"
ROUTER = PREFIX + "router"
PODS = {"a": "198.19.1.2", "b": "198.19.2.2", "c": "198.19.3.2"}
WEB_VIP, ECHO_VIP = "198.18.16.10", "198.18.16.11"
A_PRINCIPAL = "cluster.local/ns/app/sa/a"


def pod_ns(name):
    return PREFIX + name


def in_pod(name, *argv, timeout=20, check=False):
    return subprocess.run(["ip", "netns", "exec", pod_ns(name), *argv], capture_output=True, text=True,
                          timeout=timeout, check=check)


def build_network():
    netns.create(ROUTER)
    sh("ip", "-n", ROUTER, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ROUTER, "addr", "add", "198.19.0.1/16", "dev", "br0")
    sh("ip", "-n", ROUTER, "link", "set", "br0", "up")
    # The router only bridges. Without forwarding it drops what is for no pod (198.18.99.1 below)
    # instead of answering it unreachable; a new netns takes the host's ip_forward, so say it here.
    sh("ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    for name, ip in PODS.items():
        netns.create(pod_ns(name))
        sh("ip", "-n", ROUTER, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", pod_ns(name))
        sh("ip", "-n", ROUTER, "link", "set", f"v{name}", "master", "br0", "up")
        sh("ip", "-n", pod_ns(name), "addr", "add", f"{ip}/16", "dev", "eth0")
        sh("ip", "-n", pod_ns(name), "link", "set", "eth0", "up")
        sh("ip", "-n", pod_ns(name), "route", "add", "default", "via", "198.19.0.1")


def capture_rules(name):
    zt_netns.capture_rules(pod_ns(name))


def workloads():
    a = Workload("uid-a", "a", "app", "a", "node1", (PODS["a"],), protocol=Protocol.HBONE)
    b = Workload("uid-b", "b", "app", "b", "node1", (PODS["b"],), protocol=Protocol.HBONE)
    c = Workload("uid-c", "c", "legacy", "default", "node1", (PODS["c"],), protocol=Protocol.TCP)
    web = Service("web", "app", "web.app.svc.cluster.local", (WEB_VIP,), (ServicePort(80),), (Endpoint("uid-b", 80, 8080),))
    echo = Service("echo", "app", "echo.app.svc.cluster.local", (ECHO_VIP,), (ServicePort(9000),),
                   (Endpoint("uid-b", 9000, 9000),))
    return a, b, c, web, echo


class Rig(zt_netns.RigBase):
    def __init__(self):
        super().__init__()
        self.ca = TestCA()

    def start(self):
        build_network()
        for name in ("a", "b"):
            capture_rules(name)
        for mode, port in (("http", 8080), ("echo", 9000)):
            proc = netns.popen(pod_ns("b"), [sys.executable, APPS, mode, str(port)], stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            self.procs.append(proc)
        self.start_loop()

        async def boot():
            self.state = ProxyState()
            for r in workloads():
                self.state.upsert(r)
            self.ztunnel = Ztunnel(Config(connect_timeout=3), self.state, CertManager(self.ca.sign))
            for uid, name, sa in (("uid-a", "a", "a"), ("uid-b", "b", "b")):
                await self.ztunnel.add_workload(handoff.Workload(uid, name, "app", sa), netns.open_fd(pod_ns(name)))
        self.call(boot())

    def stop(self):
        """Undoes whatever start() got to, even when it failed half-way."""
        try:
            self.stop_loop(*([self.ztunnel] if hasattr(self, "ztunnel") else []))
        finally:
            for name in [ROUTER] + [pod_ns(p) for p in PODS]:
                netns.remove(name)

    def metric(self, name, **labels):
        return metrics.value(self.ztunnel.metrics.render().decode(), name, **labels) or 0.0


@pytest.fixture(scope="module")
def rig():
    r = Rig()
    try:
        r.start()
        yield r
    finally:
        r.stop()


def curl(pod, url, timeout=8):
    return in_pod(pod, "curl", "-sS", "--max-time", str(timeout), url)


def test_service_through_hbone_keeps_client_ip(rig):
    mark = rig.mark()
    result = curl("a", f"http://{WEB_VIP}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"peer={PODS['a']}\n"
    # Outbound and inbound records, both mTLS, both naming the service.
    lines = [rig.line_after(mark, "outbound"), rig.line_after(mark, "inbound")]
    assert all(l["mtls"] and l["dst_service"] == "web.app.svc.cluster.local" for l in lines)
    assert lines[1]["src_identity"] == "spiffe://cluster.local/ns/app/sa/a"


def test_bytes_match_metrics_and_one_log_line_per_connection(rig):
    before_rx = rig.metric("istio_tcp_received_bytes_total", reporter="source", destination_service="echo.app.svc.cluster.local")
    before_tx = rig.metric("istio_tcp_sent_bytes_total", reporter="destination", destination_service="echo.app.svc.cluster.local")
    before_lines = len(rig.access_lines())
    size = 3_000_000
    result = in_pod("a", sys.executable, APPS, "send", ECHO_VIP, "9000", str(size))
    assert result.stdout.strip() == str(size), result.stderr
    rig.line_after(before_lines, "outbound")
    rig.line_after(before_lines, "inbound")
    assert rig.metric("istio_tcp_received_bytes_total", reporter="source",
                      destination_service="echo.app.svc.cluster.local") - before_rx == size
    assert rig.metric("istio_tcp_sent_bytes_total", reporter="destination",
                      destination_service="echo.app.svc.cluster.local") - before_tx == size
    new = rig.access_lines()[before_lines:]
    assert sorted(l["direction"] for l in new) == ["inbound", "outbound"]
    assert all(l["bytes_received"] == size and l["bytes_sent"] == size for l in new)


def test_capture_between_pods_is_only_tls_to_15008(rig, tmp_path):
    with tcpdump(ROUTER, "br0", "tcp", tmp_path / "cap.txt") as capture:
        assert curl("a", f"http://{WEB_VIP}/").returncode == 0
    assert capture.headers, "tcpdump saw nothing"
    assert all(".15008 " in l or ".15008:" in l for l in capture.headers), capture.headers[:5]
    assert "peer=" not in capture.text and "GET / HTTP" not in capture.text


def test_plaintext_permissive_then_strict(rig):
    # C is not in the mesh: its plaintext to B is captured on 15006.
    result = curl("c", f"http://{PODS['b']}:8080/")
    assert result.returncode == 0 and result.stdout == f"peer={PODS['c']}\n", result.stderr
    strict = PeerAuthentication("strict", "app", PolicyScope.NAMESPACE, PeerAuthMode.STRICT)
    with rig.applied(strict):
        mark = rig.mark()
        result = curl("c", f"http://{PODS['b']}:8080/")
        assert result.returncode != 0
        line = rig.line_after(mark, "inbound_plaintext")
        assert "STRICT" in line["error"]
        # Meshed A still gets through.
        assert curl("a", f"http://{PODS['b']}:8080/").stdout == f"peer={PODS['a']}\n"


def test_client_without_mesh_certificate_cannot_use_15008(rig):
    mark = rig.mark()
    result = in_pod("c", "curl", "-sS", "-k", "--max-time", "5", "--http2-prior-knowledge",
                    f"https://{PODS['b']}:15008/")
    assert result.returncode != 0
    line = rig.line_after(mark, "inbound")
    assert "TLS handshake failed" in line["error"]


def test_deny_blocks_and_allow_admits_only_its_principal(rig):
    deny = Authorization("deny-a", "app", PolicyScope.NAMESPACE, Action.DENY,
                         (Rule(sources=(Source(principals=(A_PRINCIPAL,)),)),))
    with rig.applied(deny):
        mark = rig.mark()
        result = curl("a", f"http://{WEB_VIP}/")
        assert result.returncode != 0
        denied = rig.line_after(mark, "inbound")
        assert "deny-a" in denied["error"] and denied["response_flags"] == "UAEX"
        outbound = rig.line_after(mark, "outbound")
        assert "policy denied" in outbound["error"]
    allow_other = Authorization("allow-other", "app", PolicyScope.NAMESPACE, Action.ALLOW,
                                (Rule(sources=(Source(principals=("cluster.local/ns/app/sa/other",)),)),))
    allow_a = Authorization("allow-a", "app", PolicyScope.NAMESPACE, Action.ALLOW,
                            (Rule(sources=(Source(principals=(A_PRINCIPAL,)),)),))
    with rig.applied(allow_other):
        assert curl("a", f"http://{WEB_VIP}/").returncode != 0
        with rig.applied(allow_a):
            assert curl("a", f"http://{WEB_VIP}/").stdout == f"peer={PODS['a']}\n"


def test_passthrough_outside_the_mesh_and_refused_port_is_classed(rig):
    # C is not meshed: A reaches it with plain TCP (nothing listens: refused, and said so).
    mark = rig.mark()
    result = curl("a", f"http://{PODS['c']}:7777/", timeout=4)
    assert result.returncode != 0
    line = rig.line_after(mark, "outbound")
    assert line["plan"] == "passthrough" and line["error"].startswith("refused")


def test_del_workload_closes_listeners_and_rules(rig):
    fd = netns.open_fd(pod_ns("c"))
    sock = rig.call(rig.ztunnel.add_workload(handoff.Workload("uid-c", "c", "legacy", "default"), fd))
    assert sock is not None
    rules = in_pod("c", "iptables-legacy-save", "-t", "mangle").stdout
    assert "SHOAL_ZTUNNEL" in rules
    listening = in_pod("c", "ss", "-ltnH").stdout
    assert ":15001" in listening and ":15006" in listening and ":15008" in listening
    rig.call(rig.ztunnel.del_workload("uid-c"))

    def closed():   # (what ss lists,) once none of the three is among it: that is often nothing at all
        out = in_pod("c", "ss", "-ltnH").stdout
        return None if any(port in out for port in (":15001", ":15006", ":15008")) else (out,)
    (listening,) = eventually(closed, 10, "the pod's listeners to close", interval=0.05)
    assert ":15001" not in listening and ":15006" not in listening and ":15008" not in listening
    assert shoal_rules(pod_ns("c"), "SHOAL_ZTUNNEL") == []
    assert "lookup 133" not in in_pod("c", "ip", "rule").stdout


def test_a_dead_endpoint_is_retried_on_another_and_then_skipped(rig):
    # Two endpoints: C (plain TCP, nothing listens on 8080: refused) and B (answers).
    flaky = Service("flaky", "app", "flaky.app.svc.cluster.local", ("198.18.16.12",), (ServicePort(80),),
                    (Endpoint("uid-c", 80, 8080), Endpoint("uid-b", 80, 8080)))
    with rig.applied(flaky):
        for _ in range(4):
            result = curl("a", "http://198.18.16.12/")
            assert result.stdout == f"peer={PODS['a']}\n", result.stderr
        assert rig.ztunnel.balancer.ejected(("198.19.3.2", 8080)) or \
            rig.ztunnel.balancer._failures.get(("198.19.3.2", 8080), 0) >= 1
        def flaky_lines():
            return [l for l in rig.access_lines() if l.get("dst_service") == "flaky.app.svc.cluster.local"
                    and l["direction"] == "outbound"]
        # The ztunnel logs a connection once its side has closed too.
        eventually(lambda: len(flaky_lines()) >= 4, 5, "an access-log line for each of the 4 connections")
        lines = flaky_lines()
        assert len(lines) == 4 and all(l["error"] is None and l["upstream"] == "198.19.2.2:15008" for l in lines)


def test_identity_mismatch_and_timeout_are_classed(rig):
    import dataclasses
    a, b, *_ = workloads()
    # The config now says B runs as another service account than the certificate its ztunnel presents.
    rig.set(dataclasses.replace(b, service_account="impostor"))
    try:
        mark = rig.mark()
        assert curl("a", f"http://{WEB_VIP}/").returncode != 0
        line = rig.line_after(mark, "outbound")
        assert line["error"].startswith("TLS identity mismatch") and "impostor" in line["error"]
        assert line["response_flags"] == "UPE"
    finally:
        rig.set(b)
    assert curl("a", f"http://{WEB_VIP}/").stdout == f"peer={PODS['a']}\n"
    # Nothing answers 198.18.99.1 (the router drops it): a passthrough that times out.
    mark = rig.mark()
    assert curl("a", "http://198.18.99.1/", timeout=6).returncode != 0
    line = rig.line_after(mark, "outbound")
    assert line["plan"] == "passthrough" and line["error"].startswith("timed_out")


def test_a_tunnel_reaches_only_the_pod_it_names_never_its_loopback(rig):
    """Issue 9, item 5: CONNECT targets other than the pod's own addresses (its loopback, another pod, the
    ztunnel's own ports) are refused, also while the control plane has not described the pod yet."""
    from shoal import identity
    from shoal.hbone_io import HboneSession, TunnelRefused
    from shoal.model import ResourceType

    credential = rig.ca.credential("spiffe://cluster.local/ns/app/sa/a")

    async def tunnels(targets):
        loop = asyncio.get_running_loop()
        _, session = await loop.create_connection(lambda: HboneSession(True), PODS["b"], 15008,
                                                  ssl=identity.client_context(credential), server_hostname="")
        answers = {}
        for target in targets:
            try:
                stream = await session.open(target, timeout=5)
                answers[target] = 200
                stream.abort()
            except TunnelRefused as e:
                answers[target] = e.status
        session.close()
        return answers

    targets = ("127.0.0.1:8080", f"{PODS['a']}:8080", f"{PODS['b']}:15006", f"{PODS['b']}:8080")
    expected = {"127.0.0.1:8080": 400, f"{PODS['a']}:8080": 400, f"{PODS['b']}:15006": 400, f"{PODS['b']}:8080": 200}
    assert netns.run_in(pod_ns("c"), asyncio.run, tunnels(targets)) == expected
    b = rig.state.workloads["uid-b"]
    rig.set(remove=[(ResourceType.WORKLOAD, "uid-b")])     # b's Workload not (or no longer) in the config
    try:
        assert netns.run_in(pod_ns("c"), asyncio.run, tunnels(targets)) == expected
    finally:
        rig.set(b)


def test_a_second_ztunnel_can_take_over_the_same_pods(rig):
    """SO_REUSEPORT: a new ztunnel binds the same ports in the same pods while the old one still listens."""
    async def second():
        z2 = Ztunnel(Config(connect_timeout=3), rig.state, CertManager(rig.ca.sign))
        for uid, name, sa in (("uid-a", "a", "a"), ("uid-b", "b", "b")):
            await z2.add_workload(handoff.Workload(uid, name, "app", sa), netns.open_fd(pod_ns(name)))
        return z2
    def opened(z):
        return sum(s.value for m in z.metrics.opened.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["reporter"] == "source")
    before = opened(rig.ztunnel)
    z2 = rig.call(second())
    try:
        results = [curl("a", f"http://{WEB_VIP}/").stdout for _ in range(16)]
        assert results == [f"peer={PODS['a']}\n"] * 16
        # The kernel spreads new connections over both listeners (by 4-tuple hash).
        by_second = opened(z2)
        assert by_second > 0 and (opened(rig.ztunnel) - before) + by_second == 16
    finally:
        rig.call(z2.close())
    # The first one still serves alone.
    assert curl("a", f"http://{WEB_VIP}/").stdout == f"peer={PODS['a']}\n"


LONG_LIVED = """
import random, socket, sys, time
c = socket.create_connection((sys.argv[1], 9000), timeout=20)
rng, total = random.Random(7), 0
try:
    for i in range(int(sys.argv[2])):
        chunk = rng.randbytes(rng.randrange(1, 50000))
        c.sendall(chunk)
        got = b""
        while len(got) < len(chunk):
            part = c.recv(65536)
            if not part:
                print("closed early", flush=True)
                sys.exit(1)
            got += part
        if got != chunk:
            print("mismatch", flush=True)
            sys.exit(1)
        total += len(chunk)
        if i == 0:
            print("flowing", flush=True)
        time.sleep(0.05)
    c.shutdown(socket.SHUT_WR)
    print("ok" if c.recv(1) == b"" else "extra", total, flush=True)
except ConnectionResetError:
    print("reset", flush=True)
"""


def test_an_upgrade_drains_the_old_ztunnel_with_a_goaway_and_drops_nothing(rig):
    """Issue 9, item 2: a new ztunnel takes over the pods; the old one stops accepting and sends GOAWAY to its
    HBONE peers. A long connection through the old one flows byte-exact to its end, the peer's pooled HBONE
    connection turns away from new streams, and the next one it opens lands on the new ztunnel. Runs before
    the drain test and leaves the new ztunnel as the rig's."""
    old = rig.ztunnel
    long = subprocess.Popen(["ip", "netns", "exec", pod_ns("a"), sys.executable, "-c", LONG_LIVED, ECHO_VIP, "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert long.stdout.readline().strip() == "flowing"       # through the old ztunnel, the only one yet
    [key] = [k for k in old.pool.connections if k.destination == (PODS["b"], 15008)]
    [carrying] = [c for c in old.pool.connections[key] if c.open_streams]
    assert not carrying.closing
    served_by_old = _served_by(old)

    async def upgrade():
        new = Ztunnel(Config(connect_timeout=3), rig.state, CertManager(rig.ca.sign))
        for uid, name, sa in (("uid-a", "a", "a"), ("uid-b", "b", "b")):
            await new.add_workload(handoff.Workload(uid, name, "app", sa), netns.open_fd(pod_ns(name)))
        old.stop_accepting()
        return new
    new = rig.call(upgrade())
    rig.ztunnel = new                                          # whatever happens below, later tests use it
    draining = asyncio.run_coroutine_threadsafe(old.drain(20), rig.loop)
    try:
        eventually(lambda: carrying.closing, 5, "the GOAWAY at the peer's pooled connection")
        assert long.poll() is None                             # still flowing through the old ztunnel

        async def next_tunnel():
            stream = await old.pool.open_stream(key, f"{PODS['b']}:9000", 5)
            stream.abort()
            return [c for c in old.pool.connections[key] if not c.closing]
        [fresh] = rig.call(next_tunnel())                     # a new connection, since the old one is closing
        assert fresh is not carrying
        eventually(lambda: _served_by(new) == 1, 5, "the new ztunnel to serve the new tunnel")
        assert _served_by(old) == served_by_old                # the old one took nothing new
        out, err = long.communicate(timeout=30)
        assert out.split()[0] == "ok", (out, err)              # every byte back, in order, no reset
        assert draining.result(30) is True                     # nothing had to be cut at the deadline
    finally:
        draining.cancel()
        rig.call(old.close())
        if long.poll() is None:
            long.kill()
    assert curl("a", f"http://{WEB_VIP}/").stdout == f"peer={PODS['a']}\n"   # the new one serves alone


def _served_by(z) -> int:
    """HBONE tunnels a ztunnel accepted as the destination."""
    return int(sum(s.value for m in z.metrics.opened.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["reporter"] == "destination"))


SLOW_SENDER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 9000), timeout=20)
for _ in range(10):
    c.sendall(b"d" * 10000)
    time.sleep(0.1)
c.shutdown(socket.SHUT_WR)
got = 0
while chunk := c.recv(65536):
    got += len(chunk)
print(got, flush=True)
"""

IDLE_HOLDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], 9000), timeout=20)
c.sendall(b"x")
c.recv(1)
print("open", flush=True)
try:
    print("closed" if c.recv(1) == b"" else "data", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
"""


def test_drain_refuses_new_lets_open_finish_and_cuts_the_rest(rig):
    """Runs last: it stops the rig's listeners."""
    def start(code):
        return subprocess.Popen(["ip", "netns", "exec", pod_ns("a"), sys.executable, "-c", code, ECHO_VIP],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle = start(IDLE_HOLDER)
    assert idle.stdout.readline().strip() == "open"
    slow = start(SLOW_SENDER)
    time.sleep(0.3)
    rig.loop.call_soon_threadsafe(rig.ztunnel.stop_accepting)
    time.sleep(0.2)
    assert curl("a", f"http://{WEB_VIP}/", timeout=3).returncode != 0  # no listener any more
    started = time.monotonic()
    clean = rig.call(rig.ztunnel.drain(2.5), timeout=15)
    assert not clean and time.monotonic() - started >= 2.4
    assert slow.communicate(timeout=10)[0].strip() == "100000"  # finished during the drain
    assert idle.communicate(timeout=10)[0].strip() in ("reset", "closed")  # cut at the deadline
    assert not rig.ztunnel.active

