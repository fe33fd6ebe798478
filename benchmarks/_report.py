"""Turns collected measurements into medians, ratios and tables (text and Markdown)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ._workloads import BASELINES, TARGETS, Baseline, Workload


@dataclass
class Row:
    workload: str
    system: str
    median: str
    spread: str
    ratio: str
    vs_permflow: str
    target: str
    note: str


def median(cell: dict[str, Any]) -> float | None:
    rounds = cell.get("rounds") or []
    if cell.get("error") or not rounds:
        return None
    return statistics.median(rounds)


def show(workload: Workload, seconds_per_unit: float) -> str:
    if workload.is_rate:
        return f"{1 / seconds_per_unit:,.0f} {workload.unit}"
    return f"{seconds_per_unit * 1e6:,.2f} {workload.unit}"


def _spread(workload: Workload, rounds: list[float]) -> str:
    if len(rounds) < 2:
        return ""
    lo, hi = min(rounds), max(rounds)
    if workload.is_rate:
        return f"{1 / hi:,.0f}–{1 / lo:,.0f}"
    return f"{lo * 1e6:,.2f}–{hi * 1e6:,.2f}"


def _target(system: str, workload: Workload, ratio: float | None, spu: float, against: str) -> str:
    target = TARGETS.get((system, workload.key))
    if target is None:
        return ""
    kind, bound = target
    if kind == "ratio":
        bound_text = f"≤{bound:g}×{' ' + against if against else ''}"
        if ratio is None:
            return f"{bound_text} (no baseline)"
        return f"{'met' if ratio <= bound else 'MISSED'} ({bound_text})"
    return f"{'met' if 1 / spu >= bound else 'MISSED'} (≥{bound:,.0f}/s)"


def _ratios(results: dict[str, Any], wl: Workload, system: str, spu: float) -> tuple[str, float | None, str]:
    """The ratio cell of a row (one ratio per baseline, each followed by the
    baseline's name), then the ratio and name of the first baseline (targets)."""
    bases = BASELINES.get(wl.key, ())
    parts: list[str] = []
    ratios: list[float | None] = []
    for base in bases:
        if (base.system, base.workload) == (system, wl.key):
            parts.append("1.00× (baseline)")
            ratios.append(1.0)
            continue
        cost = _cost(results, base)
        ratios.append(spu / cost if cost else None)
        if cost:
            parts.append(f"{spu / cost:.2f}×{' ' + base.name if base.name else ''}")
    if not bases:
        return "", None, ""
    return "; ".join(parts), ratios[0], bases[0].name


def _cost(results: dict[str, Any], base: Baseline) -> float | None:
    cell = results.get(base.workload, {}).get(base.system)
    cost = median(cell) if cell else None
    return cost * base.per if cost is not None else None


def rows(data: dict[str, Any], workloads: list[Workload]) -> list[Row]:
    results = data["results"]
    out: list[Row] = []
    for wl in workloads:
        if wl.mode == "mem":
            out.extend(_mem_rows(data, wl))
            continue
        cells = results.get(wl.key, {})
        permflow_cell = cells.get("permflow")
        reference = median(permflow_cell) if permflow_cell else None
        for system, cell in cells.items():
            spu = median(cell)
            if spu is None:
                text = cell.get("error") or "no result"
                label = (
                    "not available" if cell.get("unavailable") else ("n/a" if cell.get("unsupported") else "")
                )
                out.append(Row(wl.label, system, label or "FAILED", "", "", "", "", text[:120]))
                continue
            ratio_text, ratio, against = _ratios(results, wl, system, spu)
            vs = ""
            if reference and system != "permflow" and wl.family == "memory" and system != "asyncio":
                vs = f"{spu / reference:.1f}×"
            out.append(
                Row(
                    wl.label,
                    system,
                    show(wl, spu),
                    _spread(wl, cell["rounds"]),
                    ratio_text,
                    vs,
                    "" if data["meta"]["quick"] else _target(system, wl, ratio, spu, against),
                    cell.get("note", ""),
                )
            )
    return out


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def _mem_rows(data: dict[str, Any], wl: Workload) -> list[Row]:
    out = []
    for system, cell in data.get("mem", {}).items():
        if cell.get("error"):
            label = "not available" if cell.get("unavailable") else "FAILED"
            out.append(Row(wl.label, system, label, "", "", "", "", cell["error"][:120]))
            continue
        growth = cell["end_kib"] - cell["start_kib"]
        per_run = growth * 1024 / cell["invokes"]
        flat = "flat" if growth < 4096 else "GROWS"
        out.append(
            Row(
                wl.label,
                system,
                f"{_mib(cell['start_kib'])} → {_mib(cell['end_kib'])} MiB",
                f"peak {_mib(cell['peak_kib'])} MiB",
                f"{growth / 1024:+.1f} MiB ({per_run:+.1f} B/run)",
                "",
                flat,
                f"{_count(cell)} in {cell['seconds']:.1f} s. {cell.get('note', '')}".strip(),
            )
        )
    return out


def _count(cell: dict[str, Any]) -> str:
    done, asked = cell["invokes"], cell.get("count", cell["invokes"])
    if done < asked:
        return f"only {done:,} of {asked:,} invokes (time limit)"
    return f"{done:,} invokes"


HEADERS = ("workload", "system", "median", "range (rounds)", "vs baseline", "vs permflow", "target", "note")


def text_table(table: list[Row], *, targets: bool = True) -> str:
    """The rows as aligned text; without the target column unless ``targets``
    (a quick run judges nothing, so it shows no targets)."""
    cells = [HEADERS] + [
        (r.workload, r.system, r.median, r.spread, r.ratio, r.vs_permflow, r.target, r.note) for r in table
    ]
    if not targets:
        cells = [c[:6] + c[7:] for c in cells]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    lines = []
    previous = None
    for c in cells:
        workload = c[0] if c[0] != previous else ""
        previous = c[0]
        parts = [workload.ljust(widths[0])] + [c[i].ljust(widths[i]) for i in range(1, len(widths))]
        lines.append("  ".join(parts) + "  " + c[-1])
        if c is cells[0]:
            lines.append("-" * (sum(widths) + 2 * len(widths) + 4))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(table: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    previous = None
    for r in table:
        workload = r.workload if r.workload != previous else ""
        previous = r.workload
        values = (workload, r.system, r.median, r.spread, r.ratio, r.vs_permflow, r.target, r.note)
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines)
