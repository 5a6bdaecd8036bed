"""A run's results read as answers: the terminal tables, and the ratios the README quotes.

A result is quoted as a ratio to another set-up of the same run
(BENCHMARKS.md): absolute numbers on a shared 2-core machine are noise, the
ratios much less so. `markdown(data)` renders the README's table from a
results.json; a test checks that the README holds exactly that table for the
committed run.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.report import table

LATENCY_COLUMNS = ["setup", "rps_achieved", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "added_p50_ms", "added_p90_ms",
                   "added_p99_ms", "cpu_per_1000rps", "rss_mb"]
PLACEMENTS = ("cross-node", "same-node")
# The kinds of mesh process whose CPU `bench run` records apart (bench.usage.Selector.part); the sum,
# cpu_per_1000rps, is what the goals are judged on, the parts say where it goes.
CPU_PARTS = ("ztunnel", "node-agent", "waypoint", "sidecar")


def cpu_key(part: str) -> str:
    """The results.json key of one part's CPU seconds per 1000 requests: cpu_ztunnel_per_1000rps, ..."""
    return f"cpu_{part.replace('-', '_')}_per_1000rps"


def cpu_split(results: list[dict], placement: str = "cross-node") -> list[dict]:
    """One row per meshed set-up: its CPU per 1000 requests in all, and each part's share of it."""
    rows = []
    for r in results:
        if r["case"] != "http-latency" or r["placement"] != placement or r.get("cpu_per_1000rps") is None:
            continue
        row = {"setup": r["setup"], "cpu_per_1000rps": r["cpu_per_1000rps"]}
        row.update({cpu_key(part): r.get(cpu_key(part)) for part in CPU_PARTS})
        rows.append(row)
    return rows


def cpu_split_columns(rows: list[dict]) -> list[str]:
    """The parts some row has a figure for (a run without a waypoint has no waypoint column)."""
    return ["setup", "cpu_per_1000rps", *(cpu_key(p) for p in CPU_PARTS if any(r.get(cpu_key(p)) is not None
                                                                                 for r in rows))]


def find(results: list[dict], **match) -> dict | None:
    return next((r for r in results if all(r.get(k) == v for k, v in match.items())), None)


def memory_counts(results: list[dict]) -> list[int]:
    return sorted({r["pods"] for r in results if r["case"] == "memory"})


def tables(results: list[dict]) -> str:
    parts = []
    for placement in PLACEMENTS:
        rows = [r for r in results if r["case"] == "http-latency" and r["placement"] == placement]
        if rows:
            parts.append(table(rows, LATENCY_COLUMNS, f"HTTP/1.1 latency, {placement} (ms; cpu: CPU seconds per "
                                                       "1000 requests; rss: MiB of the mesh on the path)"))
        split = cpu_split(results, placement)
        if split:
            parts.append(table(split, cpu_split_columns(split), f"Where the mesh's CPU goes, {placement} "
                                                                "(CPU seconds per 1000 requests, medians)"))
    rows = [r for r in results if r["case"] == "throughput"]
    if rows:
        parts.append(table(rows, ["setup", "streams", "gbps", "gbps_min", "gbps_max", "ratio_to_baseline"],
                           "Throughput, cross-node, iperf3 (Gbit/s)"))
    counts = memory_counts(results)
    if counts:
        setups = list(dict.fromkeys(r["setup"] for r in results if r["case"] == "memory"))
        rows = []
        for setup in setups:
            row = {"setup": setup}
            for n in counts:
                found = find(results, setup=setup, case="memory", pods=n)
                row[f"{n} pods"] = found["rss_mb"] if found else None
            rows.append(row)
        parts.append(table(rows, ["setup", *(f"{n} pods" for n in counts)],
                           "Memory of the mesh on one node against pods on it (MiB)"))
    quoted = ratios(results)
    if quoted:
        parts.append(table([{"figure": q.figure, "ratio": "noise" if q.noise else q.ratio} for q in quoted],
                           ["figure", "ratio"],
                           "Ratios (below 1: the first set-up costs less)"))
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Ratio:
    """Two medians of a run and their quotient. A divisor that is not positive divides into nothing
    meaningful (a negative quotient would read as "costs less"): such a figure is kept with no ratio,
    shown as noise when it is an added latency (at or below the baseline's), else as missing ("-": a
    CPU, throughput or memory reading of zero failed)."""

    figure: str
    numerator: float
    denominator: float

    @property
    def noise(self) -> bool:
        return self.denominator <= 0 and self.figure.startswith("added")

    @property
    def ratio(self) -> float | None:
        return None if self.denominator <= 0 else self.numerator / self.denominator


def _ratio(figure: str, a: dict | None, b: dict | None, key: str) -> Ratio | None:
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return None
    return Ratio(figure, a[key], b[key])


def ratios(results: list[dict]) -> list[Ratio]:
    """ambient ÷ sidecars: added latency at p50, p90, p99 for each placement, CPU per 1000 requests,
    memory on a node at the largest pod count, and each set-up's throughput against no mesh."""
    out: list[Ratio | None] = []
    pairs = [("ambient-l4", "sidecar-haproxy"), ("ambient-l4", "sidecar-shoal"), ("ambient-l7", "sidecar-haproxy"),
             ("ambient-l7", "sidecar-haproxy-http")]
    for placement in PLACEMENTS:
        for a, b in pairs:
            ra = find(results, setup=a, case="http-latency", placement=placement)
            rb = find(results, setup=b, case="http-latency", placement=placement)
            for p in ("p50", "p90", "p99"):
                out.append(_ratio(f"added latency {p}, {placement}: {a} / {b}", ra, rb, f"added_{p}_ms"))
    for a, b in pairs:
        ra = find(results, setup=a, case="http-latency", placement="cross-node")
        rb = find(results, setup=b, case="http-latency", placement="cross-node")
        out.append(_ratio(f"CPU per 1000 requests, cross-node: {a} / {b}", ra, rb, "cpu_per_1000rps"))
    counts = memory_counts(results)
    if counts:
        n = counts[-1]
        for b in ("sidecar-haproxy", "sidecar-shoal"):
            out.append(_ratio(f"memory on a node with {n} pods: ambient-l4 / {b}",
                              find(results, setup="ambient-l4", case="memory", pods=n),
                              find(results, setup=b, case="memory", pods=n), "rss_mb"))
    for streams in (1, 8):
        base = find(results, setup="baseline", case="throughput", streams=streams)
        for setup in ("ambient-l4", "ambient-l7", "sidecar-haproxy", "sidecar-haproxy-http", "sidecar-shoal"):
            out.append(_ratio(f"throughput, {streams} stream{'s' if streams > 1 else ''}: {setup} / baseline",
                              find(results, setup=setup, case="throughput", streams=streams), base, "gbps"))
    return [r for r in out if r is not None]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(data: dict) -> str:
    """The README's table of one run: each figure as a ratio, with the two medians it divides."""
    lines = ["| figure | ratio | first | second |", "|---|---:|---:|---:|"]
    for q in ratios(data["results"]):
        digits = 3 if q.figure.startswith(("added", "CPU")) else 1 if q.figure.startswith("memory") else 2
        ratio = "noise" if q.noise else _fmt(q.ratio)
        lines.append(f"| {q.figure} | {ratio} | {_fmt(q.numerator, digits)} | {_fmt(q.denominator, digits)} |")
    return "\n".join(lines)
