"""What every benchmark shares: the result file, the table, and medians over repeats.

A run writes `bench/results/<timestamp>/results.json` in the shape
BENCHMARKS.md fixes: {"started", "machine", "versions", "settings", "results"}.
Each figure is the median over the repeats, with `_min` and `_max` beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchError(RuntimeError):
    """A benchmark cannot go on; the message says what failed and what to check."""

VERSIONED = ("shoal", "h2", "grpcio", "cryptography", "uvloop", "pyroute2")


def machine() -> dict:
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def versions() -> dict:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["git"] = git_revision()
    for tool, args in (("haproxy", ["-v"]), ("iperf3", ["--version"]), ("curl", ["--version"])):
        try:
            first = subprocess.run([tool, *args], capture_output=True, text=True, timeout=5).stdout.splitlines()
            out[tool] = first[0] if first else ""
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


def git_revision() -> str:
    """The commit measured, with "+modified" when tracked files differed from it (the numbers are then
    those of a work tree, not of the commit)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head + ("+modified" if head and changed else "")


def summarize(values: Iterable[float], name: str) -> dict:
    """{name: median, name_min: min, name_max: max} over the repeats."""
    values = list(values)
    if not values:
        return {name: None, f"{name}_min": None, f"{name}_max": None}
    return {name: statistics.median(values), f"{name}_min": min(values), f"{name}_max": max(values)}


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the samples fall (nearest rank, as HdrHistogram reports)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


@dataclass
class Run:
    name: str
    settings: dict
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    results: list[dict] = field(default_factory=list)

    def add(self, **row) -> dict:
        self.results.append(row)
        return row

    def write(self, directory: Path | None = None, under: Path = RESULTS_DIR) -> Path:
        """Write `results.json` into `directory`, by default `<under>/<timestamp>-<name>/`."""
        stamp = self.started.replace(":", "").replace("+0000", "Z")
        directory = directory or Path(under) / f"{stamp}-{self.name}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "results.json"
        path.write_text(json.dumps({
            "benchmark": self.name, "started": self.started, "machine": machine(),
            "versions": versions(), "settings": self.settings, "results": self.results,
        }, indent=2))
        return path


def table(rows: list[dict], columns: list[str], title: str | None = None) -> str:
    """A plain text table; floats get three significant decimals."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return "-" if value is None else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
    return "\n".join(lines)
