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

The same for IPv6, in ip6tables' mangle table and `ip -6` (table 133 has
`local ::/0 dev lo`). IPv4 must be installed; IPv6 is installed where the
netns has it, and `install()` says whether it is, so the ztunnel keeps the
client's IPv6 source only where replies can come back.

The rules are written in the node's iptables backend, with the writer the
node agent writes the pod's capture with (shoal.iptables_backend.Tables:
legacy or nft); `remove()` takes the chain out of both backends.

All of it lives in a chain, a route and a policy rule of its own (chain
SHOAL_ZTUNNEL, the local route in table 133, the fwmark rule at priority
32000) and `remove()` takes exactly those away again, nothing else of that
table or priority. The
ztunnel installs it when a pod is handed over and removes it when the pod
leaves the mesh; the node agent removes it too when it un-enrolls a pod, so
a pod that leaves while no ztunnel runs keeps nothing of it. That is why it
lives in `shoal/`: two components share it.
"""

from __future__ import annotations

import shutil
import subprocess

from shoal import iptables_backend
from shoal.contracts import MARK as OUR_MARK
from shoal.errors import ShoalError

CHAIN = "SHOAL_ZTUNNEL"
CONNMARK = 0x111
TABLE = 133
PRIORITY = 32000


class TransparentError(ShoalError):
    """The return path for source-IP preservation could not be installed or removed."""


def _in_netns(netns_fd: int, argv: list[str], check: bool, stdin: str | None = None) -> subprocess.CompletedProcess:
    # Started from a thread inside the pod's netns (no nsenter: enrollment waits for these);
    # pyroute2 cannot run under the ztunnel's uvloop (no AF_NETLINK endpoints).
    result = iptables_backend.run(netns_fd, argv, stdin)
    if check and result.returncode != 0:
        raise TransparentError(f"`{' '.join(argv)}` failed in the pod's netns: {result.stderr.strip()}; "
                               "this needs CAP_NET_ADMIN, the node's iptables (legacy or nft) and iproute2")
    return result


_EVERYTHING = {4: "0.0.0.0/0", 6: "::/0"}


def _ip(netns_fd: int, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return _in_netns(netns_fd, ["ip", *args], check, stdin)


CHAINS = {"mangle": ((CHAIN, "OUTPUT"),)}
_SET = f"--set-xmark {hex(CONNMARK)}/0xffffffff"  # --set-mark, as iptables-save prints it back
RULES = {CHAIN: [  # as iptables-save prints them after `-A SHOAL_ZTUNNEL `, so that a writer can compare them
    f"-m mark --mark {hex(OUR_MARK)} -m addrtype ! --src-type LOCAL -j CONNMARK {_SET}",
    # The reply direction, not "packets without our mark": a SYN-ACK can carry the mark of the SYN it answers.
    f"-m connmark --mark {hex(CONNMARK)} -m conntrack --ctdir REPLY -j MARK {_SET}",
]}


class _Tables(iptables_backend.Tables):
    error = TransparentError
    hint = "this needs CAP_NET_ADMIN, the node's iptables (legacy or nft) and iproute2"


def install(netns_fd: int, backend: str | None = None, *, ipv6: bool = True) -> bool:
    """Installs the return path for IPv4 (TransparentError if it cannot) and, with `ipv6` (the pod
    has an IPv6 address: the ztunnel passes False for an IPv4-only pod, sparing enrollment four
    processes), for IPv6 where the netns has it; returns whether IPv6 is covered. Idempotent, in
    two short processes per family for a pod seen first (enrollment waits for this; more where the
    rules are there already): the chain made with its one jump, then the route replaced and the
    policy rule added only if missing. `backend`: legacy or nft (default: the node's, detected once per process)."""
    backend = backend or iptables_backend.this_node()
    _install(netns_fd, 4, backend)
    if not ipv6:
        return False
    try:
        _install(netns_fd, 6, backend)
    except TransparentError:
        _remove(netns_fd, 6)                  # nothing half-made stays behind
        return False
    return True


def _install(netns_fd: int, version: int, backend: str) -> None:
    # A pod handed over for the first time has no chain: `-N` makes it, and with it the one jump, in one
    # process. Where the chain exists `-N` fails and changes nothing; then read, and refill it.
    _Tables(backend).ensure(netns_fd, CHAINS, RULES, ipv6=version == 6, fresh=True)
    # One `ip -batch`: the route replaced, then the policy rule added, which fails (File exists) where it
    # is there already; only then is it looked for.
    commands = [f"route replace local {_EVERYTHING[version]} dev lo table {TABLE}", f"rule add {_RULE}"]
    if _ip(netns_fd, f"-{version}", "-batch", "-", check=False, stdin="\n".join(commands) + "\n").returncode != 0:
        _ip(netns_fd, f"-{version}", "route", "replace", "local", _EVERYTHING[version], "dev", "lo", "table",
            str(TABLE))
        if not _has_rule(netns_fd, version):
            _ip(netns_fd, f"-{version}", "-batch", "-", stdin=commands[1] + "\n")


# The policy rule, as `ip rule add` and `del` take it and as `ip rule show` prints it: only this one is the
# mesh's (another rule at the same priority, or another route in the table, is someone else's and stays).
_RULE = f"fwmark {hex(CONNMARK)} lookup {TABLE} priority {PRIORITY}"
_RULE_SHOWN = f"{PRIORITY}:\tfrom all fwmark {hex(CONNMARK)} lookup {TABLE}"


def _has_rule(netns_fd: int, version: int, check: bool = True) -> bool:
    shown = _ip(netns_fd, f"-{version}", "rule", "show", "priority", str(PRIORITY), check=check).stdout
    return _RULE_SHOWN in shown.splitlines()


def remove(netns_fd: int) -> None:
    """Removes what `install` made, both families, from both backends; what is not there is skipped.
    A chain that is there but could not be dropped is raised (TransparentError) once everything else
    was removed, so that the caller's warning names what is left."""
    failed = [error for version in (4, 6) for error in _remove(netns_fd, version)]
    if failed:
        raise TransparentError("; ".join(failed))


def _remove(netns_fd: int, version: int) -> list[str]:
    """Removes one family's; returns what failed."""
    failed = []
    for backend in iptables_backend.BACKENDS:
        if shutil.which(iptables_backend.tool("save", version == 6, backend)) is None:
            continue  # no such backend on this node: nothing of it to remove
        tables = _Tables(backend)
        try:
            there = tables.present(netns_fd, CHAINS, ipv6=version == 6)
        except TransparentError:
            continue  # a backend that cannot read this netns (none of its tables in the kernel) holds nothing
        if there:
            try:
                tables.drop(netns_fd, CHAINS, ipv6=version == 6)
            except TransparentError as e:
                failed.append(str(e))

    while _has_rule(netns_fd, version, check=False):
        if _ip(netns_fd, f"-{version}", "rule", "del", *_RULE.split(), check=False).returncode != 0:
            break
    _ip(netns_fd, f"-{version}", "route", "del", "local", _EVERYTHING[version], "dev", "lo", "table", str(TABLE),
        check=False)
    return failed
