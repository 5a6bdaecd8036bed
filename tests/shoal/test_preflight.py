"""Pre-flight decisions from planted machine facts: what fails, what is only said, and what to do."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shoal.preflight import HostFacts, kernel_version, preflight, probe

GOOD = HostFacts(kernel="6.1.0-18-amd64", root=True, bcc=True, headers=True, cgroup_v2_root="/sys/fs/cgroup",
                 cgroup_layout="unified", iptables_missing=(), iptables_default="nf_tables")


def failed(facts: HostFacts, redirect: str) -> list[str]:
    return [c.code for c in preflight(facts, redirect) if c.failed]


@pytest.mark.parametrize("redirect", ["iptables", "ebpf", "auto"])
def test_a_machine_with_everything_passes_in_every_mode(redirect):
    assert failed(GOOD, redirect) == []


@pytest.mark.parametrize("change, redirect, code, words", [
    (dict(root=False), "iptables", "SH0001", "sudo"),
    (dict(cgroup_v2_root="", cgroup_layout="legacy"), "iptables", "SH0002", "cgroup2"),
    (dict(iptables_missing=("iptables-legacy",)), "iptables", "SH0003", "make setup"),
    (dict(kernel="5.4.0"), "ebpf", "SH0004", "--redirect iptables"),
    (dict(bcc=False), "ebpf", "SH0004", "make setup"),
    (dict(headers=False), "ebpf", "SH0004", "make setup"),
])
def test_each_missing_piece_fails_its_check_and_says_what_to_do(change, redirect, code, words):
    results = preflight(replace(GOOD, **change), redirect)
    (bad,) = [c for c in results if c.failed]
    assert bad.code == code and words in bad.action and words in bad.line()


def test_ebpf_missing_is_only_said_when_the_cluster_does_not_use_it():
    facts = replace(GOOD, bcc=False)
    assert failed(facts, "iptables") == [] and failed(facts, "auto") == []
    (auto,) = [c for c in preflight(facts, "auto") if c.code == "SH0005"]
    assert auto.message == "would choose iptables"
    (ebpf,) = [c for c in preflight(facts, "iptables") if c.code == "SH0004"]
    assert not ebpf.ok and "bcc" in ebpf.message and ebpf.line().startswith("n/a")


def test_auto_fails_when_neither_mode_can_run():
    facts = replace(GOOD, bcc=False, iptables_missing=("iptables-legacy",))
    assert set(failed(facts, "auto")) == {"SH0003", "SH0005"}


def test_kernel_versions_compare_as_numbers():
    assert kernel_version("6.18.44-fc") == (6, 18) and kernel_version("5.10.0-28-amd64") > (5, 9)
    assert kernel_version("garbage") == (0, 0)


def test_the_probe_reads_this_machine():
    facts = probe()
    assert kernel_version(facts.kernel) > (0, 0)
    assert facts.cgroup_layout in ("unified", "hybrid", "legacy")
