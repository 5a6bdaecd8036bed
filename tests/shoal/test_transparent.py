"""shoal/transparent.py writes the ztunnel's return path with the shared writer, shoal.iptables_backend.Tables
(the node agent's too), in either backend: installed twice it is exactly its rules with one jump, as that
writer reads them back, and removal leaves no rule in any backend (root, a netns)."""

from __future__ import annotations

import os

import pytest

from shoal import iptables_backend, netns, transparent

from support.root import needs_root
from support.rules import shoal_rules

pytestmark = needs_root()

NAME = f"transparent{os.getpid()}"


@pytest.fixture(scope="module")
def pod_fd():
    netns.create(NAME)
    netns.run(NAME, ["ip", "link", "set", "lo", "up"])
    fd = os.open(netns.path(NAME), os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)
        netns.remove(NAME)


@pytest.mark.parametrize("backend", iptables_backend.BACKENDS)
def test_the_return_path_is_written_and_read_by_the_shared_writer_in_either_backend(pod_fd, backend):
    tables = iptables_backend.Tables(backend)
    assert transparent.install(pod_fd, backend) and transparent.install(pod_fd, backend)  # idempotent
    for ipv6 in (False, True):
        assert tables.holds(pod_fd, transparent.CHAINS, transparent.RULES, ipv6=ipv6)
    transparent.remove(pod_fd)
    assert shoal_rules(NAME) == []


def test_a_chain_that_cannot_be_dropped_is_said_after_everything_else_is_removed(pod_fd, monkeypatch):
    """Removal was silent when a -restore failed: the rules stayed and no caller could warn of them."""
    assert transparent.install(pod_fd, "legacy")
    real_drop = transparent._Tables.drop

    def drop(self, netns_fd, chains, *, ipv6):
        if not ipv6:
            raise transparent.TransparentError("iptables-legacy-restore in the pod's netns failed: refused")
        real_drop(self, netns_fd, chains, ipv6=ipv6)
    monkeypatch.setattr(transparent._Tables, "drop", drop)
    with pytest.raises(transparent.TransparentError, match="refused"):
        transparent.remove(pod_fd)
    left = shoal_rules(NAME, transparent.CHAIN)
    assert left and all(line.startswith("iptables-legacy-save: ") for line in left), left  # IPv4's only
    assert f"{transparent.PRIORITY}:" not in netns.run(NAME, ["ip", "rule", "show"]).stdout  # the rest went
    monkeypatch.setattr(transparent._Tables, "drop", real_drop)
    transparent.remove(pod_fd)
    assert shoal_rules(NAME) == []


def test_removal_takes_only_the_mesh_s_own_policy_rule_and_route(pod_fd):
    """A rule of someone else's at the same priority, and a route of someone else's in table 133, stay: removal
    deleted every rule at priority 32000 and flushed the whole table, and install took any rule at that
    priority for its own."""
    table, priority = str(transparent.TABLE), str(transparent.PRIORITY)
    theirs = {4: ("10.77.0.0/16", "198.51.100.0/24"), 6: ("fd00:77::/64", "2001:db8:77::/64")}
    for version, (source, route) in theirs.items():
        netns.run(NAME, ["ip", f"-{version}", "rule", "add", "from", source, "lookup", "main", "priority", priority])
        netns.run(NAME, ["ip", f"-{version}", "route", "add", "unreachable", route, "table", table])
    try:
        assert transparent.install(pod_fd, "legacy")
        for version in theirs:
            rules = netns.run(NAME, ["ip", f"-{version}", "rule", "show"]).stdout
            assert f"fwmark {hex(transparent.CONNMARK)} lookup {table}" in rules, rules  # ours went in beside
        transparent.remove(pod_fd)
        for version, (source, route) in theirs.items():
            rules = netns.run(NAME, ["ip", f"-{version}", "rule", "show"]).stdout
            assert f"from {source} lookup main" in rules and "fwmark" not in rules, rules
            routes = netns.run(NAME, ["ip", f"-{version}", "route", "show", "table", table]).stdout
            assert route in routes and "local" not in routes, routes
        assert shoal_rules(NAME) == []
    finally:
        for version, (source, route) in theirs.items():
            netns.run(NAME, ["ip", f"-{version}", "rule", "del", "from", source, "priority", priority], check=False)
            netns.run(NAME, ["ip", f"-{version}", "route", "flush", "table", table], check=False)
