"""Draws queues.png from queues.json: ``python -m benchmarks._queues_plot IN.json OUT.png``.

Runs in an interpreter that has matplotlib (the peers' virtualenv), like
``_plot.py``; it needs nothing else (``_queues_output`` imports only the
standard library).

Top row: runs/s of each system on the trivial pipeline and with the CPU-bound
middle step, with permflow's target (≥ 2× the fastest job queue) drawn as a
dashed line. Bottom row: p50 and p99 end-to-end latency of the same runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ._queues_output import TARGET

TITLES = {"trivial": "trivial 3-step pipeline", "cpu 20 ms": "~20 ms CPU-bound middle step"}


def _scenario_title(data: dict[str, Any], scenario: str) -> str:
    title = TITLES.get(scenario, scenario)
    runs = data.get("runs", {}).get(scenario)
    return f"{title}, {runs:,} runs" if runs else title


def _label(ax: Any, x: float, value: float) -> None:
    ax.text(x, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=7)


def _rates(ax: Any, data: dict[str, Any], scenario: str, colors: dict[str, str]) -> None:
    rows = data["rows"][scenario]
    systems = list(rows)
    for x, system in enumerate(systems):
        value = rows[system]["runs_per_s"]
        ax.bar(x, value, 0.6, color=colors[system])
        _label(ax, x, value)
    queues = [rows[s]["runs_per_s"] for s in systems if s != "permflow"]
    if queues:
        target = TARGET * max(queues)
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        note = f"permflow target: ≥ {TARGET:g}× the fastest queue ({target:,.0f} runs/s)"
        if "vs_fastest_queue" in rows.get("permflow", {}):
            note += f"; measured {rows['permflow']['vs_fastest_queue']:.2f}×"
        ax.text(-0.4, target, note, ha="left", va="bottom", fontsize=7)
        ax.set_ylim(0, target * 1.15)
    ax.set_xticks(range(len(systems)), systems)
    ax.set_ylabel("runs per second (higher is better)")
    ax.set_title(f"Runs/s: {_scenario_title(data, scenario)}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _latencies(ax: Any, data: dict[str, Any], scenario: str, colors: dict[str, str]) -> None:
    rows = data["rows"][scenario]
    systems = list(rows)
    width = 0.38
    for x, system in enumerate(systems):
        p50, p99 = rows[system]["p50_ms"], rows[system]["p99_ms"]
        ax.bar(x - width / 2, p50, width, color=colors[system])
        ax.bar(x + width / 2, p99, width, color=colors[system], alpha=0.45, hatch="//")
        _label(ax, x - width / 2, p50)
        _label(ax, x + width / 2, p99)
    ax.set_xticks(range(len(systems)), systems)
    ax.set_ylabel("ms from the batch's submission (lower is better)")
    ax.set_title(f"p50 (solid) / p99 (hatched) latency: {_scenario_title(data, scenario)}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def main(src: str, dst: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(src) as f:
        data = json.load(f)
    scenarios = list(data["rows"])
    systems = list(dict.fromkeys(s for rows in data["rows"].values() for s in rows))
    colors = {s: f"C{i}" for i, s in enumerate(systems)}
    fig, axes = plt.subplots(2, len(scenarios), figsize=(6.5 * len(scenarios), 9), squeeze=False)
    for col, scenario in enumerate(scenarios):
        _rates(axes[0][col], data, scenario, colors)
        _latencies(axes[1][col], data, scenario, colors)
    fig.suptitle("permflow workers against job queues on Redis, 2 worker processes each", fontsize=12)
    meta = data["machine"]
    rounds = data.get("rounds")
    medians = f"medians of {rounds} interleaved rounds" if rounds else "medians of interleaved rounds"
    fig.text(
        0.01,
        0.005,
        f"{meta['date']}, {meta['cores']} cores ({meta['cpu']}), Python {meta['python']}; {medians}; "
        "benchmarks/queues.md",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
