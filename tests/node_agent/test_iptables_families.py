"""The iptables mode's per-family decision and the backend writer's reading of -save text (no root, no netns).

- a family the pod has an address in is captured, one it has none in is refused, refusals go in
  first, and the other policy's chains are what goes out;
- the backend decides from -save text which chains hold, and what to drop.
"""

from __future__ import annotations

import pytest

from shoal import iptables_backend
from shoal.contracts import PROBE_SOURCE, PROBE_SOURCE6

from node_agent import backend
from node_agent.iptables import (CAPTURE_CHAINS, PREROUTING_CHAIN, REFUSE_CHAINS, capture_specs, family_rules,
                                 refuse_specs)
from node_agent.model import PodTarget

V4, V6 = "198.19.1.5", "fd73:686f:616c:1::5"


def pod(*ips: str) -> PodTarget:
    return PodTarget("uid", "demo", "web", ips[0], "/run/netns/x", "/sys/fs/cgroup/unified/pod", ips=ips)


@pytest.mark.parametrize("ips, kernel_ipv6, expected", [
    ((V4,), True, [(True, False), (False, True)]),          # IPv6 refused (first), IPv4 captured
    ((V4, V6), True, [(True, True), (False, True)]),         # both captured
    ((V6,), True, [(False, False), (True, True)]),          # IPv4 refused (first), IPv6 captured
    ((V4,), False, [(False, True)]),                          # a kernel without IPv6: IPv4 alone
])
def test_each_family_is_captured_where_the_pod_has_an_address_and_refused_where_it_has_none(ips, kernel_ipv6,
                                                                                            expected):
    families = family_rules(pod(*ips), has_ipv6=kernel_ipv6)
    assert [(f.ipv6, f.captured) for f in families] == expected
    for family in families:
        if family.captured:
            assert (family.chains, family.stale) == (CAPTURE_CHAINS, REFUSE_CHAINS)
            assert family.specs == capture_specs(pod(*ips), family.ipv6)
        else:
            assert (family.chains, family.stale) == (REFUSE_CHAINS, CAPTURE_CHAINS)
            assert family.specs == refuse_specs(family.ipv6)


def test_the_probe_source_of_each_family_passes_its_inbound_capture():
    assert dict(src=f"{PROBE_SOURCE}/32", target="RETURN") in capture_specs(pod(V4), False)[PREROUTING_CHAIN]
    assert dict(src=f"{PROBE_SOURCE6}/128", target="RETURN") in capture_specs(pod(V4, V6), True)[PREROUTING_CHAIN]


SAVED = {"nat": [":SHOAL_OUTPUT - [0:0]", "-A OUTPUT -j SHOAL_DNS", "-A OUTPUT -j SHOAL_OUTPUT",
                 "-A OUTPUT -j SHOAL_OUTPUT", "-A SHOAL_OUTPUT -o lo -j RETURN"],
         "filter": []}


def test_the_writer_reads_what_holds_and_what_to_drop_from_save_text():
    lines = [backend.Tables.rule(dict(out_interface="lo", target="RETURN"))]
    assert not iptables_backend._holds(SAVED["nat"], "SHOAL_OUTPUT", "OUTPUT", lines, False)  # jumped to twice
    once = [line for i, line in enumerate(SAVED["nat"]) if i != 2]
    assert iptables_backend._holds(once, "SHOAL_OUTPUT", "OUTPUT", lines, False)
    assert not iptables_backend._holds(once, "SHOAL_OUTPUT", "OUTPUT", lines, True)            # SHOAL_DNS is first
    assert iptables_backend._drops(SAVED, {"nat": (("SHOAL_OUTPUT", "OUTPUT"),), "filter": (("SHOAL_INPUT", "INPUT"),)}) == {
        "nat": ["-D OUTPUT -j SHOAL_OUTPUT", "-D OUTPUT -j SHOAL_OUTPUT", "-F SHOAL_OUTPUT", "-X SHOAL_OUTPUT"]}
