"""The node agent's /metrics text: its series, and no `_created` series beside them (as Istio's proxies)."""

from __future__ import annotations

from node_agent.metrics import Metrics


def test_counters_and_histograms_carry_no_created_series():
    metrics = Metrics("iptables")
    metrics.reconcile_errors.labels(step="install").inc()
    metrics.enroll_seconds.observe(0.2)
    text = metrics.render().decode()
    assert 'shoal_node_agent_reconcile_errors_total{step="install"} 1.0' in text
    assert "shoal_node_agent_enroll_seconds_count 1.0" in text
    assert 'shoal_node_agent_redirect_mode{mode="iptables"} 1.0' in text
    assert "_created" not in text
