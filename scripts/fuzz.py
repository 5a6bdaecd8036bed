"""Fuzzing shoal's parsers and protocol cores with generated inputs (issue 9, "What it must show").

    .venv/bin/python -m scripts.fuzz [--target all|hbone|http1|h2|handoff] [--inputs 1000000]
                                   [--seconds 3600] [--seed 0] [--soak 20000] [--jobs 2]
    .venv/bin/python -m scripts.fuzz --target hbone --replay 1234     # one input again, traceback and all

Targets (see `scripts.fuzzing`): `hbone`, the HBONE server core and its asyncio
session over an in-memory transport; `http1`, the waypoint's HTTP/1.1 reader;
`h2`, the waypoint's HTTP/2 server over an in-memory channel; `handoff`, both
sides of the node agent <-> ztunnel hand-off. Each runs `--inputs` generated
inputs (input i is generated from seed `--seed` + i, so `--replay` finds it
again) or for `--seconds`, whichever ends first, then a soak: `--soak` well-formed
exchanges on one long-lived instance under tracemalloc.

A failure is any error outside the target's own typed ones, an invariant or
bound broken, or a soak that kept more than SOAK_BUDGET bytes. Failures found
before and reported (a target's `KNOWN`) are counted as failures, under their
name. With `--target all`, each target runs in a process of its own (`--jobs`
at a time), so its peak RSS is its own.

Prints a table and every distinct failure, with a traceback for new ones;
writes bench/results/<timestamp>-fuzz/results.json. Exits 1 when it found a
failure. Columns: inputs run; `accepted` and `refused`, the inputs the code
took to their end and those it refused with its own typed error (for h2, the
connection it closed on a protocol error or GOAWAY); failures, distinct ones,
and new ones (not in KNOWN); peak RSS of the process and its RSS growth after
the first WARM_UP inputs; the soak's cycles and the KiB it kept.

The full run on 2026-11-30 (2 cores, --jobs 2; hbone alone once its harness
was fixed), 1,000,000 inputs and a 20,000-cycle soak per target, no failure:

    target  inputs/s  peak RSS MB  RSS growth MB  soak kept KiB
    hbone       1232        143.7           19.5            0.6
    http1       6270         44.5            2.3            0.2
    h2           888        102.9           14.4            5.8
    handoff    23329         32.3           -0.1            0.0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from scripts import fuzzing
from bench.report import Run, table

SOAK_BUDGET = 64 << 10     # bytes a soak may keep: at 10,000 cycles a leak of 7 bytes each exceeds it
SOAK_CYCLES = 20000
WARM_UP = 2000             # inputs before the RSS that growth is measured from
COLUMNS = ["target", "inputs", "seconds", "per_s", "accepted", "refused", "failures", "distinct", "new",
           "peak_rss_mb", "rss_growth_mb", "soak_cycles", "soak_kept_kib"]


def quiet() -> None:
    """The cores log every peer that breaks a protocol; a fuzzer is nothing but such peers."""
    from shoal import log

    log.setup(level="critical", stream=open(os.devnull, "w"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def signature(error: BaseException) -> str:
    """What tells two failures apart: the error's type, its message without quoted values or numbers, and where
    it was raised."""
    message = re.sub(r"0x[0-9a-f]+|\d+", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", str(error)))[:100]
    return f"{type(error).__name__}: {message} @ {where(error)}"


def fuzz_target(name: str, inputs: int, seconds: float, seed: int, soak_cycles: int, progress: bool) -> dict:
    """Runs one target in this process; returns its row (figures and failures)."""
    module = fuzzing.target(name)
    outcomes: Counter = Counter()
    failures: dict[str, dict] = {}
    started = time.monotonic()
    last_report = started
    warm_rss = None
    run = 0
    for run in range(inputs):
        if run % 64 == 0:
            now = time.monotonic()
            if now - started >= seconds:
                break
            if progress and now - last_report >= 30:
                last_report = now
                print(f"fuzz {name}: {run} inputs, {sum(f['count'] for f in failures.values())} failures, "
                      f"{run / (now - started):.0f}/s", file=sys.stderr, flush=True)
        if run == WARM_UP:
            warm_rss = rss_mb()
        try:
            outcomes[module.run_one(random.Random(seed + run))] += 1
        except Exception as error:  # noqa: BLE001 - every error is a finding, recorded and counted
            key = signature(error)
            found = failures.setdefault(key, {"signature": key, "count": 0, "first_seed": seed + run,
                                              "known": getattr(fuzzing.known(module, error), "name", None),
                                              "traceback": "".join(traceback.format_exception(error))})
            found["count"] += 1
    else:
        run = inputs
    elapsed = time.monotonic() - started
    fuzz_rss = rss_mb()
    soak = module.soak(soak_cycles) if soak_cycles else None
    if soak is not None and soak["growth_bytes"] > SOAK_BUDGET:
        key = f"Unbounded: soak of {soak_cycles} cycles kept {soak['growth_bytes']} bytes @ {name}.soak"
        failures[key] = {"signature": key, "count": 1, "first_seed": None, "known": None, "traceback": ""}
    count = sum(f["count"] for f in failures.values())
    return {
        "target": name, "inputs": run, "seconds": round(elapsed, 1), "per_s": round(run / elapsed) if elapsed else 0,
        "accepted": outcomes["accepted"], "refused": outcomes["refused"], "failures": count,
        "distinct": len(failures), "new": sum(1 for f in failures.values() if f["known"] is None),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_growth_mb": round(fuzz_rss - warm_rss, 1) if warm_rss is not None else None,
        "soak_cycles": soak_cycles or None,
        "soak_kept_kib": round(soak["growth_bytes"] / 1024, 1) if soak is not None else None,
        "soak_sizes": soak["sizes"] if soak is not None else None,
        "failure_list": sorted(failures.values(), key=lambda f: -f["count"]),
    }


def in_processes(names: list[str], args) -> list[dict]:
    """Each target in a child process of its own, `args.jobs` at a time."""
    rows: dict[str, dict] = {}
    pending = list(names)
    running: list[tuple[str, subprocess.Popen, Path]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-fuzz-") as scratch:
        while pending or running:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                out = Path(scratch) / f"{name}.json"
                command = [sys.executable, "-m", "scripts.fuzz", "--target", name, "--inputs", str(args.inputs),
                           "--seconds", str(args.seconds), "--seed", str(args.seed), "--soak", str(args.soak),
                           "--row-to", str(out)]
                running.append((name, subprocess.Popen(command, stdout=subprocess.DEVNULL), out))
            time.sleep(0.2)
            for entry in list(running):
                name, child, out = entry
                if child.poll() is None:
                    continue
                running.remove(entry)
                if out.exists():
                    rows[name] = json.loads(out.read_text())
                    print(f"fuzz {name}: done, {rows[name]['inputs']} inputs, {rows[name]['failures']} failures",
                          file=sys.stderr, flush=True)
                else:
                    rows[name] = {"target": name, "inputs": 0, "failures": 1, "distinct": 1, "new": 1,
                                  "failure_list": [{"signature": f"the fuzzing process exited {child.returncode} "
                                                                 "without a result", "count": 1, "known": None,
                                                    "first_seed": None, "traceback": ""}]}
    return [rows[name] for name in names]


def report(rows: list[dict]) -> str:
    lines = [table(rows, COLUMNS, "fuzzing: generated inputs per target, failures found, memory")]
    for row in rows:
        for failure in row.get("failure_list", []):
            label = f"known: {failure['known']}" if failure["known"] else "NEW"
            replay = (f"; replay: python -m scripts.fuzz --target {row['target']} --replay {failure['first_seed']}"
                      if failure["first_seed"] is not None else "")
            lines.append(f"\n{row['target']}: {failure['count']} x {failure['signature']} [{label}]{replay}")
            if not failure["known"] and failure["traceback"]:
                lines.append(failure["traceback"].rstrip())
    known = {k.name: k.what for name in fuzzing.TARGETS for k in getattr(fuzzing.target(name), "KNOWN", ())}
    seen = {f["known"] for row in rows for f in row.get("failure_list", []) if f["known"]}
    for name in sorted(seen):
        lines.append(f"\n{name}: {known.get(name, '(no longer in KNOWN: fixed since the run began?)')}")
    return "\n".join(lines)


def replay(name: str, seed: int) -> int:
    module = fuzzing.target(name)
    outcome = module.run_one(random.Random(seed))   # an error goes up, with its whole traceback
    print(f"{name} input {seed}: {outcome}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="all", choices=["all", *fuzzing.TARGETS])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=3600.0, help="time per target at most (default 3600)")
    parser.add_argument("--seed", type=int, default=0, help="input i comes from seed SEED+i (default 0)")
    parser.add_argument("--soak", type=int, default=SOAK_CYCLES, help="soak cycles per target, 0 for none")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="targets run at once (--target all)")
    parser.add_argument("--replay", type=int, metavar="SEED", help="run the one input made from SEED, and show it")
    parser.add_argument("--row-to", type=Path, help=argparse.SUPPRESS)   # a child's result, for the parent
    args = parser.parse_args(argv)
    quiet()
    if args.replay is not None:
        if args.target == "all":
            parser.error("--replay needs one --target")
        return replay(args.target, args.replay)
    names = list(fuzzing.TARGETS) if args.target == "all" else [args.target]
    if len(names) > 1 and args.jobs > 1:
        rows = in_processes(names, args)
    else:
        rows = [fuzz_target(name, args.inputs, args.seconds, args.seed, args.soak, progress=True) for name in names]
    if args.row_to is not None:
        args.row_to.write_text(json.dumps(rows[0]))
        return 0
    run = Run("fuzz", {"targets": names, "inputs": args.inputs, "seconds": args.seconds, "seed": args.seed,
                       "soak": args.soak, "jobs": args.jobs})
    for row in rows:
        run.add(**row)
    path = run.write()
    print(report(rows))
    print(f"\nresults: {path}")
    return 1 if any(row["failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
