"""Issue 13's (or 18's) goal lines read off `bench run` results: each as the ratio reached against its bound.

    python -m bench goals RUN/results.json [MORE/results.json ...] [--issue 13|18] [--markdown]

The goals (ambient must cost no more than the HAProxy sidecars), cross-node,
per run (one run per redirect mode):
- ambient-l4's added latency at p50 and at p99 at most sidecar-haproxy's (ratio <= 1);
- ambient-l4's CPU per 1000 requests at most sidecar-haproxy's (ratio <= 1;
  `bench run` counts the node agents on the path with the ztunnels, so this
  is stricter than the ztunnels alone);
- one iperf3 stream through ambient-l4 at least 0.3 of baseline;
- the node's mesh memory at 50 pods at most 0.2 of the 50 HAProxy sidecars'.
Issue 18's (`--issue 18`; the waypoint at the cost of an L7 sidecar), cross-node, per run:
- ambient-l7's added latency at p50 and at p99 at most sidecar-haproxy-http's;
- ambient-l7's CPU per 1000 requests (ztunnels, node agents and the
  waypoint) at most sidecar-haproxy-http's (the two HAProxy sidecars);
- the waypoint's resident memory at most 40 MiB (its ratio to 40 MiB).
A figure the run did not measure is reported as missing, never as met; a
ratio whose divisor is not positive as noise when it is an added latency (a
sidecar's below the baseline's noise), else as missing (a reading that failed). Below the goals, the CPU goal's figures split by
kind of mesh process (ztunnels, node agents, waypoint; sidecars), so the
table says where the CPU goes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from bench.report import table
from bench.summary import cpu_split, cpu_split_columns, find

MEMORY_PODS = 50
WAYPOINT_RSS_MIB = 40.0
ISSUES = (13, 18)


@dataclass(frozen=True)
class Goal:
    name: str
    bound: float
    at_least: bool                 # True: the ratio must reach the bound; False: stay at or under it
    ratio: float | None            # None: the run lacks a figure it needs, or the divisor is not positive
    noise: bool = False            # the divisor is not positive: an added latency the baseline's noise swallowed

    @property
    def verdict(self) -> str:
        if self.noise:
            return "noise"
        if self.ratio is None:
            return "missing"
        met = self.ratio >= self.bound if self.at_least else self.ratio <= self.bound
        return "met" if met else "not met"


def _goal(name: str, bound: float, at_least: bool, a: dict | None, b: dict | None, key: str) -> Goal:
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return Goal(name, bound, at_least, None)
    if b[key] <= 0:
        # A negative added latency is inside the baseline's noise; a CPU, throughput or memory figure of
        # zero or less is a reading that failed: missing, not noise.
        return Goal(name, bound, at_least, None, noise=key.startswith("added_"))
    return Goal(name, bound, at_least, a[key] / b[key])


def goals(results: list[dict]) -> list[Goal]:
    ambient = find(results, setup="ambient-l4", case="http-latency", placement="cross-node")
    haproxy = find(results, setup="sidecar-haproxy", case="http-latency", placement="cross-node")
    return [
        _goal("added latency p50: ambient-l4 / sidecar-haproxy", 1.0, False, ambient, haproxy, "added_p50_ms"),
        _goal("added latency p99: ambient-l4 / sidecar-haproxy", 1.0, False, ambient, haproxy, "added_p99_ms"),
        _goal("CPU per 1000 requests: ambient-l4 / sidecar-haproxy", 1.0, False, ambient, haproxy, "cpu_per_1000rps"),
        _goal("throughput, 1 stream: ambient-l4 / baseline", 0.3, True,
              find(results, setup="ambient-l4", case="throughput", streams=1),
              find(results, setup="baseline", case="throughput", streams=1), "gbps"),
        _goal(f"memory on a node with {MEMORY_PODS} pods: ambient-l4 / sidecar-haproxy", 0.2, False,
              find(results, setup="ambient-l4", case="memory", pods=MEMORY_PODS),
              find(results, setup="sidecar-haproxy", case="memory", pods=MEMORY_PODS), "rss_mb"),
    ]


def l7_goals(results: list[dict]) -> list[Goal]:
    """Issue 18's: ambient-l7 (ztunnel, waypoint, ztunnel) against HAProxy sidecars in `mode http`."""
    ambient = find(results, setup="ambient-l7", case="http-latency", placement="cross-node")
    haproxy = find(results, setup="sidecar-haproxy-http", case="http-latency", placement="cross-node")
    return [
        _goal("added latency p50: ambient-l7 / sidecar-haproxy-http", 1.0, False, ambient, haproxy, "added_p50_ms"),
        _goal("added latency p99: ambient-l7 / sidecar-haproxy-http", 1.0, False, ambient, haproxy, "added_p99_ms"),
        _goal("CPU per 1000 requests: ambient-l7 / sidecar-haproxy-http", 1.0, False, ambient, haproxy,
              "cpu_per_1000rps"),
        _goal(f"waypoint resident memory / {WAYPOINT_RSS_MIB:g} MiB", 1.0, False, ambient,
              {"waypoint_rss_mb": WAYPOINT_RSS_MIB}, "waypoint_rss_mb"),
    ]


