"""Writes a full run of ``python -m benchmarks.workers``: workers.json and workers.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _machine

HERE = Path(__file__).resolve().parent


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# permflow worker benchmark results",
        "",
        f"- date: {meta['date']}",
        f"- machine: {_machine.summary(meta)}; client, workers and Redis {meta['redis']} share it",
        f"- Python {meta['python']}; {meta['rounds']} interleaved rounds per setup after one untimed "
        "warm-up round, medians shown",
        f"- cpu step: {meta['cpu_step_loops']:,} loop turns of pure Python ≈ {meta['cpu_step_ms']:g} ms",
        "",
        "Produced by `python -m benchmarks.workers` (see README.md). Every result is checked.",
        "",
        "| step | setup | runs/s | range (rounds) | runs per round | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for comparison in data["comparisons"]:
        verdict = "met" if comparison["met"] else "MISSED"
        for k, setup in enumerate(comparison["setups"]):
            rates = setup["rounds"]
            n = setup["workers"]
            who = f"{n} worker{'s' if n > 1 else ''} × `--concurrency {setup['concurrency']}`"
            if setup["client_in_flight"]:
                who += f" (client: {setup['client_in_flight']} runs in flight)"
            last = k == len(comparison["setups"]) - 1
            lines.append(
                f"| {comparison['step'] if k == 0 else ''} | {who} | {setup['runs_per_second']:,.1f} | "
                f"{min(rates):,.1f}–{max(rates):,.1f} | {setup['runs_per_round']:,} | "
                + (f"{comparison['ratio']:.2f}× ({comparison['what']}) | " if last else " | ")
                + (f"{verdict} (≥ {comparison['target']:g}×) |" if last else " |")
            )
    return "\n".join(lines) + "\n"


def write(data: dict[str, Any]) -> list[Path]:
    """Write ``data`` (``workers.figures()``) to workers.json and workers.md."""
    (HERE / "workers.json").write_text(json.dumps(data, indent=1) + "\n")
    (HERE / "workers.md").write_text(markdown(data))
    return [HERE / "workers.json", HERE / "workers.md"]
