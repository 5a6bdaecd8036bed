"""Judging a local cluster's health from planted facts: each kind of trouble fails its own check."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shoal.local.health import HealthFacts, judge

READY = {"status": {"phase": "Running", "podIP": "198.19.1.2", "conditions": [{"type": "Ready", "status": "True"}]}}
PODS = {key: READY for key in ("shoal-system/control-plane-node1", "shoal-system/ztunnel-node1",
                               "shoal-system/node-agent-node1")}
CERT = {"identity": "spiffe://cluster.local/ns/a/sa/b", "state": "valid", "expires_in_seconds": 80000}
HEALTHY = HealthFacts(cluster="c", daemon_pid=42, nodes=1, pods=PODS, expected=tuple(PODS),
                      control_plane={"proxies": [{"scope": "node node1", "in_sync": True, "nacks": 0}]},
                      certificates={"ztunnel-node1": [CERT]})


def failing(facts: HealthFacts) -> list[tuple[str, str]]:
    return [(c.code, c.subject) for c in judge(facts) if c.failed]


def test_a_healthy_cluster_passes_every_check():
    checks = judge(HEALTHY)
    assert failing(HEALTHY) == [] and len(checks) == 7


@pytest.mark.parametrize("change, expected", [
    (dict(daemon_pid=None), ("SH0201", "cluster daemon")),
    (dict(pods={**PODS, "shoal-system/ztunnel-node1": {"status": {"phase": "Pending"}}}),
     ("SH0202", "pod shoal-system/ztunnel-node1")),
    (dict(pods={k: v for k, v in PODS.items() if "agent" not in k}), ("SH0202", "pod shoal-system/node-agent-node1")),
    (dict(control_plane=None, control_plane_error="connection refused"), ("SH0203", "config sync")),
    (dict(control_plane={"proxies": [{"scope": "node node1", "in_sync": False, "nacks": 0}]}),
     ("SH0203", "config sync")),
    (dict(control_plane={"proxies": [{"scope": "node node1", "in_sync": True, "nacks": 2}]}),
     ("SH0204", "config nacks")),
    (dict(certificates={"ztunnel-node1": [{**CERT, "expires_in_seconds": 60}]}),
     ("SH0205", "certificates of ztunnel-node1")),
    (dict(certificates={"ztunnel-node1": [{**CERT, "state": "expired"}]}), ("SH0205", "certificates of ztunnel-node1")),
    (dict(certificates={}, dump_errors={"ztunnel-node1": "timed out"}), ("SH0205", "certificates of ztunnel-node1")),
])
def test_each_trouble_fails_its_own_check(change, expected):
    assert failing(replace(HEALTHY, **change)) == [expected]


def test_a_failed_check_says_what_to_do():
    (bad,) = [c for c in judge(replace(HEALTHY, daemon_pid=None)) if c.failed]
    assert "shoal local up --cluster c" in bad.line()
