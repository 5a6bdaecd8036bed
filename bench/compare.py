"""`python -m bench compare A.json B.json`: what changed between two runs, figure by figure.

Rows are matched by set-up, case, placement, streams and pods. For each
figure both medians are printed with B's change against A, and `~` marks a
change that stays inside the two runs' min-max spans (noise, as far as the
repeats can tell). Ratios between set-ups are compared too: they move less
with the machine than the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import summary
from bench.report import table

KEY = ("setup", "case", "placement", "streams", "pods")
FIGURES = {
    "http-latency": ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "added_p50_ms", "added_p99_ms", "cpu_per_1000rps",
                     "rss_mb"),
    "throughput": ("gbps",),
    "memory": ("rss_mb",),
}


def key_of(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY)


def overlaps(a: dict, b: dict, figure: str) -> bool:
    lo_a, hi_a = a.get(f"{figure}_min"), a.get(f"{figure}_max")
    lo_b, hi_b = b.get(f"{figure}_min"), b.get(f"{figure}_max")
    if None in (lo_a, hi_a, lo_b, hi_b):
        return False
    return lo_a <= hi_b and lo_b <= hi_a


def changes(old: dict, new: dict) -> list[dict]:
    before = {key_of(r): r for r in old["results"]}
    out = []
    for row in new["results"]:
        previous = before.get(key_of(row))
        if previous is None:
            continue
        where = " ".join(str(v) for v in key_of(row)[2:] if v is not None)
        for figure in FIGURES.get(row["case"], ()):
            a, b = previous.get(figure), row.get(figure)
            if a is None or b is None:
                continue
            change = (b - a) / abs(a) * 100 if a else None
            out.append({"setup": row["setup"], "case": row["case"], "where": where, "figure": figure, "A": a, "B": b,
                        "change_%": change, "noise": "~" if overlaps(previous, row, figure) else ""})
    return out


def ratio_changes(old: dict, new: dict) -> list[dict]:
    before = {r.figure: r.ratio for r in summary.ratios(old["results"])}
    return [{"figure": r.figure, "A": before[r.figure], "B": r.ratio} for r in summary.ratios(new["results"])
            if r.figure in before]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the earlier results.json")
    parser.add_argument("b", type=Path, help="the later results.json")
    args = parser.parse_args(argv)
    try:
        old, new = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"python -m bench compare: cannot read {e}", file=sys.stderr)
        return 2
    rows = changes(old, new)
    if not rows:
        print("no figure in common between the two runs", file=sys.stderr)
        return 1
    print(f"A: {args.a} ({old.get('started')})\nB: {args.b} ({new.get('started')})\n")
    print(table(rows, ["setup", "case", "where", "figure", "A", "B", "change_%", "noise"],
                "Figures (medians; ~: inside both runs' min-max spans)"))
    quoted = ratio_changes(old, new)
    if quoted:
        print()
        print(table(quoted, ["figure", "A", "B"], "Ratios"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
