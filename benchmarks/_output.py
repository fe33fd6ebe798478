"""Writes a full run's results: results.json, results.md and results.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _draw, _machine, _report

HERE = Path(__file__).resolve().parent


def markdown(data: dict[str, Any], table: list[_report.Row]) -> str:
    meta = data["meta"]
    lines = [
        "# permflow benchmark results",
        "",
        f"- date: {meta['date']}",
        f"- machine: {_machine.summary(meta)}",
        f"- Python {meta['python']}; {meta['rounds']} interleaved rounds per row, medians shown; "
        f"whole run {meta['seconds']} s",
        "",
        "| system | what | versions |",
        "|---|---|---|",
    ]
    for name, info in data["systems"].items():
        if info["available"]:
            versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        else:
            versions = "not available: " + info["reason"].splitlines()[0][:100]
        lines.append(f"| {name} | {info['what']} | {versions} |")
    lines += [
        "",
        "Ratios are cost divided by the baseline's cost measured in the same run "
        "(for rates, cost is 1/rate), so above 1 means slower. `vs permflow` is the same for "
        "peers against permflow. See README.md for what each workload does.",
        "",
        "Redis rows name the floor each ratio is against: the **1-RTT script floor** (a hop by "
        "hand in one round trip: one Lua script doing XACK + XADD + XREADGROUP, sent with EVALSHA), "
        "**PING** (the bare round trip) and, for W1, the **2-RTT MULTI hop** (XREADGROUP, then "
        "XACK + XADD in MULTI/EXEC). Targets on ratios are judged against the first one named.",
        "",
        _mem_note(data),
        "",
        _report.markdown_table(table),
        "",
        "![per-hop cost and runs/s per system](results.png)",
        "",
    ]
    return "\n".join(lines)


def _mem_note(data: dict[str, Any]) -> str:
    at_once = data["meta"].get("mem_at_once", 1)
    limit = data["meta"].get("mem_seconds_limit", 0)
    return (
        "MEM: every system does the same count of invokes, each in a fresh process; a system still "
        f"running after {limit:g} s would stop there, its row saying how many it did "
        "(compare growth per run then). "
        + (
            f"{at_once} systems were measured at a time (resident memory does not depend on the CPU "
            "a process gets), so the seconds shown are wall time on a shared machine."
            if at_once > 1
            else ""
        )
    ).strip()


def write(data: dict[str, Any], table: list[_report.Row]) -> list[str]:
    out = []
    json_path = HERE / "results.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path = HERE / "results.md"
    md_path.write_text(markdown(data, table))
    out += [f"wrote {json_path}", f"wrote {md_path}"]
    out.append(_draw.draw("_plot", json_path, HERE / "results.png"))
    return out
