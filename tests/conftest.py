"""Checks that hold for every test of the suite, and the process-wide state each test leaves as it found it.

Besides the event-loop policy and structlog, the host itself: a test (or a fixture it set up) must leave
the host's forwarding sysctls as the session found them, put no shoal chain in the host's own iptables
tables, and leave no network namespace of this test process behind once its fixtures are gone.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

# A new netns starts from the host's forwarding settings, so a host left forwarding would hide a node
# that forgets to turn it on (and a host must never be made a router by its tests). Read at import, in
# the netns pytest started in: the host's, for this session.
HOST_FORWARDING = {"net.ipv4.ip_forward": Path("/proc/sys/net/ipv4/ip_forward"),
                   "net.ipv6.conf.all.forwarding": Path("/proc/sys/net/ipv6/conf/all/forwarding")}
HOST_NETNS = Path("/proc/thread-self/ns/net")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:        # no IPv6 on this host: nothing to guard
        return None


def _netns_inode() -> int:
    return os.stat(HOST_NETNS).st_ino


FORWARDING_AT_START = {name: _read(path) for name, path in HOST_FORWARDING.items()}
NETNS_AT_START = _netns_inode()
IS_ROOT = os.geteuid() == 0


@pytest.fixture(autouse=True)
def event_loop_policy_unchanged():
    """A test (or the code it drives in process) must not leave uvloop as the process's policy:
    every later event loop would be uvloop's, and pyroute2 cannot open its netlink socket on one."""
    before = type(asyncio.get_event_loop_policy())
    yield
    after = type(asyncio.get_event_loop_policy())
    if after is not before:
        asyncio.set_event_loop_policy(None)
        pytest.fail(f"the test left the event loop policy {after.__module__}.{after.__name__} behind")


@pytest.fixture(autouse=True)
def logging_configuration_restored():
    """A test that runs a program's main() in process configures structlog as that program does
    (`--access-log off` sets the level to warning); the next test starts from the configuration before it."""
    import structlog
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def host_forwarding_unchanged(request):
    """The host's forwarding sysctls after the test are what the session started with; else the test fails,
    naming itself, and they are put back. Compared with the session's start, not the test's: a module
    fixture that changed them in its setup is caught at its module's first test."""
    yield
    if _netns_inode() != NETNS_AT_START:
        pytest.fail(f"{request.node.nodeid} left the test process's main thread in another network namespace: "
                    f"a setns(2) without its way back (use shoal.netns.entered)")
    changed = {name: (FORWARDING_AT_START[name], now) for name, path in HOST_FORWARDING.items()
               if (now := _read(path)) != FORWARDING_AT_START[name]}
    if not changed:
        return
    for name, (was, _) in changed.items():
        if IS_ROOT and was is not None:
            HOST_FORWARDING[name].write_text(was)
    pytest.fail(f"{request.node.nodeid} (or a fixture set up for it) left the host's "
                + ", ".join(f"{name} at {now} (it was {was})" for name, (was, now) in changed.items())
                + ("; put back" if IS_ROOT else "")
                + ": forwarding is for the netns the mesh makes, never the host's (look for a sysctl or "
                  "`ip netns exec` that ran in the host's namespace)")


def _shoal_chains() -> set[str]:
    """Chains named SHOAL... in the host's own tables, legacy and nft, IPv4 and IPv6."""
    chains = set()
    for save in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
        try:
            out = subprocess.run([save], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        table = "?"
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":SHOAL"):
                chains.add(f"{save.split('-')[0]} {table} {line[1:].split()[0]}")
    return chains


# Network namespaces are named after the test process that made them (support.cluster.unique_name, the
# topologies' pid tags): those of other processes on the machine are none of this session's business.
_PID_TAGS = {str(os.getpid()), str(os.getpid() % 100000)}
_OWN_NAME = re.compile(r"(?<!\d)(" + "|".join(sorted(_PID_TAGS)) + r")(?!\d)")


def _own_netns() -> set[str]:
    try:
        return {name for name in os.listdir("/run/netns") if _OWN_NAME.search(name)}
    except OSError:
        return set()


# netns left at the end of a module, with the module: fixtures of a wider scope (a package's or the
# session's) may still own them, so they are judged only once every fixture is gone, at the session's end.
_NETNS_LEFT_BY: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def host_left_clean_by_module(request):
    """No SHOAL chain appears in the host's own tables during a module (nothing of the mesh belongs
    there, whoever is alive); the netns of this process that the module leaves are noted for the end."""
    if not IS_ROOT:
        yield
        return
    chains, netns = _shoal_chains(), _own_netns()
    yield
    for name in _own_netns() - netns:
        _NETNS_LEFT_BY.setdefault(name, request.node.nodeid)
    added = _shoal_chains() - chains
    if added:
        pytest.fail(f"{request.node.nodeid} left chains in the host's own tables: {sorted(added)}; the mesh "
                    f"installs its rules only in the nodes' and pods' namespaces")


def pytest_sessionfinish(session, exitstatus):
    """Every fixture is torn down by now: a netns of this process that is still there was leaked."""
    left = {name: module for name, module in _NETNS_LEFT_BY.items() if Path("/run/netns", name).exists()}
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"network namespaces left behind after every fixture was torn down ({len(left)}):"]
    lines += [f"  {name}: first left by {module}" for name, module in sorted(left.items())]
    lines.append("  (`shoal local down --cluster NAME` removes a cluster's; `ip netns del NAME` the others)")
    if reporter:
        reporter.ensure_newline()
        reporter.write_line("\n".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
