"""Throughput of worker processes on Redis: ``python -m benchmarks.workers [--quick]``.

Two comparisons, each measured in one run with rounds interleaved (A B, B A …):

* **cpu** — a sync step burning ~20 ms in a pure-Python loop: runs/s with one
  worker process vs two (``--concurrency 10`` each). Target: two workers ≥ 1.6×.
* **io** — an async step awaiting ``anyio.sleep(0.05)``: runs/s of one worker
  with ``--concurrency 100`` vs ``--concurrency 1``. Target ≥ 50×.

Workers are real ``python -m permflow worker benchmarks.workers:cpu|io``
subprocesses; the client (this process) submits each round with
``PubSub.with_workers().abatch`` and checks every result. For concurrency
100 the client keeps 200 runs in flight: each run it follows waits for
changes on a pooled Redis connection (100 per loop), so submitting all 600 at
once would make them queue on the client. Each worker set has
its own key prefix, deleted at the end. Redis is found at
``PERMFLOW_BENCH_REDIS_URL``, else ``PERMFLOW_TEST_REDIS_URL``, else
``redis://127.0.0.1:6379/0``, and checked before anything starts: without it
nothing is measured ("not available"), and under ``CI=true`` that is a failure.

A full run writes its figures, with the date and the machine, to
``benchmarks/workers.md`` and ``benchmarks/workers.json``. ``--quick`` runs one
small round of each setup, checks the results and exits non-zero on a wrong
one; it never judges speed, so it prints no targets and writes nothing.
Unlike the rest of the package, this module imports permflow (workers load its
PubSubs from here).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from permflow import PermflowError, PubSub, RedisPubSubConnection, Topic

from . import _machine, _workers_output
from .systems import _redis_common

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m benchmarks.workers"
CPU_MS = 20.0
IO_SECONDS = 0.05


def burn(job: list[int]) -> int:
    """``[i, loops]`` → ``i`` plus a checksum of a pure-Python loop (the CPU workload)."""
    i, loops = job
    acc = 0
    for k in range(loops):
        acc = (acc + k * k) % 1_000_003
    return i * 1_000_003 + acc


async def wait(i: int) -> int:
    """The I/O workload: a 50 ms await."""
    await anyio.sleep(IO_SECONDS)
    return i + 1


cpu = PubSub(Topic.IN.subscribe() | burn | Topic.OUT.publish())
io = PubSub(Topic.IN.subscribe() | wait | Topic.OUT.publish())


def loops_for(milliseconds: float) -> int:
    """How many loop turns of ``burn`` take ``milliseconds`` here (best of 5)."""
    probe = 200_000
    best = min(_timed(lambda: burn([0, probe])) for _ in range(5))
    return max(1000, int(probe * milliseconds / 1000 / best))


def _timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


@dataclass
class Setup:
    """One measured configuration: a worker set on its own prefix, and a client."""

    label: str
    target: str
    workers: int
    concurrency: int
    runs: int
    inputs: Callable[[int, int], list[Any]]
    expect: Callable[[Any], Any]
    in_flight: int | None = None  # the client's abatch(max_concurrency=...)
    rates: list[float] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"permflow-bench-{uuid.uuid4().hex[:10]}")


@asynccontextmanager
async def serving(setup: Setup, url: str) -> AsyncIterator[PubSub]:
    """Start ``setup``'s workers, wait until they take work, yield a client; stop them after."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    processes: list[anyio.abc.Process] = []
    connection = RedisPubSubConnection.from_url(url, prefix=setup.prefix)
    pubsub = cpu if setup.target == "cpu" else io
    try:
        async with anyio.create_task_group() as tg:
            for k in range(setup.workers):
                name = f"{setup.label}-{k + 1}"
                command = [
                    sys.executable, "-m", "permflow", "worker", f"benchmarks.workers:{setup.target}",
                    "--redis", url, "--prefix", setup.prefix, "--concurrency", str(setup.concurrency),
                    "--name", name, "--log-level", "info",
                ]  # fmt: skip
                process = await anyio.open_process(command, cwd=ROOT, env=env, stdout=None)
                processes.append(process)
                started = anyio.Event()
                tg.start_soon(_drain, process, f"worker {name} started", started)
                with anyio.fail_after(30):
                    await started.wait()
            try:
                yield pubsub.with_connection(connection).with_workers()
            finally:
                for process in processes:
                    process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(15, shield=True):
                    for process in processes:
                        await process.wait()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
        await _delete_keys(connection, url, setup.prefix)


