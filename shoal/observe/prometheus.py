"""What a Prometheus for the mesh is told: its scrape configuration and the golden-signal recording rules.

Pure text out (YAML, written as JSON, which YAML reads as it is); the local
cluster's addon (`shoal.local.addons`) writes it next to the file_sd
targets that `shoal.observe.targets` keeps up to date.

The rules follow Istio's metric names and labels, so they hold on Istio's
data too. Requests are counted where the mesh sees HTTP: the waypoint
(`reporter="waypoint"`, as Istio's ambient waypoints report) or a sidecar
at the destination (`reporter="destination"`); TCP where the receiving
ztunnel reports it (`reporter="destination"`), so each connection counts once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

REQUESTS = 'istio_requests_total{reporter=~"waypoint|destination"}'
DURATION = 'istio_request_duration_milliseconds_bucket{reporter=~"waypoint|destination"}'
TCP = '{reporter="destination"}'
BY_WORKLOAD = "destination_workload, destination_workload_namespace"
WINDOW = "1m"
PORT = 9090            # where a Prometheus answers (its default)
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


@dataclass(frozen=True)
class Rule:
    record: str
    expr: str


def golden_signal_rules() -> tuple[Rule, ...]:
    """Per receiving workload: request rate, error rate (5xx share), p50/p90/p99 latency, TCP bytes both
    ways and connections opened, each over the last minute."""
    rules = [
        Rule(f"workload:istio_requests:rate{WINDOW}", f"sum by ({BY_WORKLOAD}) (rate({REQUESTS}[{WINDOW}]))"),
        Rule(f"workload:istio_requests_errors:ratio_rate{WINDOW}",
             f'sum by ({BY_WORKLOAD}) (rate(istio_requests_total{{reporter=~"waypoint|destination",'
             f'response_code=~"5.."}}[{WINDOW}])) / sum by ({BY_WORKLOAD}) (rate({REQUESTS}[{WINDOW}]))'),
    ]
    rules += [Rule(f"workload:istio_request_duration_milliseconds:{name}_{WINDOW}",
                   f"histogram_quantile({q}, sum by (le, {BY_WORKLOAD}) (rate({DURATION}[{WINDOW}])))")
              for name, q in QUANTILES]
    rules += [Rule(f"workload:{metric}:rate{WINDOW}", f"sum by ({BY_WORKLOAD}) (rate({metric}_total{TCP}[{WINDOW}]))")
              for metric in ("istio_tcp_sent_bytes", "istio_tcp_received_bytes", "istio_tcp_connections_opened")]
    return tuple(rules)


def rules_yaml(rules: tuple[Rule, ...] | None = None) -> str:
    rules = golden_signal_rules() if rules is None else rules
    return json.dumps({"groups": [{"name": "shoal-golden-signals", "interval": "15s",
                                   "rules": [{"record": r.record, "expr": r.expr} for r in rules]}]}, indent=1) + "\n"


def config_yaml(targets_file: str, rules_file: str, scrape_interval: str = "5s") -> str:
    """One scrape config that reads the file_sd targets. Each target carries its own `job` label (ztunnel,
    waypoint, node-agent, control-plane), which Prometheus keeps over the config's job name, as a
    Kubernetes SD job relabels it."""
    return json.dumps({
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [rules_file],
        "scrape_configs": [{
            "job_name": "shoal-mesh",
            "honor_labels": False,
            "file_sd_configs": [{"files": [targets_file], "refresh_interval": "5s"}],
        }],
    }, indent=1) + "\n"
