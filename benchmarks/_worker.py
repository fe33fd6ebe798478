"""A worker: one system in its own process, answering measurement requests.

``python -m benchmarks._worker SYSTEM`` loads ``benchmarks.systems.SYSTEM``,
says hello (versions, or why it is unavailable), then reads one JSON request
per line on stdin and answers one JSON line on stdout (prefixed with
``MARK``, so that stray prints of a library cannot be mistaken for answers).

A request names a workload; the first request for a workload builds the
program and warms it up (untimed, but checked); each request is one round.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import math
import sys
import time
import traceback
from typing import Any

from ._pipeline import NotSupported, Pipeline, rss_kib

MARK = "@@bench "


class WrongResult(AssertionError):
    pass


def _check(pipeline: Pipeline, inputs: Any, results: list[Any]) -> None:
    for x, got in zip(inputs, results, strict=True):
        want = pipeline.expect(x)
        if got != want:
            raise WrongResult(f"input {x!r}: got {got!r}, expected {want!r}")


class Worker:
    def __init__(self, system: Any) -> None:
        self.system = system
        self.loop = asyncio.new_event_loop()
        self.built: dict[str, tuple[Pipeline, int]] = {}
        self.next_input = 0

    def inputs(self, n: int) -> range:
        start = self.next_input
        self.next_input += n
        return range(start, start + n)

    def call(self, pipeline: Pipeline, xs: range) -> list[Any]:
        """Run ``pipeline`` sequentially on ``xs``; results collected, not checked."""
        run = pipeline.run
        if pipeline.is_async:

            async def go() -> list[Any]:
                return [await run(x) for x in xs]

            return self.loop.run_until_complete(go())
        return [run(x) for x in xs]

    def timed(self, pipeline: Pipeline, xs: range) -> float:
        gc.collect()
        run = pipeline.run
        if pipeline.is_async:

            async def go() -> tuple[float, list[Any]]:
                started = time.perf_counter()
                out = [await run(x) for x in xs]
                return time.perf_counter() - started, out

            elapsed, results = self.loop.run_until_complete(go())
        else:
            started = time.perf_counter()
            results = [run(x) for x in xs]
            elapsed = time.perf_counter() - started
        _check(pipeline, xs, results)
        return elapsed

    def timed_many(self, pipeline: Pipeline, xs: range) -> float:
        if pipeline.run_many is None:
            raise NotSupported("no concurrent/batch API")
        run_many = pipeline.run_many
        gc.collect()

        async def go() -> tuple[float, list[Any]]:
            started = time.perf_counter()
            out = await run_many(list(xs))
            return time.perf_counter() - started, out

        elapsed, results = self.loop.run_until_complete(go())
        _check(pipeline, xs, results)
        return elapsed

    def build(self, req: dict[str, Any]) -> tuple[Pipeline, int]:
        key = req["key"]
        if key in self.built:
            return self.built[key]
        factory = getattr(self.system, req["primitive"], None)
        if factory is None:
            raise NotSupported(f"no {req['primitive']!r} program")
        made = factory(*req["args"])
        pipeline = self.loop.run_until_complete(made) if asyncio.iscoroutine(made) else made
        # Warm up (checked, untimed): lets caches and permflow's sync-step
        # policy settle before anything is measured.
        warm = req["warmup"]
        budget = req["round_seconds"]
        if req["mode"] == "many":
            # One batch of ``count`` runs at once; a round is as many batches,
            # one after another, as take the round's time (≥ 1).
            self.timed_many(pipeline, self.inputs(min(warm, req["count"])))
            batch = self.timed_many(pipeline, self.inputs(req["count"]))
            reps = req["count"] * max(1, math.ceil(budget / max(batch, 1e-9)))
        else:
            _check(pipeline, xs := self.inputs(warm), self.call(pipeline, xs))
            reps = self._calibrate(pipeline, budget) if req["mode"] == "each" else 0
            reps = max(reps, req["count"] or 0)  # a fixed count is a least count
        self.built[key] = (pipeline, reps)
        return pipeline, reps

    def _calibrate(self, pipeline: Pipeline, budget: float) -> int:
        """How many sequential runs take ``budget`` seconds, from probes that
        double until one takes a quarter of it (a short probe is mostly noise)."""
        probe = 3
        while True:
            took = self.timed(pipeline, self.inputs(probe))
            if took >= budget / 4 or probe >= 1_000_000:
                break
            probe *= 2
        return max(3, math.ceil(budget * probe / max(took, 1e-9)))

    def measure(self, req: dict[str, Any]) -> dict[str, Any]:
        pipeline, reps = self.build(req)
        if req["mode"] == "mem":
            return self.memory(pipeline, req["count"], req["seconds_limit"])
        if req["mode"] == "many":
            size = req["count"]
            elapsed = sum(self.timed_many(pipeline, self.inputs(size)) for _ in range(reps // size))
            return {
                "seconds_per_unit": elapsed / reps,
                "reps": reps,
                "elapsed": elapsed,
                "note": _note(pipeline),
            }
        elapsed = self.timed(pipeline, self.inputs(reps))
        units = reps * req["units_per_run"]
        return {
            "seconds_per_unit": elapsed / units,
            "reps": reps,
            "elapsed": elapsed,
            "note": _note(pipeline),
        }

    def memory(self, pipeline: Pipeline, count: int, seconds_limit: float) -> dict[str, Any]:
        """RSS sampled 20 times over ``count`` sequential runs, or over those done
        when ``seconds_limit`` has passed (then ``invokes`` < ``count``)."""
        gc.collect()
        start, _ = rss_kib()
        samples = [start]
        step = max(1, count // 20)
        done = 0
        started = time.perf_counter()
        while done < count and time.perf_counter() - started < seconds_limit:
            n = min(step, count - done)
            xs = self.inputs(n)
            _check(pipeline, xs, self.call(pipeline, xs))
            done += n
            samples.append(rss_kib()[0])
        elapsed = time.perf_counter() - started
        end, hwm = rss_kib()
        return {
            "start_kib": start,
            "end_kib": end,
            "peak_kib": max(samples),
            "hwm_kib": hwm,
            "samples_kib": samples,
            "invokes": done,
            "count": count,
            "seconds": elapsed,
            "note": _note(pipeline),
        }


def _note(pipeline: Pipeline) -> str:
    return pipeline.note() if callable(pipeline.note) else pipeline.note


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(name: str) -> None:
    try:
        module = importlib.import_module(f"benchmarks.systems.{name}")
        system = module.System()
        worker = Worker(system)
        worker.loop.run_until_complete(system.start())
    except Exception as exc:
        _reply({"hello": {"available": False, "reason": f"{type(exc).__name__}: {exc}"}})
        return
    _reply({"hello": {"available": True, "versions": system.versions(), "family": system.family}})
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                _reply({"ok": True, **worker.measure(req)})
            except NotSupported as exc:
                _reply({"ok": False, "unsupported": True, "error": str(exc)})
            except Exception as exc:
                detail = traceback.format_exc(limit=6)
                _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": detail})
    finally:
        worker.loop.run_until_complete(system.stop())
        worker.loop.close()


if __name__ == "__main__":
    main(sys.argv[1])
