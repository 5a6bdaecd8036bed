"""A sidecar's traffic capture: iptables nat rules in its pod's netns, as Istio's init container writes them.

    -t nat SIDECAR_OUTBOUND   (from OUTPUT)
      -o lo                           RETURN    the pod talking to itself, and the proxy to its app
      <the proxy's own traffic>       RETURN    by owner uid (HAProxy) or by mark 0x539 (the ztunnel)
      -d 198.18.0.0/24 --dport 15012  RETURN    a ztunnel sidecar's own link to the control plane
      -p tcp                          REDIRECT --to-ports 15001
    -t nat SIDECAR_INBOUND    (from PREROUTING)
      -i lo                           RETURN
      --dport <the proxy's ports>     RETURN    mTLS/HBONE and probes reach the proxy as they are
      -p tcp                          REDIRECT --to-ports 15006

Both proxies read where a connection was going with SO_ORIGINAL_DST. The
rules go in once per pod, from the benchmark (the injector's part), with
`iptables-legacy-restore --noflush`, so the pod's other tables are left alone.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from shoal.contracts import CONTROL_PLANE_GRPC_PORT, INBOUND_PLAINTEXT_PORT, MARK, OUTBOUND_PORT
from shoal.local.layout import NODE_NETWORK

from bench.report import BenchError

OUTBOUND_CHAIN = "SIDECAR_OUTBOUND"
INBOUND_CHAIN = "SIDECAR_INBOUND"


class CaptureError(BenchError):
    pass


@dataclass(frozen=True)
class Exempt:
    """What a sidecar's capture lets through: the proxy's own outbound traffic, and its inbound ports."""
    owner_uid: str | None = None        # the proxy runs as this user (HAProxy drops to `haproxy`)
    mark: int | None = None             # or marks its sockets (the ztunnel: 0x539)
    inbound_ports: tuple[int, ...] = ()


HAPROXY = Exempt(owner_uid="haproxy", inbound_ports=(INBOUND_PLAINTEXT_PORT,))
ZTUNNEL = Exempt(mark=MARK, inbound_ports=(INBOUND_PLAINTEXT_PORT, 15008, 15020, 15021))


def rules(exempt: Exempt) -> str:
    """The input of `iptables-restore --noflush`: both chains whole, and one jump to each."""
    own = []
    if exempt.owner_uid is not None:
        own.append(f"-A {OUTBOUND_CHAIN} -m owner --uid-owner {exempt.owner_uid} -j RETURN")
    if exempt.mark is not None:
        own.append(f"-A {OUTBOUND_CHAIN} -m mark --mark {hex(exempt.mark)} -j RETURN")
    ports = ",".join(str(p) for p in exempt.inbound_ports)
    lines = [
        "*nat",
        f":{OUTBOUND_CHAIN} - [0:0]",
        f":{INBOUND_CHAIN} - [0:0]",
        f"-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}",
        f"-A {OUTBOUND_CHAIN} -o lo -j RETURN",
        *own,
        f"-A {OUTBOUND_CHAIN} -p tcp -d {NODE_NETWORK} --dport {CONTROL_PLANE_GRPC_PORT} -j RETURN",
        f"-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}",
        f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}",
        f"-A {INBOUND_CHAIN} -i lo -j RETURN",
        *([f"-A {INBOUND_CHAIN} -p tcp -m multiport --dports {ports} -j RETURN"] if ports else []),
        f"-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
        "COMMIT",
        "",
    ]
    return "\n".join(lines)


def install(netns_name: str, exempt: Exempt) -> None:
    """Installs the capture in a pod's netns; once per pod (a second install would add a second jump)."""
    result = subprocess.run(["ip", "netns", "exec", netns_name, "iptables-legacy-restore", "--noflush"],
                            input=rules(exempt), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise CaptureError(f"sidecar capture in {netns_name} failed: {result.stderr.strip()}; "
                           "check that iptables-legacy is installed (scripts/setup.sh)")