async def _drain(process: anyio.abc.Process, marker: str, seen: anyio.Event) -> None:
    """Read a worker's log as it comes; set ``seen`` at the line containing ``marker``."""
    assert process.stderr is not None
    text = ""
    async for chunk in process.stderr:
        if not seen.is_set():
            text += chunk.decode(errors="replace")
            if marker in text:
                seen.set()


async def _delete_keys(connection: RedisPubSubConnection, url: str, prefix: str) -> None:
    import redis.asyncio

    await connection.aclose()
    raw = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in raw.scan_iter(match=f"{{{prefix}:*", count=1000)]
        await raw.delete(f"{{{prefix}}}:work", *keys)
    finally:
        await raw.aclose()


async def one_round(setup: Setup, client: PubSub, loops: int, *, timed: bool = True) -> None:
    """One batch of ``setup.runs`` runs; every result is checked."""
    inputs = setup.inputs(setup.runs, loops)
    start = time.perf_counter()
    results = await client.abatch(inputs, max_concurrency=setup.in_flight)
    elapsed = time.perf_counter() - start
    for x, result in zip(inputs, results, strict=True):
        if result != [setup.expect(x)]:
            raise AssertionError(
                f"{setup.label}: input {x!r} gave {result!r}, expected {[setup.expect(x)]!r}"
            )
    if timed:
        setup.rates.append(setup.runs / elapsed)


def _expect_cpu(job: list[int]) -> int:
    return burn(job)


def _setups(quick: bool) -> tuple[list[Setup], list[Setup]]:
    def cpu_inputs(n: int, loops: int) -> list[Any]:
        return [[i, loops] for i in range(n)]

    def io_inputs(n: int, loops: int) -> list[Any]:
        return list(range(n))

    def io_expect(i: int) -> int:
        return i + 1

    scale = 0.2 if quick else 1.0
    cpu_setups = [
        Setup("cpu-1w", "cpu", 1, 10, int(60 * scale), cpu_inputs, _expect_cpu),
        Setup("cpu-2w", "cpu", 2, 10, int(120 * scale), cpu_inputs, _expect_cpu),
    ]
    io_setups = [
        Setup("io-c1", "io", 1, 1, int(40 * scale), io_inputs, io_expect),
        Setup("io-c100", "io", 1, 100, int(2400 * scale), io_inputs, io_expect, in_flight=200),
    ]
    return cpu_setups, io_setups


async def compare(pair: list[Setup], url: str, loops: int, rounds: int) -> None:
    """Measure the two setups of ``pair`` with interleaved rounds (A B, B A, …)
    after one untimed warm-up round each (imports, connections, threads)."""
    a, b = pair
    async with serving(a, url) as client_a, serving(b, url) as client_b:
        clients = {a.label: client_a, b.label: client_b}
        for setup in pair:
            await one_round(setup, clients[setup.label], loops, timed=False)
        for k in range(rounds):
            for setup in (a, b) if k % 2 == 0 else (b, a):
                await one_round(setup, clients[setup.label], loops)


def report(pair: list[Setup], what: str, target: float, quick: bool) -> bool:
    """Print ``pair``'s rates and their ratio; in a full run, whether it meets ``target``."""
    for setup in pair:
        rates = setup.rates
        print(
            f"  {setup.label:8}  {setup.workers} worker(s) × concurrency {setup.concurrency:<3}  "
            f"{statistics.median(rates):8.1f} runs/s  (range {min(rates):.1f}–{max(rates):.1f}, "
            f"{len(rates)} rounds of {setup.runs})"
        )
    ratio = statistics.median(pair[1].rates) / statistics.median(pair[0].rates)
    if quick:  # one small round: the ratio is shown, not judged
        print(f"  {what}: {ratio:.2f}×")
        return True
    verdict = "ok" if ratio >= target else "BELOW TARGET"
    print(f"  {what}: {ratio:.2f}×  (target ≥ {target:g}×)  {verdict}")
    return ratio >= target


