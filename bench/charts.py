"""PNG charts of a run, drawn from its results.json (matplotlib, no display needed).

    latency.png     p50, p90, p99, p99.9 per set-up, one panel per placement
    added.png       what each set-up adds over baseline at p50, p90, p99
    cpu.png         CPU seconds of the mesh per 1000 requests
    memory.png      the mesh's memory on one node against the pods on it, total and per pod
    throughput.png  iperf3, 1 and 8 streams

Bars are medians over the repeats; the whiskers span min to max.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

PLACEMENTS = ("cross-node", "same-node")
COLOURS = {"baseline": "#9e9e9e", "ambient-l4": "#1f77b4", "ambient-l7": "#17becf",
           "sidecar-haproxy": "#d62728", "sidecar-haproxy-http": "#8c1d1d", "sidecar-shoal": "#ff7f0e"}


def _rows(results, case, **match):
    return [r for r in results if r["case"] == case and all(r.get(k) == v for k, v in match.items())]


def _whiskers(rows, key):
    low = [max(r[key] - (r.get(f"{key}_min") if r.get(f"{key}_min") is not None else r[key]), 0) for r in rows]
    high = [max((r.get(f"{key}_max") if r.get(f"{key}_max") is not None else r[key]) - r[key], 0) for r in rows]
    return [low, high]


def _grouped(ax, rows, keys, labels, title, ylabel, log=False):
    rows = [r for r in rows if all(r.get(k) is not None for k in keys)]
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(keys))]
        values = [row[k] for k in keys]
        errors = [[max(row[k] - (row.get(f"{k}_min") if row.get(f"{k}_min") is not None else row[k]), 0) for k in keys],
                  [max((row.get(f"{k}_max") if row.get(f"{k}_max") is not None else row[k]) - row[k], 0) for k in keys]]
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=row["setup"],
               color=COLOURS.get(row["setup"]), edgecolor="black", linewidth=0.3)
    ax.set_xticks(range(len(keys)), labels)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)


def _footer(fig, data):
    m = data.get("machine", {})
    s = data.get("settings", {})
    fig.text(0.01, 0.005, f"{data.get('started', '')}  {m.get('cpus', '?')} CPUs, kernel {m.get('kernel', '?')}; "
             f"{s.get('rps', '?')} rps over {s.get('connections', '?')} connections, "
             f"{s.get('repeats', '?')} repeats of {s.get('duration', '?')} s", fontsize=7, color="#555555")


def draw(data: dict, directory: Path) -> list[Path]:
    results = data["results"]
    written = []

    def save(fig, name):
        _footer(fig, data)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = Path(directory) / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    latency = {p: _rows(results, "http-latency", placement=p) for p in PLACEMENTS}
    if any(latency.values()):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, placement in zip(axes, PLACEMENTS):
            _grouped(ax, latency[placement], ["p50_ms", "p90_ms", "p99_ms", "p999_ms"],
                     ["p50", "p90", "p99", "p99.9"], f"HTTP/1.1 latency, {placement}", "ms (log scale)", log=True)
            ax.yaxis.set_major_formatter(ScalarFormatter())
        axes[0].legend(fontsize=8)
        save(fig, "latency.png")

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, placement in zip(axes, PLACEMENTS):
            rows = [r for r in latency[placement] if r["setup"] != "baseline"]
            _grouped(ax, rows, ["added_p50_ms", "added_p90_ms", "added_p99_ms"], ["p50", "p90", "p99"],
                     f"Latency added over no mesh, {placement}", "ms (linear below 1, log above)")
            ax.set_yscale("symlog", linthresh=1.0, linscale=2.0)
            ax.yaxis.set_major_formatter(ScalarFormatter())
        axes[0].legend(fontsize=8)
        save(fig, "added.png")

        fig, ax = plt.subplots(figsize=(8, 4.5))
        setups = [r["setup"] for r in latency["cross-node"] if r.get("cpu_per_1000rps") is not None]
        width = 0.38
        for i, placement in enumerate(PLACEMENTS):
            rows = [next((r for r in latency[placement] if r["setup"] == s), None) for s in setups]
            rows = [r for r in rows if r is not None and r.get("cpu_per_1000rps") is not None]
            xs = [setups.index(r["setup"]) + (i - 0.5) * width for r in rows]
            ax.bar(xs, [r["cpu_per_1000rps"] for r in rows], width, yerr=_whiskers(rows, "cpu_per_1000rps"),
                   capsize=3, label=placement, color=["#4c72b0", "#dd8452"][i], edgecolor="black", linewidth=0.3)
        ax.set_xticks(range(len(setups)), setups)
        ax.set_ylabel("CPU seconds per 1000 requests (= vCPU per 1000 rps)")
        ax.set_title("The mesh's CPU per 1000 requests (ambient: ztunnels, node agents, waypoint; sidecars: both)")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        save(fig, "cpu.png")

    memory = _rows(results, "memory")
    if memory:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for setup in dict.fromkeys(r["setup"] for r in memory):
            rows = sorted((r for r in memory if r["setup"] == setup), key=lambda r: r["pods"])
            pods = [r["pods"] for r in rows]
            for ax, key in zip(axes, ("rss_mb", "rss_per_pod_mb")):
                ax.errorbar(pods, [r[key] for r in rows], yerr=_whiskers(rows, key), marker="o", capsize=3,
                            label=setup, color=COLOURS.get(setup))
        counts = sorted({r["pods"] for r in memory})
        for ax, title in zip(axes, ("Mesh memory on one node", "Mesh memory per pod")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(counts, [str(n) for n in counts])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel("pods on the node")
            ax.set_ylabel("MiB resident (log scale)")
            ax.set_title(title)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        save(fig, "memory.png")

    throughput = _rows(results, "throughput")
    if throughput:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        by_streams = {n: [r for r in throughput if r["streams"] == n] for n in (1, 8)}
        setups = [r["setup"] for r in by_streams[1]]
        width = 0.38
        for i, n in enumerate((1, 8)):
            rows = [next((r for r in by_streams[n] if r["setup"] == s), None) for s in setups]
            rows = [r for r in rows if r is not None]
            xs = [setups.index(r["setup"]) + (i - 0.5) * width for r in rows]
            ax.bar(xs, [r["gbps"] for r in rows], width, yerr=_whiskers(rows, "gbps"), capsize=3,
                   label=f"{n} stream{'s' if n > 1 else ''}", color=["#4c72b0", "#dd8452"][i],
                   edgecolor="black", linewidth=0.3)
        ax.set_xticks(range(len(setups)), setups)
        ax.set_ylabel("Gbit/s")
        ax.set_title("Throughput, cross-node (iperf3)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        save(fig, "throughput.png")
    return written
