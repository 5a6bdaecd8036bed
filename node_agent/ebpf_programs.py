"""What the node agent's eBPF object holds: its programs with their types and attach points,
and its C source with the mesh's constants defined in front.

Both the agent (`node_agent.ebpf`, which opens the pins) and the short-lived child that
compiles them (`node_agent.ebpf_build`) read it; it imports neither, so neither imports the other back."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

from shoal.contracts import (
    DNS_PROXY_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK, OUTBOUND_PORT, PROBE_SOURCE, PROBE_SOURCE6,
)

SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "redirect.c"

PROG_TYPE = {"sock_addr": 18, "sock_ops": 13, "sockopt": 25, "sk_lookup": 30}
ATTACH_CONNECT4, ATTACH_CONNECT6, ATTACH_SENDMSG6 = 10, 11, 15
ATTACH_GETPEERNAME4, ATTACH_GETPEERNAME6 = 29, 30
ATTACH_SOCK_OPS, ATTACH_GETSOCKOPT, ATTACH_SK_LOOKUP = 3, 21, 36

# program name -> (program type, attach type)
PROGRAMS = {
    "shoal_connect4": (PROG_TYPE["sock_addr"], ATTACH_CONNECT4),
    "shoal_connect4_dns": (PROG_TYPE["sock_addr"], ATTACH_CONNECT4),
    "shoal_connect6": (PROG_TYPE["sock_addr"], ATTACH_CONNECT6),
    "shoal_connect6_dns": (PROG_TYPE["sock_addr"], ATTACH_CONNECT6),
    "shoal_connect6_carry": (PROG_TYPE["sock_addr"], ATTACH_CONNECT6),
    "shoal_connect6_carry_dns": (PROG_TYPE["sock_addr"], ATTACH_CONNECT6),
    "shoal_sendmsg6": (PROG_TYPE["sock_addr"], ATTACH_SENDMSG6),
    "shoal_getpeer4": (PROG_TYPE["sock_addr"], ATTACH_GETPEERNAME4),
    "shoal_getpeer6": (PROG_TYPE["sock_addr"], ATTACH_GETPEERNAME6),
    "shoal_sockops": (PROG_TYPE["sock_ops"], ATTACH_SOCK_OPS),
    "shoal_ztsockops": (PROG_TYPE["sock_ops"], ATTACH_SOCK_OPS),
    "shoal_getsockopt": (PROG_TYPE["sockopt"], ATTACH_GETSOCKOPT),
    "shoal_sk_lookup": (PROG_TYPE["sk_lookup"], ATTACH_SK_LOOKUP),
}
# The uncaptured record, which lets a flow past sk_lookup, is made only here: never by a pod.
ZTUNNEL_CGROUP_PROGRAMS = ("shoal_ztsockops", "shoal_getsockopt")


def pod_cgroup_programs(dns_capture: bool, ipv6: bool) -> tuple[str, ...]:
    """The programs on an enrolled pod's cgroup.

    A pod whose DNS is captured has its TCP to port 53 go to the DNS proxy, not to 15001 (the _dns
    variants). A pod with an IPv6 address has its IPv6 TCP captured (shoal_connect6_carry); a pod with
    none has IPv6 refused both for TCP (shoal_connect6) and UDP (shoal_sendmsg6), as sk_lookup refuses
    it inbound: an address the mesh was not told of never carries traffic around it."""
    dns = "_dns" if dns_capture else ""
    connect6 = (f"shoal_connect6_carry{dns}",) if ipv6 else (f"shoal_connect6{dns}", "shoal_sendmsg6")
    return (f"shoal_connect4{dns}", *connect6, "shoal_getpeer4", "shoal_getpeer6", "shoal_sockops")


# Every attach type any pod's set uses: on each, a pod's shoal programs are exactly its set's (none
# where its set has none, e.g. sendmsg6 once the pod has IPv6).
POD_ATTACH_TYPES = frozenset(PROGRAMS[name][1] for dns in (False, True) for ipv6 in (False, True)
                             for name in pod_cgroup_programs(dns, ipv6))


def source_text(sockhash_fd: int, source: Path | None = None) -> str:
    probe = int(ipaddress.IPv4Address(PROBE_SOURCE))
    # The IPv6 probe address as the program compares it: four 32-bit words as they sit in memory
    # (network order), read back in this machine's order.
    probe6 = struct.unpack("=4I", ipaddress.IPv6Address(PROBE_SOURCE6).packed)
    defines = {"SOCKHASH_FD": sockhash_fd, "OUTBOUND_PORT": OUTBOUND_PORT, "INBOUND_PORT": INBOUND_PLAINTEXT_PORT,
               "HBONE_PORT": HBONE_PORT, "DNS_PROXY_PORT": DNS_PROXY_PORT, "MARK": MARK, "PROBE_IP": f"{probe}u",
               **{f"PROBE_IP6_{i}": f"{word}u" for i, word in enumerate(probe6)}}
    head = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    return head + (source or SOURCE).read_text()


