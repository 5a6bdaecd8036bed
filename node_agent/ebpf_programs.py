"""What the node agent's eBPF object holds: its programs with their types and attach points,
and its C source with the mesh's constants defined in front.

Both the agent (`node_agent.ebpf`, which opens the pins) and the short-lived child that
compiles them (`node_agent.ebpf_build`) read it; it imports neither, so neither imports the other back."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from shoal.contracts import DNS_PROXY_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK, OUTBOUND_PORT, PROBE_SOURCE

SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "redirect.c"

PROG_TYPE = {"sock_addr": 18, "sock_ops": 13, "sockopt": 25, "sk_lookup": 30}
ATTACH_CONNECT4, ATTACH_CONNECT6, ATTACH_SENDMSG6 = 10, 11, 15
ATTACH_GETPEERNAME4, ATTACH_GETPEERNAME6 = 29, 30
ATTACH_SOCK_OPS, ATTACH_GETSOCKOPT, ATTACH_SK_LOOKUP = 3, 21, 36

# program name -> (program type, attach type)
PROGRAMS = {
    "shoal_connect4": (PROG_TYPE["sock_addr"], ATTACH_CONNECT4),
    "shoal_connect6": (PROG_TYPE["sock_addr"], ATTACH_CONNECT6),
    "shoal_connect4_dns": (PROG_TYPE["sock_addr"], ATTACH_CONNECT4),
    "shoal_connect6_dns": (PROG_TYPE["sock_addr"], ATTACH_CONNECT6),
    "shoal_sendmsg6": (PROG_TYPE["sock_addr"], ATTACH_SENDMSG6),
    "shoal_getpeer4": (PROG_TYPE["sock_addr"], ATTACH_GETPEERNAME4),
    "shoal_getpeer6": (PROG_TYPE["sock_addr"], ATTACH_GETPEERNAME6),
    "shoal_sockops": (PROG_TYPE["sock_ops"], ATTACH_SOCK_OPS),
    "shoal_ztsockops": (PROG_TYPE["sock_ops"], ATTACH_SOCK_OPS),
    "shoal_getsockopt": (PROG_TYPE["sockopt"], ATTACH_GETSOCKOPT),
    "shoal_sk_lookup": (PROG_TYPE["sk_lookup"], ATTACH_SK_LOOKUP),
}
POD_CGROUP_PROGRAMS = ("shoal_connect4", "shoal_connect6", "shoal_sendmsg6", "shoal_getpeer4", "shoal_getpeer6",
                       "shoal_sockops")
# A pod whose DNS is captured: its TCP to port 53 goes to the DNS proxy, not to 15001.
POD_CGROUP_PROGRAMS_DNS = ("shoal_connect4_dns", "shoal_connect6_dns", *POD_CGROUP_PROGRAMS[2:])
# The uncaptured record, which lets a flow past sk_lookup, is made only here: never by a pod.
ZTUNNEL_CGROUP_PROGRAMS = ("shoal_ztsockops", "shoal_getsockopt")


def pod_cgroup_programs(dns_capture: bool) -> tuple[str, ...]:
    return POD_CGROUP_PROGRAMS_DNS if dns_capture else POD_CGROUP_PROGRAMS


def source_text(sockhash_fd: int, source: Path | None = None) -> str:
    probe = struct.unpack("!I", socket.inet_aton(PROBE_SOURCE))[0]
    defines = {"SOCKHASH_FD": sockhash_fd, "OUTBOUND_PORT": OUTBOUND_PORT, "INBOUND_PORT": INBOUND_PLAINTEXT_PORT,
               "HBONE_PORT": HBONE_PORT, "DNS_PROXY_PORT": DNS_PROXY_PORT, "MARK": MARK, "PROBE_IP": f"{probe}u"}
    head = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    return head + (source or SOURCE).read_text()


