"""The benchmark's sidecar set-ups carry what they claim: HAProxy sidecars speak mTLS to each other and
check the client's certificate, and sidecar ztunnels tunnel HBONE. One local cluster for the module, with
the set-ups deployed by the benchmark's own code (`bench.run.Bench.deploy`), and the wire between the two
pods captured in the server pod's netns."""

from __future__ import annotations

import pytest

from bench import sidecar_haproxy
from bench.run import Bench, parse_args
from bench.setups import HTTP_PORT, SETUPS, latency_objects
from support.capture import tcpdump
from support.cluster import running_cluster
from support.root import needs_root

pytestmark = needs_root("builds a local cluster and captures traffic in its namespaces")

CANARY = "plaintext-canary-7f3c"   # in the request's path, header and body: it must never cross the wire


@pytest.fixture(scope="module")
def deployed():
    with running_cluster("bsc") as cluster:
        bench = Bench(parse_args(["--quick", "--cluster", cluster.name, "--setups", "sidecar-haproxy,sidecar-shoal"]))
        bench.open()
        try:
            for name in ("baseline", "sidecar-haproxy", "sidecar-shoal"):
                bench.deploy(SETUPS[name].sidecar, latency_objects(SETUPS[name], 1024))
            yield cluster, bench
        finally:
            bench.close()


def call(cluster, setup: str, *curl_options: str, url: str | None = None):
    ns = SETUPS[setup].namespace
    return cluster.curl("client-cross", url or f"http://server.{ns}:{HTTP_PORT}/{CANARY}", "-o", "/dev/null",
                        "-w", "%{http_code}", "-H", f"X-Canary: {CANARY}", "--data", CANARY, *curl_options,
                        namespace=ns)


def captured(cluster, setup: str, tmp_path, *curl_options: str):
    """What crossed the server pod's eth0 from or to the cross-node client while it called the server."""
    ns = SETUPS[setup].namespace
    client_ip = cluster.pod_ip("client-cross", ns)
    netns = cluster.layout.pod_netns(ns, "server")
    with tcpdump(netns, "eth0", f"tcp and host {client_ip}", tmp_path / f"{setup}.txt") as wire:
        result = call(cluster, setup, *curl_options)
    return result, wire


def test_the_capture_sees_plaintext_where_there_is_some(deployed, tmp_path):
    # The control: without a mesh the canary is on the wire, so its absence below means something.
    cluster, _ = deployed
    result, wire = captured(cluster, "baseline", tmp_path)
    assert result.stdout == "200", result.stderr
    assert CANARY in wire.text and "HTTP/1.1" in wire.text


def test_haproxy_sidecars_carry_nothing_but_tls_between_the_pods(deployed, tmp_path):
    cluster, _ = deployed
    result, wire = captured(cluster, "sidecar-haproxy", tmp_path)
    assert result.stdout == "200", result.stderr
    assert len(wire.headers) >= 6, wire.text   # handshake and data did cross this wire
    assert f".{HTTP_PORT}:" in wire.text or f".{HTTP_PORT} " in wire.text   # to the app's port, captured in the pod
    assert CANARY not in wire.text
    assert "HTTP/1.1" not in wire.text and "POST /" not in wire.text


def test_the_haproxy_server_sidecar_requires_a_client_certificate_from_the_mesh(deployed, tmp_path):
    cluster, bench = deployed
    ns = SETUPS["sidecar-haproxy"].namespace
    server = f"{cluster.pod_ip('server', ns)}:{HTTP_PORT}"
    # From a pod with no sidecar: plaintext to the server pod meets the TLS listener and fails.
    plain = cluster.curl("client-cross", f"http://{server}/", "-o", "/dev/null", "-w", "%{http_code}",
                         namespace=SETUPS["baseline"].namespace)
    assert plain.returncode != 0 and plain.stdout != "200"
    # TLS without a client certificate: refused in the handshake.
    bundle = str(cluster.layout.ca_bundle)
    anonymous = cluster.curl("client-cross", f"https://{server}/", "--cacert", bundle, "-k", "-o", "/dev/null",
                             "-w", "%{http_code}", namespace=SETUPS["baseline"].namespace)
    assert anonymous.returncode != 0 and anonymous.stdout != "200", anonymous.stdout
    # The same call with a certificate from the mesh's CA (the client sidecar's) is let through.
    cert = str(sidecar_haproxy.work_dir(bench.layout, ns, "client-cross") / "cert.pem")
    signed = cluster.curl("client-cross", f"https://{server}/", "--cacert", bundle, "-k", "--cert", cert, "--key", cert,
                          "-o", "/dev/null", "-w", "%{http_code}", namespace=SETUPS["baseline"].namespace)
    assert signed.stdout == "200", signed.stderr


def test_shoal_sidecars_tunnel_hbone_between_the_pods(deployed, tmp_path):
    cluster, _ = deployed
    result, wire = captured(cluster, "sidecar-shoal", tmp_path)
    assert result.stdout == "200", result.stderr
    assert wire.headers, wire.text
    assert all(".15008" in line for line in wire.headers), "\n".join(wire.headers[:10])   # HBONE, nothing else
    assert CANARY not in wire.text and "HTTP/1.1" not in wire.text
