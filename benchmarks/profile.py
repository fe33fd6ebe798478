"""Where permflow's time goes: ``python -m benchmarks.profile [w1_async|w1_sync|w2|w3_seq|w3_batch]``.

Runs one workload of permflow in memory under cProfile (after the same
warm-up as the benchmark) and prints the functions with the most own time,
as file:line, then the ones with the most cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
from typing import Any

from ._workloads import workloads
from .systems.permflow_memory import System


def _build(key: str) -> tuple[Any, int, str]:
    wl = next(w for w in workloads(quick=False) if w.key == key)
    pipeline = getattr(System(), wl.primitive)(*wl.args)
    reps = wl.count or 300
    return pipeline, reps, wl.mode


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    parser.add_argument("workload", nargs="?", default="w1_async")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    pipeline, reps, mode = _build(args.workload)
    loop = asyncio.new_event_loop()

    def go() -> None:
        if mode == "many":
            results = loop.run_until_complete(pipeline.run_many(list(range(reps))))
        elif pipeline.is_async:

            async def seq() -> list[Any]:
                return [await pipeline.run(x) for x in range(reps)]

            results = loop.run_until_complete(seq())
        else:
            results = [pipeline.run(x) for x in range(reps)]
        assert results == [pipeline.expect(x) for x in range(reps)]

    go()  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    go()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
