"""The Prometheus configuration and golden-signal rules, checked by Prometheus's own promtool."""

import json
import shutil
import subprocess

import pytest

from shoal.observe.prometheus import config_yaml, golden_signal_rules, rules_yaml

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed: "
                                                              "run scripts/setup.sh")


@needs_promtool
def test_promtool_accepts_the_config_and_its_rules(tmp_path):
    rules, targets, config = tmp_path / "rules.yml", tmp_path / "targets.json", tmp_path / "prometheus.yml"
    rules.write_text(rules_yaml())
    targets.write_text("[]\n")
    config.write_text(config_yaml(str(targets), str(rules)))
    checked = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(golden_signal_rules())} rules found" in checked.stdout + checked.stderr


@needs_promtool
def test_promtool_refuses_a_broken_rule(tmp_path):
    # The check above can fail: a rule with bad PromQL is refused.
    broken = json.loads(rules_yaml())
    broken["groups"][0]["rules"][0]["expr"] = "sum by (x (rate(istio_requests_total[1m]))"
    rules = tmp_path / "rules.yml"
    rules.write_text(json.dumps(broken))
    assert subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True).returncode != 0


def test_every_golden_signal_is_recorded_per_workload():
    records = {r.record for r in golden_signal_rules()}
    assert records == {
        "workload:istio_requests:rate1m", "workload:istio_requests_errors:ratio_rate1m",
        "workload:istio_request_duration_milliseconds:p50_1m", "workload:istio_request_duration_milliseconds:p90_1m",
        "workload:istio_request_duration_milliseconds:p99_1m", "workload:istio_tcp_sent_bytes:rate1m",
        "workload:istio_tcp_received_bytes:rate1m", "workload:istio_tcp_connections_opened:rate1m"}
    assert all("destination_workload, destination_workload_namespace" in r.expr for r in golden_signal_rules())
