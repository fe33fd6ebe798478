"""Writes a full run of ``python -m benchmarks.queues``: queues.json, queues.md and queues.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from . import _draw, _machine

HERE = Path(__file__).resolve().parent
JSON, MARKDOWN, PNG = HERE / "queues.json", HERE / "queues.md", HERE / "queues.png"
TARGET = 2.0

#: how each system's 2 worker processes were run (see benchmarks/queue_apps/)
SETUPS = {
    "permflow": "2 × `permflow worker --concurrency 100`; the client waits on `ainvoke` for each run",
    "celery": "Celery 5.7, a canvas `chain`; 2 × `celery worker --pool solo` (one process each), "
    "prefetch multiplier 64, early ack, results ignored, no gossip/mingle/heartbeat",
    "dramatiq": "Dramatiq 2.2, a `pipeline` of actors on its Redis broker; `dramatiq --processes 2 "
    "--threads 8`, default prefetch, no results backend",
    "arq": "arq 0.28, each job enqueues the next (arq has no canvas); 2 workers, `max_jobs` 100, "
    "`poll_delay` 0.05 s (from 0.5 s), logging at WARNING",
}


def summarise(figures: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, Any]]:
    """The median of each system's rounds per scenario, with permflow ÷ the fastest queue."""
    table: dict[str, dict[str, Any]] = {}
    for scenario, systems in figures.items():
        rows = {
            system: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for system, results in systems.items()
        }
        queues = [rows[s]["runs_per_s"] for s in rows if s != "permflow"]
        if "permflow" in rows and queues:
            rows["permflow"]["vs_fastest_queue"] = rows["permflow"]["runs_per_s"] / max(queues)
        table[scenario] = rows
    return table


def markdown(table: dict[str, dict[str, Any]], rounds: int, meta: dict[str, Any] | None = None) -> str:
    head = f"Job queues on Redis, 2 worker processes each (median of {rounds} rounds"
    head += f"; {meta['date']}, {_machine.summary(meta)})" if meta else ")"
    lines = [head, "", "| pipeline | system | runs/s | p50 ms | p99 ms | permflow ÷ fastest queue |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for scenario, rows in table.items():
        for system, row in rows.items():
            ratio = ""
            if "vs_fastest_queue" in row:
                ratio = f"{row['vs_fastest_queue']:.2f}× (target ≥ {TARGET:g}×)"
            lines.append(f"| {scenario} | {system} | {row['runs_per_s']:.0f} | {row['p50_ms']:.0f} | "
                         f"{row['p99_ms']:.0f} | {ratio} |")  # fmt: skip
    if meta:
        systems = dict.fromkeys(s for rows in table.values() for s in rows)
        lines += ["", "Setups (each configured for throughput as its documentation says):", ""]
        lines += [f"- {system}: {SETUPS[system]}" for system in systems if system in SETUPS]
        lines += ["", f"![runs/s and p50/p99 latency per system]({PNG.name})"]
    return "\n".join(lines)


def write(table: dict[str, dict[str, Any]], rounds: int, runs: dict[str, int], *, install: bool) -> None:
    """Write queues.json, queues.md and queues.png (matplotlib from the peers' virtualenv)."""
    meta = _machine.describe()
    data = {"machine": meta, "rounds": rounds, "runs": runs, "rows": table}
    JSON.write_text(json.dumps(data, indent=2) + "\n")
    MARKDOWN.write_text(markdown(table, rounds, meta) + "\n")
    print(f"wrote {JSON}\nwrote {MARKDOWN}")
    plot(install=install)


def plot(*, install: bool) -> bool:
    """Draw queues.png from queues.json; whether it was drawn."""
    message = _draw.draw("_queues_plot", JSON, PNG, create=install)
    print(message)
    return message.startswith("wrote")
