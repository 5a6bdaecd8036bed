"""`shoal local up --addons prometheus` (issue 14, item 1): Debian's Prometheus in its own pod on node 1 finds
every ztunnel, node agent, waypoint and the control plane through the store, scrapes them while traffic
flows, and records the golden signals per workload. Asked over its HTTP API, as a person or Grafana would."""

from __future__ import annotations

from support.polling import eventually

from shoal.local.addons import PROMETHEUS_POD


def test_prometheus_runs_in_its_own_pod_on_node1(observed):
    pod = observed.pods("shoal-system")[PROMETHEUS_POD]
    assert pod["spec"]["nodeName"] == "node1"
    assert [c["name"] for c in pod["status"]["containerStatuses"]] == ["targets", "prometheus"]
    assert observed.prometheus("/api/v1/status/buildinfo")["data"]["version"].startswith("2.")


def test_every_mesh_process_is_a_target_and_up(observed):
    def targets():
        active = observed.prometheus("/api/v1/targets?state=active")["data"]["activeTargets"]
        return {(t["labels"]["job"], t["labels"]["pod"]): t["health"] for t in active}

    waypoint = observed.waypoint_pod()["metadata"]["name"]
    wanted = {("ztunnel", "ztunnel-node1"), ("ztunnel", "ztunnel-node2"), ("node-agent", "node-agent-node1"),
              ("node-agent", "node-agent-node2"), ("control-plane", "control-plane-node1"), ("waypoint", waypoint)}
    seen = eventually(lambda: (t := targets()) and all(t.get(k) == "up" for k in wanted) and t, 60,
                      lambda: f"every mesh process to be scraped: {targets()}", interval=1)
    # Nothing of the apps: they carry no prometheus.io annotations (other mesh parts, an ingress gateway
    # say, may be there too: they are shoal-system pods).
    assert not {pod for job, pod in seen if job == "pods"}, seen
    assert {pod for job, pod in seen if pod.startswith(("reviews", "load", "echo"))} == set(), seen


def test_the_mesh_metrics_are_stored_with_istios_labels(observed):
    requests = observed.query('sum by (source_workload, destination_workload, destination_version) '
                              '(istio_requests_total{reporter="waypoint", destination_service_namespace="shop"})')
    pairs = {(r["metric"]["source_workload"], r["metric"]["destination_workload"],
              r["metric"]["destination_version"]) for r in requests}
    assert ("load", "reviews-v1", "v1") in pairs, pairs
    tcp = observed.query('istio_tcp_received_bytes_total{reporter="destination", destination_workload="echo"}')
    assert tcp and all(float(r["value"][1]) > 0 for r in tcp), tcp
    assert observed.query("shoal_xds_connected_proxies"), "the control plane's own metrics"
    # No _created series from any part of the mesh.
    assert not observed.query('{__name__=~".+_created", job=~"ztunnel|waypoint|control-plane|node-agent"}')


def test_the_golden_signals_are_recorded_per_workload(observed):
    def recorded(name, **labels):
        match = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return [r for r in observed.query(f"{name}{{{match}}}") if r["value"][1] not in ("NaN",)]

    for name in ("workload:istio_requests:rate1m", "workload:istio_request_duration_milliseconds:p50_1m",
                 "workload:istio_request_duration_milliseconds:p99_1m"):
        rows = eventually(lambda: recorded(name, destination_workload="reviews-v1"), 120, name, interval=2)
        assert float(rows[0]["value"][1]) > 0, (name, rows)
    errors = eventually(lambda: recorded("workload:istio_requests_errors:ratio_rate1m",
                                         destination_workload="reviews-v2"), 120, "the error ratio", interval=2)
    assert 0 < float(errors[0]["value"][1]) < 1, errors   # every other request of reviews-v2 is a 503
    rows = eventually(lambda: recorded("workload:istio_tcp_received_bytes:rate1m", destination_workload="echo"), 120,
                      "the TCP byte rate", interval=2)
    assert float(rows[0]["value"][1]) > 0, rows
