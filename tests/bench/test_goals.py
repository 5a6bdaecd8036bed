"""Issue 13's goal lines read off a run's results: each ratio, its bound, and a verdict that can go either way."""

from __future__ import annotations

import json

import pytest

from bench import goals


def run(ambient_added=(0.15, 0.4), haproxy_added=(0.2, 0.5), cpu=(0.1, 0.12), gbps=(3.3, 10.0),
        memory=(150.0, 1000.0), redirect="ebpf") -> dict:
    return {"settings": {"redirect": redirect}, "results": [
        {"setup": "ambient-l4", "case": "http-latency", "placement": "cross-node",
         "added_p50_ms": ambient_added[0], "added_p99_ms": ambient_added[1], "cpu_per_1000rps": cpu[0]},
        {"setup": "sidecar-haproxy", "case": "http-latency", "placement": "cross-node",
         "added_p50_ms": haproxy_added[0], "added_p99_ms": haproxy_added[1], "cpu_per_1000rps": cpu[1]},
        {"setup": "ambient-l4", "case": "throughput", "streams": 1, "gbps": gbps[0]},
        {"setup": "baseline", "case": "throughput", "streams": 1, "gbps": gbps[1]},
        {"setup": "ambient-l4", "case": "memory", "pods": 50, "rss_mb": memory[0]},
        {"setup": "sidecar-haproxy", "case": "memory", "pods": 50, "rss_mb": memory[1]},
    ]}


def verdicts(data: dict) -> dict[str, tuple[float | None, str]]:
    return {g.name.split(":")[0]: (None if g.ratio is None else round(g.ratio, 3), g.verdict)
            for g in goals.goals(data["results"])}


def test_every_goal_met_gives_each_ratio():
    assert verdicts(run()) == {
        "added latency p50": (0.75, "met"), "added latency p99": (0.8, "met"),
        "CPU per 1000 requests": (0.833, "met"), "throughput, 1 stream": (0.33, "met"),
        "memory on a node with 50 pods": (0.15, "met")}


def test_each_goal_missed_is_not_met():
    got = verdicts(run(ambient_added=(0.3, 1.0), cpu=(0.2, 0.1), gbps=(2.0, 10.0), memory=(300.0, 1000.0)))
    assert got == {
        "added latency p50": (1.5, "not met"), "added latency p99": (2.0, "not met"),
        "CPU per 1000 requests": (2.0, "not met"), "throughput, 1 stream": (0.2, "not met"),
        "memory on a node with 50 pods": (0.3, "not met")}


def test_a_bound_reached_exactly_is_met():
    got = verdicts(run(ambient_added=(0.2, 0.5), gbps=(3.0, 10.0), memory=(200.0, 1000.0)))
    assert {k: v[1] for k, v in got.items()} == dict.fromkeys(got, "met")


def test_a_figure_the_run_lacks_is_missing_not_met():
    data = run()
    data["results"] = [r for r in data["results"] if r["case"] != "memory"]
    assert verdicts(data)["memory on a node with 50 pods"] == (None, "missing")


def test_an_added_latency_below_the_baselines_noise_is_noise_not_a_ratio():
    got = verdicts(run(ambient_added=(0.2, 2.0), haproxy_added=(0.1, -0.4)))
    assert got["added latency p99"] == (None, "noise")
    assert got["added latency p50"] == (2.0, "not met")


def test_a_divisor_of_zero_that_is_no_latency_is_a_failed_reading_missing_not_noise():
    got = verdicts(run(cpu=(0.1, 0.0), gbps=(3.3, 0.0), memory=(150.0, -1.0)))
    assert got["CPU per 1000 requests"] == (None, "missing")
    assert got["throughput, 1 stream"] == (None, "missing")
    assert got["memory on a node with 50 pods"] == (None, "missing")


