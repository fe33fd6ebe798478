"""permflow workers against the job queues: ``python -m benchmarks.queues [--quick]``.

The same 3-step pipeline of trivial tasks (``x + 1`` three times) on permflow
workers, Celery (canvas ``chain``), Dramatiq (``pipeline``) and arq (each job
enqueues the next), each configured for throughput as its documentation says
(see ``benchmarks/queue_apps/``). For each system and round:

* a fresh ``redis-server`` of this benchmark's own (no persistence) is
  flushed, and 2 worker processes are started on it;
* 10 warm-up runs go through and are checked;
* ``RUNS`` runs (2,000) are submitted at once; the clock runs from the first
  submission to the last run's end. The job queues' last task pushes its
  value and wall-clock finish time to a Redis list (cheaper than their result
  backends); permflow's client gets each run's output from ``ainvoke``.
  Every run's value is checked and every run must end exactly once.

Reported: runs/s, and p50/p99 end-to-end latency (from the submission of the
batch). A CPU-bound variant runs a ~20 ms pure-Python loop in the middle step
(200 runs). Rounds are interleaved (A B C D, then D C B A …); each row is the
median of its rounds. Target: permflow ≥ 2× the fastest job queue in runs/s
on the trivial pipeline.

Worker setups: permflow — 2 × ``permflow worker --concurrency 100``; Celery —
2 × ``celery worker --pool solo`` (one process each, prefetch multiplier 64);
Dramatiq — ``dramatiq --processes 2 --threads 8``; arq — 2 × arq worker
(``run_worker``, ``max_jobs`` 100, ``poll_delay`` 0.05 s rather than 0.5 s, logging
at WARNING: arq's CLI logs a line per job, and its workers' stderr once filled
an unread pipe and blocked them, which ended the 2,000-run round with no run
done). Workers' stderr goes to a temporary file, shown when a round fails.
The job queues run in their own virtualenvs under ``benchmarks/.venvs/``
(``requirements-<name>.txt``), created on first use.
A full run writes ``benchmarks/queues.md``, ``queues.json`` and ``queues.png``
(drawn with matplotlib from the peers' virtualenv); ``--plot-only`` redraws
``queues.png`` from the existing ``queues.json`` without measuring; ``--quick``
runs one small round, checks results and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis

from . import _queues_output, _venvs
from .faults import Server
from .workers import loops_for

ROOT = Path(__file__).resolve().parents[1]
RUNS, CPU_RUNS, WARMUP = 2000, 200, 10
SYSTEMS = ("permflow", "celery", "dramatiq", "arq")


def _worker_commands(system: str, python: str, url: str) -> list[list[str]]:
    app = f"benchmarks.queue_apps.{system}_app"
    if system == "permflow":
        return [
            [python, "-m", "permflow", "worker", f"{app}:pipeline", "--redis", url, "--prefix", "bench",
             "--concurrency", "100", "--name", f"w{k}", "--log-level", "warning"]
            for k in (1, 2)
        ]  # fmt: skip
    if system == "celery":
        return [
            [python, "-m", "celery", "-A", app, "worker", "--pool", "solo", "-n", f"w{k}@bench",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
            for k in (1, 2)
        ]  # fmt: skip
    if system == "dramatiq":
        return [[python, "-m", "dramatiq", app, "--processes", "2", "--threads", "8"]]
    # arq's CLI logs every job at INFO; started without it, as the others log warnings only
    quiet = (
        "import logging; logging.basicConfig(level=logging.WARNING); from arq.worker import run_worker; "
        f"from {app} import WorkerSettings; run_worker(WorkerSettings)"
    )
    return [[python, "-c", quiet] for _ in (1, 2)]


def _env(url: str, loops: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_REDIS_URL": url,
        "BENCH_LOOPS": str(loops),
    }


def _python(system: str, install: bool) -> str:
    return sys.executable if system == "permflow" else _venvs.python_for(system, create=install)


def _run_permflow(url: str, runs: int, loops: int) -> dict[str, Any]:
    os.environ["BENCH_LOOPS"] = str(loops)
    from permflow import RedisPubSubConnection

    from .queue_apps.permflow_app import pipeline

    async def go() -> dict[str, Any]:
        async with RedisPubSubConnection.from_url(url, prefix="bench") as conn:
            client = pipeline.with_connection(conn).with_workers()
            ends: list[list[float]] = []

            async def one(i: int) -> None:
                (value,) = await client.ainvoke(i)
                ends.append([i, value, time.time()])

            started = time.time()
            async with anyio.create_task_group() as tg:
                for i in range(runs):
                    tg.start_soon(one, i)
            return {"started": started, "ends": ends}

    return anyio.run(go)


def _submit(system: str, python: str, url: str, runs: int, loops: int) -> dict[str, Any]:
    if system == "permflow":
        return _run_permflow(url, runs, loops)
    done = subprocess.run(
        [python, "-m", "benchmarks.queue_apps.submit", system, str(runs)],
        cwd=ROOT, env=_env(url, loops), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{system} submitter failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _check(system: str, result: dict[str, Any], runs: int) -> list[float]:
    """Every run ended exactly once with ``i + 3``; its latencies, in seconds."""
    seen = sorted(int(i) for i, _, _ in result["ends"])
    if seen != list(range(runs)):
        missing = sorted(set(range(runs)) - set(seen))[:5]
        raise AssertionError(f"{system}: {len(seen)} ends for {runs} runs (missing e.g. {missing})")
    for i, value, _ in result["ends"]:
        if value != i + 3:
            raise AssertionError(f"{system}: run {i} gave {value}, expected {i + 3}")
    return sorted(end - result["started"] for _, _, end in result["ends"])


def one_round(system: str, server: Server, runs: int, loops: int, install: bool) -> dict[str, float]:
    python = _python(system, install)
    redis.Redis.from_url(server.url).flushall()
    env = _env(server.url, loops)
    # a file, not a pipe: nobody reads it while they run, and a full pipe would block them
    logs = tempfile.TemporaryFile()
    workers = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs)
        for cmd in _worker_commands(system, python, server.url)
    ]
    try:
        _check(system, _submit(system, python, server.url, WARMUP, loops), WARMUP)
        latencies = _check(system, _submit(system, python, server.url, runs, loops), runs)
    except Exception as exc:
        logs.seek(0)
        exc.add_note(f"{system} workers' stderr (end):\n{logs.read()[-2000:].decode(errors='replace')}")
        raise
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return {
        "runs_per_s": runs / latencies[-1],
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small round of each, results checked only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--no-install", action="store_true", help="never create virtualenvs")
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw queues.png from queues.json, measure nothing"
    )
    args = parser.parse_args()
    if args.plot_only:
        sys.exit(0 if _queues_output.plot(install=not args.no_install) else 1)
    rounds = 1 if args.quick else args.rounds
    scenarios = {
        "trivial": (50 if args.quick else RUNS, 0.0),
        "cpu 20 ms": (10 if args.quick else CPU_RUNS, 20.0),
    }
    available = []
    for system in args.only:
        try:
            _python(system, not args.no_install)
            available.append(system)
        except _venvs.Unavailable as exc:
            print(f"{system}: not available ({exc})")
    server = Server(persistent=False)
    server.start()
    figures: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for scenario, (runs, ms) in scenarios.items():
            loops = loops_for(ms) if ms else 0
            for r in range(rounds):
                order = available if r % 2 == 0 else available[::-1]
                for system in order:
                    row = one_round(system, server, runs, loops, not args.no_install)
                    figures.setdefault(scenario, {}).setdefault(system, []).append(row)
                    rate, p50, p99 = row["runs_per_s"], row["p50_ms"], row["p99_ms"]
                    print(f"{scenario:10} {system:9} round {r + 1}: {rate:8.0f} runs/s  "
                          f"p50 {p50:7.0f} ms  p99 {p99:7.0f} ms", flush=True)  # fmt: skip
    finally:
        server.close()
    table = _queues_output.summarise(figures)
    print(_queues_output.markdown(table, rounds))
    if not args.quick:
        runs = {scenario: n for scenario, (n, _) in scenarios.items()}
        _queues_output.write(table, rounds, runs, install=not args.no_install)


if __name__ == "__main__":
    main()
