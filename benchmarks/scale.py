"""How permflow's costs grow with the work: ``python -m benchmarks.scale [--quick]``.

Three questions, each answered in fresh child processes (so that one
measurement's memory cannot hide in another's):

* **concurrent runs** — the time per run of the 3-process chain (``x + 1``
  three times) when 1, 10, 100 and 1,000 runs are in flight at once
  (``abatch(max_concurrency=c)``), in memory and on Redis. Flat (or falling)
  is good: a run should not cost more because others are running.
* **fan-out + join** — one run publishing n items (``publish_each``), a
  process adding one to each, a join summing them: seconds, µs per message
  and peak RSS for n = 1,000, 3,000 and 10,000, in memory. The slope of the
  cost per message against n (µs per message per 1,000 messages, least
  squares) should be near zero.
* **finished runs** — RSS after 1,000, 5,000 and 20,000 finished runs
  (sequential ``ainvoke``, fresh state ids, which are deleted when their run
  ends): it must not grow with the number of finished runs.

Redis is found as for the other benchmarks (``PERMFLOW_BENCH_REDIS_URL``,
``PERMFLOW_TEST_REDIS_URL``, else 127.0.0.1:6379); each Redis measurement has
its own key prefix, deleted afterwards; without Redis the Redis rows are "not
available" (a failure under ``CI=true``). A full run writes
``benchmarks/scale.md`` and ``scale.json``; ``--quick`` uses small sizes,
checks every result and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from . import _machine
from .systems import _redis_common

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 10, 100, 1000)
FAN_OUT = (1000, 3000, 10000)
FINISHED = (1000, 5000, 20000)


def _chain(connection: Any = None) -> Any:
    from permflow import PubSub, Topic

    one, two = Topic("one"), Topic("two")
    return PubSub(
        Topic.IN.subscribe() | (lambda x: x + 1) | one.publish(),
        one.subscribe() | (lambda x: x + 1) | two.publish(),
        two.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(),
        connection=connection,
    )


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- children: each prints one JSON line --------------------------------------------


async def _concurrent(store: str, c: int, runs: int) -> dict[str, Any]:
    from permflow import RedisPubSubConnection

    connection = None
    if store == "redis":
        connection = RedisPubSubConnection.from_url(
            _redis_common.redis_url(), prefix=_redis_common.unique_prefix()
        )
    pubsub = _chain(connection)
    try:
        await pubsub.abatch(list(range(50)), max_concurrency=c)  # warm up (sync steps go inline)
        inputs = list(range(runs))
        start = time.perf_counter()
        results = await pubsub.abatch(inputs, max_concurrency=c)
        elapsed = time.perf_counter() - start
        if results != [[x + 3] for x in inputs]:
            raise AssertionError(f"{store} c={c}: wrong results")
        return {"us_per_run": elapsed / runs * 1e6}
    finally:
        if connection is not None:
            await _drop_prefix(connection)


async def _drop_prefix(connection: Any) -> None:
    import redis.asyncio

    prefix = connection.prefix
    await connection.aclose()
    raw = redis.asyncio.Redis.from_url(_redis_common.redis_url())
    try:
        keys = [k async for k in raw.scan_iter(match=f"{{{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await raw.delete(*keys[start : start + 500])
    finally:
        await raw.aclose()


async def _fan_out(n: int) -> dict[str, Any]:
    from permflow import PubSub, Topic

    items, done = Topic("items"), Topic("done")
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda k: range(k)) | items.publish_each(),
        items.subscribe() | (lambda x: x + 1) | done.publish(),
        done.join() | sum | Topic.OUT.publish(),
    )
    await pubsub.ainvoke(10)  # warm up
    start = time.perf_counter()
    out = await pubsub.ainvoke(n)
    elapsed = time.perf_counter() - start
    if out != [n * (n + 1) // 2]:
        raise AssertionError(f"fan-out of {n}: got {out}")
    messages = 2 * n + 2  # in, n items, n done, out
    return {"seconds": elapsed, "us_per_message": elapsed / messages * 1e6, "peak_rss_mib": _peak_rss_mib()}


async def _finished(counts: list[int]) -> dict[str, Any]:
    pubsub = _chain()
    rss: dict[str, float] = {}
    done = 0
    for target in counts:
        while done < target:
            assert await pubsub.ainvoke(done) == [done + 3]
            done += 1
        rss[str(target)] = _rss_mib()
    return {"rss_mib": rss}


def _child(args: list[str]) -> None:
    kind = args[0]
    if kind == "concurrent":
        result = anyio.run(_concurrent, args[1], int(args[2]), int(args[3]))
    elif kind == "fan_out":
        result = anyio.run(_fan_out, int(args[1]))
    else:
        result = anyio.run(_finished, [int(a) for a in args[1:]])
    print(json.dumps(result))


def _run_child(*args: Any) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--child", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, results checked only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    rounds = 1 if args.quick else args.rounds
    no_redis = _redis_common.missing()
    if no_redis and _redis_common.under_ci():
        raise SystemExit(f"benchmarks.scale: {no_redis}")
    stores = ["memory"] + ([] if no_redis else ["redis"])
    report: dict[str, Any] = {"concurrent": {}, "fan_out": {}, "finished": {}}

    for store in stores:
        for c in CONCURRENCY:
            runs = max(c, 100) if args.quick else max(3 * c, 2000 if store == "memory" else 1000)
            values = [_run_child("concurrent", store, c, runs)["us_per_run"] for _ in range(rounds)]
            report["concurrent"].setdefault(store, {})[str(c)] = statistics.median(values)
            print(f"{store:6} {c:5} concurrent runs: {statistics.median(values):8.1f} µs per run", flush=True)
    if no_redis:
        print(f"redis: not available ({no_redis})")

    sizes = [100, 300] if args.quick else list(FAN_OUT)
    for n in sizes:
        rows = [_run_child("fan_out", n) for _ in range(rounds)]
        row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        report["fan_out"][str(n)] = row
        print(f"fan-out of {n:6}: {row['seconds']:.3f} s, {row['us_per_message']:.1f} µs/message, "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    per_message = [report["fan_out"][str(n)]["us_per_message"] for n in sizes]
    report["fan_out_slope"] = _slope([n / 1000 for n in sizes], per_message)
    print(f"cost per message: slope {report['fan_out_slope']:+.2f} µs per 1,000 messages")

    counts = [200, 400] if args.quick else list(FINISHED)
    report["finished"] = _run_child("finished", *counts)["rss_mib"]
    first, last = report["finished"][str(counts[0])], report["finished"][str(counts[-1])]
    print(f"RSS after {counts[0]:,} / {counts[-1]:,} finished runs: {first:.1f} / {last:.1f} MiB")
    if args.quick:
        return
    meta = _machine.describe()
    (HERE / "scale.json").write_text(json.dumps({"machine": meta, **report}, indent=2) + "\n")
    (HERE / "scale.md").write_text(_markdown(report, rounds, meta, counts, sizes) + "\n")


def _markdown(
    report: dict[str, Any], rounds: int, meta: dict[str, Any], counts: list[int], sizes: list[int]
) -> str:
    lines = [f"How costs grow ({meta['date']}, {_machine.summary(meta)}; median of {rounds} rounds)", ""]
    lines += ["| runs in flight | " + " | ".join(report["concurrent"]) + " |",
              "|---|" + "---|" * len(report["concurrent"])]  # fmt: skip
    for c in CONCURRENCY:
        cells = [f"{report['concurrent'][s][str(c)]:.0f} µs/run" for s in report["concurrent"]]
        lines.append(f"| {c:,} | " + " | ".join(cells) + " |")
    lines += ["", "| fan-out + join of n | seconds | µs per message | peak RSS |", "|---|---|---|---|"]
    for n in sizes:
        row = report["fan_out"][str(n)]
        lines.append(f"| {n:,} | {row['seconds']:.3f} | {row['us_per_message']:.1f} | "
                     f"{row['peak_rss_mib']:.0f} MiB |")  # fmt: skip
    lines += [
        "",
        f"Cost per message against n: slope {report['fan_out_slope']:+.2f} µs per 1,000 messages.",
        "",
    ]
    lines += ["| finished runs | RSS |", "|---|---|"]
    lines += [f"| {int(k):,} | {v:.1f} MiB |" for k, v in report["finished"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
