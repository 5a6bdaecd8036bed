"""What a run's results become: ratios, the README's table, the comparison of two runs, the charts, and the
CPU and memory readings they are made of."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bench import charts, compare, summary, usage
from bench.report import RESULTS_DIR

README = Path(__file__).resolve().parents[2] / "README.md"


def latency(setup, placement="cross-node", p50=0.1, p99=0.5, added=None, cpu=None):
    row = {"setup": setup, "case": "http-latency", "placement": placement, "rps_achieved": 1000.0,
           "p50_ms": p50, "p50_ms_min": p50 * 0.9, "p50_ms_max": p50 * 1.1, "p90_ms": p50 * 2, "p99_ms": p99,
           "p999_ms": p99 * 2, "cpu_per_1000rps": cpu, "rss_mb": 10.0 if cpu else None}
    if added is not None:
        row.update({"added_p50_ms": added[0], "added_p90_ms": added[1], "added_p99_ms": added[2]})
    return row


RESULTS = [
    latency("baseline"),
    latency("ambient-l4", added=(0.2, 0.3, 0.6), cpu=0.2),
    latency("sidecar-haproxy", added=(0.1, 0.2, 0.3), cpu=0.1),
    latency("sidecar-shoal", added=(0.4, 0.6, 1.2), cpu=0.4),
    latency("baseline", "same-node"),
    latency("ambient-l4", "same-node", added=(0.1, 0.1, 0.1), cpu=0.1),
    latency("sidecar-haproxy", "same-node", added=(0.1, 0.2, 0.4), cpu=0.1),
    {"setup": "baseline", "case": "throughput", "placement": "cross-node", "streams": 1, "gbps": 10.0},
    {"setup": "ambient-l4", "case": "throughput", "placement": "cross-node", "streams": 1, "gbps": 2.5},
    {"setup": "ambient-l4", "case": "memory", "placement": "node1", "pods": 1, "rss_mb": 130.0, "rss_per_pod_mb": 130.0},
    {"setup": "ambient-l4", "case": "memory", "placement": "node1", "pods": 100, "rss_mb": 140.0, "rss_per_pod_mb": 1.4},
    {"setup": "sidecar-haproxy", "case": "memory", "placement": "node1", "pods": 1, "rss_mb": 20.0, "rss_per_pod_mb": 20.0},
    {"setup": "sidecar-haproxy", "case": "memory", "placement": "node1", "pods": 100, "rss_mb": 2000.0,
     "rss_per_pod_mb": 20.0},
]


def by_figure():
    return {q.figure: q.ratio for q in summary.ratios(RESULTS)}


def test_ratios_divide_the_first_set_up_by_the_second():
    ratios = by_figure()
    assert ratios["added latency p50, cross-node: ambient-l4 / sidecar-haproxy"] == pytest.approx(2.0)
    assert ratios["added latency p99, cross-node: ambient-l4 / sidecar-shoal"] == pytest.approx(0.5)
    assert ratios["added latency p99, same-node: ambient-l4 / sidecar-haproxy"] == pytest.approx(0.25)
    assert ratios["CPU per 1000 requests, cross-node: ambient-l4 / sidecar-haproxy"] == pytest.approx(2.0)
    assert ratios["memory on a node with 100 pods: ambient-l4 / sidecar-haproxy"] == pytest.approx(0.07)
    assert ratios["throughput, 1 stream: ambient-l4 / baseline"] == pytest.approx(0.25)
    # A set-up that was not measured gives no ratio rather than a wrong one.
    assert not any("ambient-l7" in figure for figure in ratios)
    assert "memory on a node with 100 pods: ambient-l4 / sidecar-shoal" not in ratios


def test_the_markdown_table_has_a_row_per_ratio_with_both_medians():
    text = summary.markdown({"results": RESULTS})
    rows = text.splitlines()[2:]
    assert len(rows) == len(by_figure())
    assert "| added latency p50, cross-node: ambient-l4 / sidecar-haproxy | 2.00 | 0.200 | 0.100 |" in rows
    assert "| memory on a node with 100 pods: ambient-l4 / sidecar-haproxy | 0.07 | 140.0 | 2000.0 |" in rows


def test_a_divisor_inside_the_noise_is_shown_as_noise_not_as_a_ratio():
    # sidecar-haproxy's added p50 at or below the baseline's: a quotient would be negative (or infinite)
    # and read as "ambient costs less"; the figure is kept, with no ratio.
    results = [latency("ambient-l4", added=(0.2, 0.3, 0.6), cpu=0.2),
               latency("sidecar-haproxy", added=(-0.05, 0.0, 0.3), cpu=0.1)]
    quoted = {q.figure: q for q in summary.ratios(results)}
    assert quoted["added latency p50, cross-node: ambient-l4 / sidecar-haproxy"].ratio is None
    assert quoted["added latency p90, cross-node: ambient-l4 / sidecar-haproxy"].ratio is None
    assert quoted["added latency p99, cross-node: ambient-l4 / sidecar-haproxy"].ratio == pytest.approx(2.0)
    rows = summary.markdown({"results": results}).splitlines()
    assert "| added latency p50, cross-node: ambient-l4 / sidecar-haproxy | noise | 0.200 | -0.050 |" in rows
    assert "| added latency p90, cross-node: ambient-l4 / sidecar-haproxy | noise | 0.300 | 0.000 |" in rows
    assert "noise" in summary.tables(results)
    results += [{"setup": "baseline", "case": "throughput", "placement": "cross-node", "streams": 1, "gbps": 0.0},
                {"setup": "ambient-l4", "case": "throughput", "placement": "cross-node", "streams": 1, "gbps": 2.5}]
    assert "| throughput, 1 stream: ambient-l4 / baseline | - | 2.50 | 0.00 |" in summary.markdown({"results": results})


def test_tables_show_every_case():
    text = summary.tables(RESULTS)
    for title in ("latency, cross-node", "latency, same-node", "Throughput", "Memory", "Ratios"):
        assert title in text


def test_compare_matches_rows_and_flags_what_stays_inside_the_noise():
    old = {"results": [latency("ambient-l4", p50=0.20, added=(0.1, 0.1, 0.1), cpu=0.2)]}
    new = {"results": [latency("ambient-l4", p50=0.21, added=(0.1, 0.1, 0.1), cpu=0.1),
                       latency("sidecar-shoal", added=(0.1, 0.1, 0.1), cpu=0.1)]}
    rows = {r["figure"]: r for r in compare.changes(old, new)}
    assert rows["p50_ms"]["change_%"] == pytest.approx(5.0)
    assert rows["p50_ms"]["noise"] == "~"                     # 0.21 lies inside 0.18..0.22
    assert rows["cpu_per_1000rps"]["change_%"] == pytest.approx(-50.0)
    assert rows["cpu_per_1000rps"]["noise"] == ""             # no min-max recorded: not called noise
    assert all(r["setup"] == "ambient-l4" for r in rows.values())   # a set-up only in B is not compared


def test_compare_prints_both_runs(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"started": "A", "results": RESULTS}))
    b.write_text(json.dumps({"started": "B", "results": RESULTS}))
    assert compare.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "p99_ms" in out and "Ratios" in out


def test_charts_are_written_as_png(tmp_path):
    written = charts.draw({"results": RESULTS, "machine": {"cpus": 2}, "settings": {}}, tmp_path)
    assert {p.name for p in written} == {"latency.png", "added.png", "cpu.png", "memory.png", "throughput.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_usage_reads_a_cgroup_of_processes(tmp_path):
    cgroup = tmp_path / "pod"
    cgroup.mkdir()
    (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
    selector = usage.Selector((cgroup,))
    before = selector.cpu()
    deadline = os.times().elapsed + 0.3
    while os.times().elapsed < deadline:   # burn some CPU, so that there is something to read
        sum(range(10_000))
    spent = usage.cpu_between(before, selector.cpu())
    assert spent > 0.05
    assert selector.usage().rss_mib > 5 and selector.usage().processes == 1
    assert usage.Selector((cgroup,), keep=lambda argv: False).usage().processes == 0
    assert usage.cpu_between({}, {1: 2.0}) == 2.0   # a process that started in between counts from zero


def test_cpu_is_summed_per_kind_of_mesh_process():
    ztunnels = [usage.Selector((Path("/z1"),), part="ztunnel"), usage.Selector((Path("/z2"),), part="ztunnel")]
    agent = usage.Selector((Path("/a1"),), part="node-agent")
    before = [{10: 1.0}, {20: 2.0}, {30: 5.0}]
    after = [{10: 1.5}, {20: 2.25, 21: 0.25}, {30: 5.125}]
    assert usage.cpu_by_part([*ztunnels, agent], before, after) == {"ztunnel": 1.0, "node-agent": 0.125}


def test_a_run_records_each_parts_cpu_and_the_tables_show_where_it_goes():
    import argparse
    from bench.run import latency_row
    args = argparse.Namespace(rps=1000.0, connections=4)
    repeats = [{"rps_achieved": 1000.0, "p50_ms": 0.3, "cpu_per_1000rps": total, "cpu_ztunnel_per_1000rps": z,
                "cpu_node_agent_per_1000rps": total - z, "rss_mb": 100.0}
               for total, z in ((0.13, 0.12), (0.14, 0.125), (0.12, 0.115))]
    row = latency_row("ambient-l4", "cross-node", repeats, None, args)
    assert row["cpu_per_1000rps"] == pytest.approx(0.13)
    assert row["cpu_ztunnel_per_1000rps"] == pytest.approx(0.12)
    assert row["cpu_node_agent_per_1000rps_max"] == pytest.approx(0.015)
    assert "cpu_waypoint_per_1000rps" not in row     # no waypoint on this path: no column of Nones
    text = summary.tables([row, {**latency("sidecar-haproxy", cpu=0.1), "cpu_sidecar_per_1000rps": 0.1}])
    split = text[text.index("Where the mesh's CPU goes, cross-node"):]
    assert "cpu_ztunnel_per_1000rps" in split and "cpu_sidecar_per_1000rps" in split
    assert "cpu_waypoint_per_1000rps" not in split


def committed_runs() -> list[Path]:
    return sorted(RESULTS_DIR.glob("*-run/results.json"))


def test_the_readme_quotes_the_committed_run_exactly():
    runs = [p for p in committed_runs() if p.relative_to(RESULTS_DIR.parent.parent).as_posix() in README.read_text()]
    assert runs, "the README names no committed bench/results/<timestamp>-run/results.json"
    data = json.loads(runs[-1].read_text())
    assert summary.markdown(data) in README.read_text()
    setups = {r["setup"] for r in data["results"]}
    assert setups == {"baseline", "ambient-l4", "ambient-l7", "sidecar-haproxy", "sidecar-shoal"}
    assert {r["placement"] for r in data["results"] if r["case"] == "http-latency"} == {"cross-node", "same-node"}
    assert {r["pods"] for r in data["results"] if r["case"] == "memory"} == {1, 10, 50, 100}
    assert re.search(r"bench/results/\S+-run/memory\.png", README.read_text())
