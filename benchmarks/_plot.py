"""Draws results.png from results.json: ``python -m benchmarks._plot IN.json OUT.png``.

Runs in an interpreter that has matplotlib (the peers' virtualenv).
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

PER_HOP = [
    ("w1_async", "W1 async\n100 hops"),
    ("w1_sync", "W1 sync\n100 hops"),
    ("w4_10", "W4\n10 hops"),
    ("w4_50", "W4\n50 hops"),
    ("w4_100", "W4\n100 hops"),
    ("w4_200", "W4\n200 hops"),
    ("redis_hop_script", "Redis floor\n1 RTT/hop"),
    ("redis_hop_multi", "Redis hop\n2 RTT (MULTI)"),
    ("redis_w1", "W1 on\nRedis"),
]
RATES = [
    ("w3_seq", "W3 sequential\nainvoke"),
    ("w3_batch", "W3 abatch"),
    ("w3_sync", "W3 sequential\ninvoke"),
    ("redis_run_script", "Redis floor\n3-hop run"),
    ("redis_w3_seq", "W3 on Redis\nsequential"),
    ("redis_w3_batch", "W3 on Redis\nabatch"),
    ("redis_w3_batch64", "W3 on Redis\nabatch(64)"),
]


def _median(cell: dict[str, Any] | None) -> float | None:
    if not cell or cell.get("error") or not cell.get("rounds"):
        return None
    return float(statistics.median(cell["rounds"]))


def _panel(
    ax: Any, data: dict[str, Any], groups: list[tuple[str, str]], systems: list[str], rate: bool
) -> None:
    results = data["results"]
    groups = [g for g in groups if any(_median(results.get(g[0], {}).get(s)) for s in systems)]
    width = 0.8 / max(1, len(systems))
    colors = {s: f"C{i}" for i, s in enumerate(systems)}
    for gi, (key, _) in enumerate(groups):
        present = [s for s in systems if _median(results.get(key, {}).get(s))]
        for si, system in enumerate(present):
            spu = _median(results[key][system])
            assert spu is not None
            value = 1 / spu if rate else spu * 1e6
            x = gi - 0.4 + width * (si + 0.5) + width * (len(systems) - len(present)) / 2
            ax.bar(x, value, width, color=colors[system])
            label = f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
            ax.text(x, value, label, ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(groups)), [label for _, label in groups], fontsize=8)
    ax.set_yscale("log")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.set_ylabel("runs per second (higher is better)" if rate else "µs per hop (lower is better)")


def main(src: str, dst: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    data = json.loads(open(src).read())
    systems = [s for s, info in data["systems"].items() if info["available"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 10))
    _panel(top, data, PER_HOP, systems, rate=False)
    top.set_title("Cost per hop (log scale)")
    _panel(bottom, data, RATES, systems, rate=True)
    bottom.set_title("Runs per second, 3-process chain (log scale)")
    handles = [Patch(color=f"C{i}", label=s) for i, s in enumerate(systems)]
    fig.legend(handles=handles, loc="upper center", ncol=len(systems), fontsize=9, frameon=False)
    meta = data["meta"]
    fig.text(
        0.01,
        0.005,
        f"{meta['date']}, {meta['cores']} cores, Python {meta['python']}; medians of "
        f"{meta['rounds']} interleaved rounds",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