def rows(data: dict, issue: int = 13) -> list[dict]:
    mode = data.get("settings", {}).get("redirect", "?")
    found = l7_goals(data["results"]) if issue == 18 else goals(data["results"])
    return [{"redirect": mode, "goal": g.name, "bound": f"{'>=' if g.at_least else '<='} {g.bound:g}",
             "ratio": None if g.ratio is None else round(g.ratio, 2), "verdict": g.verdict}
            for g in found]


def split_rows(data: dict, issue: int = 13) -> list[dict]:
    """The CPU goal's two set-ups, cross-node, each with its CPU per 1000 requests by kind of mesh process."""
    mode = data.get("settings", {}).get("redirect", "?")
    compared = ("ambient-l7", "sidecar-haproxy-http") if issue == 18 else ("ambient-l4", "sidecar-haproxy")
    return [{"redirect": mode, **r} for r in cpu_split(data["results"]) if r["setup"] in compared]


def split_markdown(rows: list[dict]) -> str:
    columns = ["redirect", *cpu_split_columns(rows)]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) if isinstance(r.get(c), str) else
                                       ("-" if r.get(c) is None else f"{r[c]:.3f}") for c in columns) + " |")
    return "\n".join(lines)


def markdown(all_rows: list[dict]) -> str:
    lines = ["| redirect | goal | bound | ratio | verdict |", "|---|---|---|---:|---|"]
    for r in all_rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['redirect']} | {r['goal']} | {r['bound']} | {ratio} | {r['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench goals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json of `python -m bench run`")
    parser.add_argument("--issue", type=int, choices=ISSUES, default=13,
                        help="whose goal lines: 13 (ambient-l4, the default) or 18 (ambient-l7)")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table instead of the terminal's")
    args = parser.parse_args(argv)
    all_rows, all_split = [], []
    for path in args.results:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            parser.error(f"cannot read {path}: {e}; give the results.json that `python -m bench run` wrote")
        if "results" not in data:
            parser.error(f"{path} has no results list; is it a `python -m bench run` results.json?")
        all_rows += rows(data, args.issue)
        all_split += split_rows(data, args.issue)
    print(markdown(all_rows) if args.markdown else
          table(all_rows, ["redirect", "goal", "bound", "ratio", "verdict"], f"Issue {args.issue}'s goals, cross-node"))
    if all_split:
        print()
        print(split_markdown(all_split) if args.markdown else
              table(all_split, ["redirect", *cpu_split_columns(all_split)],
                    "Where the CPU goes, cross-node (CPU seconds per 1000 requests, medians)"))
    return 0
