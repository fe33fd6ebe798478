"""Process steps against thread steps: ``python -m benchmarks.processes [--quick]``.

One run fans a list of 8 numbers out to a CPU-bound pure-Python step (a busy
loop calibrated to take ~0.2 s here) with ``.map()``, once with
``execution="thread"`` and once with ``execution="process"`` (a pool of
``max_processes`` = the CPU count). Threads take turns on the GIL, so the
thread run costs about 8 × 0.2 s; processes share the cores.

The process pool is warmed first (one untimed run starts its processes), then
the two setups run in interleaved rounds. Figure: the median wall time of
each, and their ratio (process / thread; target ≤ 0.65 on 2 cores). Results go
to ``benchmarks/processes.json`` and ``benchmarks/processes.md``. ``--quick``
runs one short round and checks the results only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import _machine
from permflow import PubSub, RunnableLambda, Topic

CALLS = 8
STEP_SECONDS = 0.2
TARGET = 0.65
HERE = Path(__file__).parent


def spin(n: int) -> int:
    """``n`` turns of a pure-Python loop (the GIL is held throughout)."""
    total = 0
    for i in range(n):
        total += i % 7
    return total


def calibrate(seconds: float) -> int:
    """Loop turns that take about ``seconds`` in this process."""
    n = 100_000
    while True:
        started = time.perf_counter()
        spin(n)
        took = time.perf_counter() - started
        if took > 0.05:
            return int(n * seconds / took)
        n *= 2


def fan_out(execution: Any) -> PubSub:
    step = RunnableLambda(spin, execution=execution)
    return PubSub(Topic.IN.subscribe() | step.map() | Topic.OUT.publish())


def timed(pubsub: PubSub, n: int) -> float:
    started = time.perf_counter()
    [out] = pubsub.invoke([n] * CALLS)
    took = time.perf_counter() - started
    assert out == [spin(n)] * CALLS, out
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round, results checked only")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    load = os.getloadavg()
    n = calibrate(0.01 if args.quick else STEP_SECONDS)
    setups = {"thread": fan_out("thread"), "process": fan_out("process")}
    with setups["process"]:
        timed(setups["process"], 1000)  # warm-up: start the pool's processes
        times: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(rounds):
            for name, pubsub in setups.items():
                times[name].append(timed(pubsub, n))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["process"] / medians["thread"]
    paired = statistics.median(p / t for p, t in zip(times["process"], times["thread"], strict=True))
    for name, median in medians.items():
        print(f"{CALLS} calls, execution={name!r:10} median {median:6.3f} s   ({rounds} rounds)")
    print(f"process / thread wall time: {ratio:.2f} (median of the rounds' own ratios: {paired:.2f})")
    if args.quick:
        return
    meta = {**_machine.describe(), "rounds": rounds, "loop_turns": n, "step_seconds": STEP_SECONDS}
    meta["load_average"] = {"start": load, "end": os.getloadavg()}
    data = {
        "meta": meta,
        "seconds": times,
        "medians": medians,
        "ratio": ratio,
        "paired_ratio": paired,
        "target": TARGET,
    }
    (HERE / "processes.json").write_text(json.dumps(data, indent=1) + "\n")
    met = "met" if ratio <= TARGET else "MISSED"
    lines = [
        "# permflow process-step benchmark results",
        "",
        f"- date: {meta['date']}",
        f"- machine: {_machine.summary(meta)}; load average (1 / 5 / 15 min) at the start "
        f"{_loads(meta['load_average']['start'])}, at the end {_loads(meta['load_average']['end'])}",
        f"- Python {meta['python']}; the process pool warmed by one untimed run, then {rounds} "
        "interleaved rounds per setup, medians shown",
        f"- step: {n:,} turns of a pure-Python loop ≈ {STEP_SECONDS} s; {CALLS} calls fanned out "
        "with `.map()` in one `invoke`",
        "",
        "Produced by `python -m benchmarks.processes` (see README.md). Every result is checked.",
        "",
        "| setup | wall time (s) | range (rounds) |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| `execution={name!r}` | {medians[name]:.3f} | {min(values):.3f}–{max(values):.3f} |")
    lines += [
        "",
        f"Ratio process / thread (of the medians): **{ratio:.2f}** (target ≤ {TARGET}: {met}); the "
        f"median of each round's own ratio: {paired:.2f}.",
    ]
    (HERE / "processes.md").write_text("\n".join(lines) + "\n")


def _loads(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.1f}" for x in values)


if __name__ == "__main__":
    main()