def test_the_command_prints_both_modes_as_markdown(tmp_path, capsys):
    paths = []
    for mode in ("iptables", "ebpf"):
        path = tmp_path / f"{mode}.json"
        path.write_text(json.dumps(run(redirect=mode, cpu=(0.2, 0.1) if mode == "ebpf" else (0.1, 0.12))))
        paths.append(str(path))
    assert goals.main([*paths, "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "| iptables | CPU per 1000 requests: ambient-l4 / sidecar-haproxy | <= 1 | 0.83 | met |" in out
    assert "| ebpf | CPU per 1000 requests: ambient-l4 / sidecar-haproxy | <= 1 | 2.00 | not met |" in out
    goal_lines = out[:out.index("")]
    assert len(goal_lines) == 2 + 10


def test_below_the_goals_the_cpu_is_split_by_kind_of_mesh_process(tmp_path, capsys):
    data = run(cpu=(0.13, 0.1))
    data["results"][0].update(cpu_ztunnel_per_1000rps=0.11, cpu_node_agent_per_1000rps=0.02)
    data["results"][1].update(cpu_sidecar_per_1000rps=0.1)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert goals.main([str(path), "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    split = out[out.index("") + 1:]
    assert split[0] == ("| redirect | setup | cpu_per_1000rps | cpu_ztunnel_per_1000rps | cpu_node_agent_per_1000rps "
                        "| cpu_sidecar_per_1000rps |")
    assert "| ebpf | ambient-l4 | 0.130 | 0.110 | 0.020 | - |" in split
    assert "| ebpf | sidecar-haproxy | 0.100 | - | - | 0.100 |" in split


def test_a_file_that_is_not_a_run_says_what_to_give(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"benchmark": "fuzz"}))
    with pytest.raises(SystemExit):
        goals.main([str(path)])
    assert "bench run" in capsys.readouterr().err


def l7_run(ambient=(0.2, 0.8, 0.15, 30.0), haproxy=(0.25, 1.0, 0.2)) -> dict:
    return {"settings": {"redirect": "iptables"}, "results": [
        {"setup": "ambient-l7", "case": "http-latency", "placement": "cross-node", "added_p50_ms": ambient[0],
         "added_p99_ms": ambient[1], "cpu_per_1000rps": ambient[2], "waypoint_rss_mb": ambient[3]},
        {"setup": "sidecar-haproxy-http", "case": "http-latency", "placement": "cross-node",
         "added_p50_ms": haproxy[0], "added_p99_ms": haproxy[1], "cpu_per_1000rps": haproxy[2]},
    ]}


def l7_verdicts(data: dict) -> dict[str, tuple[float | None, str]]:
    return {g.name.split(":")[0]: (None if g.ratio is None else round(g.ratio, 3), g.verdict)
            for g in goals.l7_goals(data["results"])}


def test_issue_18_goals_compare_the_waypoint_path_with_http_sidecars():
    assert l7_verdicts(l7_run()) == {
        "added latency p50": (0.8, "met"), "added latency p99": (0.8, "met"),
        "CPU per 1000 requests": (0.75, "met"), "waypoint resident memory / 40 MiB": (0.75, "met")}
    missed = l7_verdicts(l7_run(ambient=(0.8, 3.7, 0.74, 55.0)))
    assert missed == {
        "added latency p50": (3.2, "not met"), "added latency p99": (3.7, "not met"),
        "CPU per 1000 requests": (3.7, "not met"), "waypoint resident memory / 40 MiB": (1.375, "not met")}


def test_issue_18_goals_without_the_http_sidecars_are_missing(tmp_path, capsys):
    data = l7_run()
    data["results"] = data["results"][:1]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert goals.main([str(path), "--issue", "18", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "| iptables | CPU per 1000 requests: ambient-l7 / sidecar-haproxy-http | <= 1 | - | missing |" in out
    assert "| iptables | waypoint resident memory / 40 MiB | <= 1 | 0.75 | met |" in out
