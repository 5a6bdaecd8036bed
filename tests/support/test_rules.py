"""tests/support/rules.py sees a rule of shoal's wherever it is: nft or legacy, IPv4 or IPv6 (root, a netns)."""

from __future__ import annotations

import os
import shutil

import pytest

from shoal import netns

from node_agent import netfilter
from support.root import needs_root
from support.rules import every_backend, shoal_rules

pytestmark = needs_root()

NAME = f"rules{os.getpid()}"


@pytest.fixture
def scratch():
    netns.create(NAME)
    try:
        yield str(netns.path(NAME))
    finally:
        netns.remove(NAME)


@pytest.mark.parametrize("tool", ["iptables-nft", "ip6tables-nft", "ip6tables-legacy", "iptables-legacy"])
def test_a_shoal_chain_in_any_backend_or_family_is_seen(scratch, tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not on PATH")
    assert shoal_rules(scratch) == []
    netns.run(NAME, [tool, "-t", "mangle", "-N", "SHOAL_LEFT"])
    netns.run(NAME, [tool, "-t", "mangle", "-A", "PREROUTING", "-j", "SHOAL_LEFT"])
    found = shoal_rules(scratch)
    assert any(line.startswith(f"{tool}-save: ") and "-j SHOAL_LEFT" in line for line in found), found
    assert "SHOAL_LEFT" in every_backend(scratch)
    if tool != "iptables-legacy":  # what the old checks read, and why they could not fail
        assert "SHOAL" not in netfilter.save(scratch)
