"""Return path for source-IP preservation on inbound, inside one pod's netns.

The ztunnel connects to the app with IP_TRANSPARENT, bound to the client's
IP, so the app sees the real peer. The app's replies to that foreign address
must come back to the ztunnel's socket instead of leaving the pod:

- mangle OUTPUT: a packet of ours (mark 0x539) whose source is not a local
  address opens a transparent connection: CONNMARK it 0x111;
- mangle OUTPUT: a packet in the reply direction of such a connection (the
  app's answer) gets mark 0x111, which makes the kernel route it again;
- `ip rule fwmark 0x111 lookup 133`, and table 133 has `local 0.0.0.0/0 dev lo`,
  so the reply is delivered locally, to the transparent socket.

All of it lives in a chain and a table of its own (chain SHOAL_ZTUNNEL,
table 133, rule priority 32000) and `remove()` takes it away again.
"""

from __future__ import annotations

import subprocess

from ztunnel.errors import ZtunnelError

CHAIN = "SHOAL_ZTUNNEL"
CONNMARK = 0x111
TABLE = 133
PRIORITY = 32000
OUR_MARK = 0x539


class TransparentError(ZtunnelError):
    pass


def _in_netns(netns_fd: int, argv: list[str], check: bool) -> subprocess.CompletedProcess:
    # A short-lived nsenter: pyroute2 cannot run under the ztunnel's uvloop (no AF_NETLINK endpoints).
    result = subprocess.run(["nsenter", f"--net=/proc/self/fd/{netns_fd}", *argv], pass_fds=(netns_fd,),
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise TransparentError(f"`{' '.join(argv)}` failed in the pod's netns: {result.stderr.strip()}; "
                               "the ztunnel needs CAP_NET_ADMIN, iptables-legacy and iproute2")
    return result


def _iptables(netns_fd: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _in_netns(netns_fd, ["iptables-legacy", "-w", "-t", "mangle", *args], check)


def _ip(netns_fd: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _in_netns(netns_fd, ["ip", *args], check)


def install(netns_fd: int) -> None:
    """Idempotent: flushes and refills the chain; adds the rule and route if missing."""
    if _iptables(netns_fd, "-n", "-L", CHAIN, check=False).returncode != 0:
        _iptables(netns_fd, "-N", CHAIN)
    _iptables(netns_fd, "-F", CHAIN)
    _iptables(netns_fd, "-A", CHAIN, "-m", "mark", "--mark", hex(OUR_MARK), "-m", "addrtype", "!",
              "--src-type", "LOCAL", "-j", "CONNMARK", "--set-mark", hex(CONNMARK))
    # The reply direction, not "packets without our mark": a SYN-ACK can carry the mark of the SYN it answers.
    _iptables(netns_fd, "-A", CHAIN, "-m", "connmark", "--mark", hex(CONNMARK), "-m", "conntrack", "--ctdir",
              "REPLY", "-j", "MARK", "--set-mark", hex(CONNMARK))
    if _iptables(netns_fd, "-C", "OUTPUT", "-j", CHAIN, check=False).returncode != 0:
        _iptables(netns_fd, "-I", "OUTPUT", "1", "-j", CHAIN)
    if f"{PRIORITY}:" not in _ip(netns_fd, "-4", "rule", "show").stdout:
        _ip(netns_fd, "-4", "rule", "add", "fwmark", hex(CONNMARK), "lookup", str(TABLE), "priority", str(PRIORITY))
    _ip(netns_fd, "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(TABLE))


def remove(netns_fd: int) -> None:
    _iptables(netns_fd, "-D", "OUTPUT", "-j", CHAIN, check=False)
    _iptables(netns_fd, "-F", CHAIN, check=False)
    _iptables(netns_fd, "-X", CHAIN, check=False)

    while f"{PRIORITY}:" in _ip(netns_fd, "-4", "rule", "show", check=False).stdout:
        if _ip(netns_fd, "-4", "rule", "del", "priority", str(PRIORITY), check=False).returncode != 0:
            break
    _ip(netns_fd, "-4", "route", "flush", "table", str(TABLE), check=False)