#: (key, heading, what the ratio compares, target): the two comparisons, in order.
COMPARISONS = [
    ("cpu", "cpu-bound step (sync, ~20 ms)", "2 workers vs 1", 1.6),
    ("io", "i/o-bound step (await anyio.sleep(0.05))", "concurrency 100 vs 1", 50.0),
]


async def main_async(args: argparse.Namespace) -> int:
    rounds = 1 if args.quick else args.rounds
    loops = loops_for(CPU_MS)
    print(
        f"permflow workers on {args.redis}, {os.cpu_count()} cores; "
        f"cpu step: {loops} loop turns ≈ {CPU_MS:g} ms"
    )
    meta = {**_machine.describe(), "redis": await _server_version(args.redis), "rounds": rounds}
    meta |= {"cpu_step_loops": loops, "cpu_step_ms": CPU_MS}
    pairs = dict(zip(("cpu", "io"), _setups(args.quick), strict=True))
    met = []
    for key, heading, what, target in COMPARISONS:
        print(f"{heading}:")
        await compare(pairs[key], args.redis, loops, rounds)
        met.append(report(pairs[key], what, target, args.quick))
    if args.quick:
        print("quick run: every result checked; speed not judged")
        return 0
    if not all(met):
        print("some ratios are below their targets (see above)")
    for path in write(meta, pairs):
        print(f"wrote {path}")
    return 0


async def _server_version(url: str) -> str:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        return str((await client.info("server"))["redis_version"])
    finally:
        await client.aclose()


def figures(meta: dict[str, Any], pairs: dict[str, list[Setup]]) -> dict[str, Any]:
    """A full run's figures, as written to workers.json."""
    out: dict[str, Any] = {"meta": meta, "comparisons": []}
    for key, heading, what, target in COMPARISONS:
        setups = [
            {
                "label": s.label,
                "workers": s.workers,
                "concurrency": s.concurrency,
                "runs_per_round": s.runs,
                "client_in_flight": s.in_flight,
                "runs_per_second": statistics.median(s.rates),
                "rounds": s.rates,
            }
            for s in pairs[key]
        ]
        ratio = setups[1]["runs_per_second"] / setups[0]["runs_per_second"]
        out["comparisons"].append(
            {"key": key, "step": heading, "what": what, "ratio": ratio}
            | {"target": target, "met": ratio >= target, "setups": setups}
        )
    return out


def write(meta: dict[str, Any], pairs: dict[str, list[Setup]]) -> list[Path]:
    """Write a full run's figures to workers.json and workers.md."""
    return _workers_output.write(figures(meta, pairs))


def main() -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small round each; check results only")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per setup (default 5)")
    parser.add_argument(
        "--redis",
        default=_redis_common.redis_url(),
        metavar="URL",
        help="default: $PERMFLOW_BENCH_REDIS_URL, $PERMFLOW_TEST_REDIS_URL or redis://127.0.0.1:6379/0",
    )
    args = parser.parse_args()
    raise SystemExit(run(args))


def run(args: argparse.Namespace) -> int:
    """Check Redis first, then measure; every failure is one line on stderr."""
    missing = _redis_common.missing(args.redis)
    if missing and _redis_common.under_ci():
        print(f"{PROG}: {missing} (CI=true: the worker benchmark must run)", file=sys.stderr)
        return 1
    if missing:
        print(f"{PROG}: not available: {missing}; nothing measured")
        return 0
    try:
        return anyio.run(main_async, args, backend="asyncio")
    except AssertionError as exc:
        print(f"{PROG}: wrong result: {exc}", file=sys.stderr)
    except PermflowError as exc:  # e.g. Redis went away during the run
        print(f"{PROG}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
