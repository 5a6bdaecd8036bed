"""`sidecar-haproxy`: Debian's HAProxy as each pod's sidecar, mTLS between the sidecars.

HAProxy stands in for Envoy, which is not packaged here (BENCHMARKS.md). Each
pod of the set-up gets one more container, `haproxy`, in the pod's netns:

- outbound, 15001: the app's TCP, captured with iptables (`bench.sidecar_capture`),
  goes on to its original destination (`server ... 0.0.0.0`, which HAProxy
  reads with SO_ORIGINAL_DST) over TLS 1.3, presenting the pod's certificate
  and verifying the server's chain to the mesh root;
- inbound, 15006: captured TCP arrives as TLS; HAProxy requires and verifies
  the client's certificate (`verify required`), then connects to the app on
  127.0.0.1 at the port the client addressed (a server with no port keeps it).

The certificates are shoal's: the benchmark asks the cluster's control plane
(`Certificates.Sign`, with the node's bootstrap token, from the node's netns)
for each pod's SPIFFE identity, and writes the chain and key where the
container waits for them. One thread, no logs: the cheapest sidecar HAProxy
can be, which favours the sidecars in the comparison.

Two modes, two set-ups: `sidecar-haproxy` is L4 (`mode tcp`), the cost of
mTLS alone; `sidecar-haproxy-http` is `mode http` on both sides, so each
sidecar parses every request and response and keeps its upstream connections
alive (`http-reuse always`, as an L7 sidecar does): the L7 sidecar that
`ambient-l7`, with its waypoint, is measured against (issue 18).
HAProxy drops to the `haproxy` user, which is how the capture tells its own
connections from the app's (as Istio's uid 1337).
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from shoal import identity, netns
from shoal.config_client import ClientSettings, request_certificate
from shoal.contracts import CONTROL_PLANE_GRPC_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT
from shoal.local.layout import Layout, node_index, node_ip

from bench import sidecar_capture

CONTAINER = "haproxy"
MODES = ("tcp", "http")
CAPTURE = sidecar_capture.HAPROXY
TRUST_DOMAIN = "cluster.local"


def work_dir(layout: Layout, namespace: str, pod: str) -> Path:
    """Where a pod's sidecar finds its configuration and certificate (removed with the cluster)."""
    return layout.run_dir / "bench-sidecars" / f"{namespace}_{pod}"


def config(directory: Path, bundle: Path, mode: str = "tcp") -> str:
    if mode not in MODES:
        raise ValueError(f"HAProxy sidecar mode {mode!r}: one of {', '.join(MODES)}")
    tls = f"ca-file {bundle} verify required ssl-min-ver TLSv1.3"
    http = ["  option http-keep-alive", "  http-reuse always", "  timeout http-keep-alive 1h",
            "  timeout http-request 1h"] if mode == "http" else []
    return "\n".join([
        "global",
        "  user haproxy",
        "  group haproxy",
        "  nbthread 1",
        "  maxconn 4096",
        "defaults",
        f"  mode {mode}",
        *http,
        "  timeout connect 5s",
        "  timeout client 1h",
        "  timeout server 1h",
        "frontend outbound",
        f"  bind 0.0.0.0:{OUTBOUND_PORT}",
        "  default_backend original_destination",
        "backend original_destination",
        f"  server original 0.0.0.0 ssl crt {directory / 'cert.pem'} {tls}",
        "frontend inbound",
        f"  bind 0.0.0.0:{INBOUND_PLAINTEXT_PORT} ssl crt {directory / 'cert.pem'} {tls}",
        "  default_backend app",
        "backend app",
        "  server app 127.0.0.1",
        "",
    ])


def container(layout: Layout, namespace: str, pod: str, mode: str = "tcp") -> dict:
    """The sidecar container: writes its config, waits for its certificate, becomes HAProxy."""
    directory = work_dir(layout, namespace, pod)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "haproxy.cfg").write_text(config(directory, layout.ca_bundle, mode))
    cert = shlex.quote(str(directory / "cert.pem"))
    script = (f"while [ ! -s {cert} ]; do sleep 0.1; done; "
              f"exec haproxy -db -f {shlex.quote(str(directory / 'haproxy.cfg'))}")
    return {"name": CONTAINER, "command": ["sh", "-c", script],
            "readinessProbe": {"tcpSocket": {"port": INBOUND_PLAINTEXT_PORT}}}


def is_sidecar(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "haproxy"


async def _sign(layout: Layout, node: str, who: identity.SpiffeId) -> identity.Credential:
    settings = ClientSettings(target=f"{node_ip(1)}:{CONTROL_PLANE_GRPC_PORT}",
                              bundle_pem=layout.ca_bundle.read_bytes(),
                              token=layout.node_token(node_index(node)).read_text().strip(), node=node)
    return await request_certificate(settings, identity.new_key(), who)


def ready(layout: Layout, namespace: str, pod: str, node: str, service_account: str) -> None:
    """Once the pod runs: its certificate (HAProxy starts on it), then its capture."""
    issue_certificate(layout, namespace, pod, node, service_account)
    sidecar_capture.install(layout.pod_netns(namespace, pod), CAPTURE)


def issue_certificate(layout: Layout, namespace: str, pod: str, node: str, service_account: str) -> None:
    """Asks shoal's CA for the pod's identity, as its node's ztunnel would, and hands it to the sidecar.

    The CA signs an identity only for a node that runs a pod with it, so call
    this once the pod has its address."""
    who = identity.format_spiffe_id(TRUST_DOMAIN, namespace, service_account)
    credential = netns.run_in(layout.node_netns(node_index(node)), lambda: asyncio.run(_sign(layout, node, who)))
    directory = work_dir(layout, namespace, pod)
    staged = directory / "cert.pem.new"
    staged.touch(mode=0o600)
    staged.write_bytes(credential.chain_pem + credential.key_pem)
    staged.rename(directory / "cert.pem")   # the container starts HAProxy on the whole file, never half of it
