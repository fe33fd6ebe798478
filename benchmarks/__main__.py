"""``python -m benchmarks [--quick]``: measure permflow against its baselines and peers.

Every system runs in a worker subprocess of its own (peers in virtualenvs
under ``benchmarks/.venvs/``). Rounds are interleaved across systems
(A B C, C B A, A B C …), and so are the rounds of workloads judged against
each other (``w3_sync`` against ``w3_seq``), so that drift of a noisy machine
hits all alike; each row reports the median of its rounds. Every run's result is checked; a
wrong result fails the row and the exit status.

``--quick`` runs permflow, the asyncio baseline and (when reachable) the
Redis rows with small n, checks correctness and exits non-zero on any wrong
result. It never judges speed, so it prints no targets.

Redis is checked before anything runs (``systems/_redis_common.py``): when it
does not answer, its rows are "not available", or, under ``CI=true``, the run
fails at once with one line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _machine, _report, _venvs
from ._worker import MARK
from ._workloads import BASELINES, Workload, workloads
from .systems import _redis_common

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Spec:
    name: str
    module: str
    env: str  # "local" (this interpreter) or a virtualenv of _venvs.ENVIRONMENTS
    peer: bool
    what: str
    family: str = "memory"  # or "redis": which workloads it takes part in


SYSTEMS = [
    Spec(
        "asyncio",
        "asyncio_baseline",
        "local",
        False,
        "plain asyncio.Queue pipeline, fresh per run (baseline)",
    ),
    Spec("permflow", "permflow_memory", "local", False, "permflow, InMemoryPubSubConnection"),
    Spec("langgraph-stategraph", "langgraph_stategraph", "peers", True, "LangGraph StateGraph"),
    Spec("langgraph-pregel", "langgraph_pregel", "peers", True, "LangGraph Pregel with channels"),
    Spec("lcel", "lcel", "peers", True, "LangChain LCEL: RunnableLambda sequences, RunnableParallel"),
    Spec("permchain", "permchain_topics", "permchain", True, "permchain 0.0.3 topics"),
    Spec("redis-floor", "redis_floor", "local", False, "redis-py asyncio commands done by hand", "redis"),
    Spec("permflow-redis", "permflow_redis", "local", False, "permflow, RedisPubSubConnection", "redis"),
]

REQUEST_TIMEOUT = 240.0
SLOW_BUDGET = 3.0
#: MEM runs the same count for every system; one still running after this
#: many seconds stops there, and its row says how many invokes it did.
MEM_SECONDS_LIMIT = 600.0


class Worker:
    def __init__(self, spec: Spec, python: str) -> None:
        self.spec = spec
        self.proc = subprocess.Popen(
            [python, "-m", "benchmarks._worker", spec.module],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        hello = self._read(120.0)["hello"]
        self.available: bool = hello["available"]
        self.reason: str = hello.get("reason", "")
        self.versions: dict[str, str] = hello.get("versions", {})
        self.family: str = hello.get("family", "")

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close(kill=True)
                raise TimeoutError(f"worker {self.spec.name} gave no answer within {timeout:.0f} s")
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                tail = " | ".join(err.strip().splitlines()[-3:])
                raise RuntimeError(f"worker {self.spec.name} exited: {tail}")
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])

    def request(self, req: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            return self._read(timeout)
        except (OSError, RuntimeError, TimeoutError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _python(spec: Spec, install: bool) -> str:
    if spec.env == "local":
        return sys.executable
    return _venvs.python_for(spec.env, create=install)


def _request(wl: Workload, quick: bool) -> dict[str, Any]:
    return {
        "key": wl.key,
        "primitive": wl.primitive,
        "args": list(wl.args),
        "mode": wl.mode,
        "count": wl.count,
        "warmup": 3 if quick else (50 if wl.count else 20),
        "round_seconds": 0.01 if quick else 0.2,
        "units_per_run": wl.units_per_run,
        "seconds_limit": MEM_SECONDS_LIMIT,
    }


def _record(cell: dict[str, Any], reply: dict[str, Any]) -> None:
    if reply.get("ok"):
        cell.setdefault("rounds", []).append(reply["seconds_per_unit"])
        cell["reps"] = reply["reps"]
        cell["spent"] = cell.get("spent", 0.0) + reply["elapsed"]
        cell["note"] = reply.get("note", "")
    else:
        cell["error"] = reply["error"]
        if reply.get("traceback"):
            cell["traceback"] = reply["traceback"]
        cell["unsupported"] = bool(reply.get("unsupported"))


def _enough(cell: dict[str, Any]) -> bool:
    """Slow systems stop after 3 rounds once they have spent SLOW_BUDGET seconds."""
    return len(cell.get("rounds", ())) >= 3 and cell.get("spent", 0.0) > SLOW_BUDGET


def _memory(data: dict[str, Any], wl: Workload, workers: list[Worker], pythons: dict[str, str]) -> None:
    """MEM: every in-memory system does the same ``wl.count`` invokes, each in a
    fresh worker. Resident memory does not depend on the CPU a process gets, so
    as many systems run at once as there are cores, the slowest first."""
    quick = data["meta"]["quick"]
    specs = [w.spec for w in workers if w.family == "memory"]
    w3 = data["results"].get("w3_sync", {})
    specs.sort(key=lambda spec: -(_report.median(w3.get(spec.name, {})) or 0.0))

    def measure(spec: Spec) -> None:
        t0 = time.perf_counter()
        try:
            fresh = Worker(spec, pythons[spec.name])
        except (RuntimeError, TimeoutError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            reply = fresh.request(_request(wl, quick), timeout=MEM_SECONDS_LIMIT + 120)
            fresh.close()
        data["mem"][spec.name] = reply if reply.get("ok") else {"error": reply["error"]}
        print(f"  {wl.label} [{spec.name}]: {time.perf_counter() - t0:.1f} s", flush=True)

    at_once = max(1, min(os.cpu_count() or 1, len(specs)))
    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        list(pool.map(measure, specs))
    # Rows in the order of the systems, whichever finished first.
    data["mem"] = {spec.name: data["mem"][spec.name] for spec in SYSTEMS if spec.name in data["mem"]}
    data["meta"] |= {"mem_at_once": at_once, "mem_seconds_limit": MEM_SECONDS_LIMIT}


def _chosen(args: argparse.Namespace) -> tuple[list[Spec], list[Workload]]:
    systems = [s for s in SYSTEMS if (not s.peer or args.peers) and (not args.only or s.name in args.only)]
    return systems, [w for w in workloads(args.quick) if not args.workloads or w.key in args.workloads]


def _redis_missing(args: argparse.Namespace) -> str | None:
    """Why the Redis rows cannot run, when some are chosen and Redis does not answer."""
    chosen, wls = _chosen(args)
    wanted = any(_takes_part(s.name, s.family, wl) for s in chosen for wl in wls if s.family == "redis")
    return _redis_common.missing() if wanted else None


def run(args: argparse.Namespace, redis_missing: str | None = None) -> dict[str, Any]:
    quick = args.quick
    chosen, wls = _chosen(args)
    data: dict[str, Any] = {
        "meta": {
            **_machine.describe(),
            "quick": quick,
            "rounds": args.rounds,
        },
        "systems": {},
        "results": {},
        "mem": {},
    }
    started = time.perf_counter()
    pythons: dict[str, str] = {}
    workers: list[Worker] = []
    for spec in chosen:
        if spec.family == "redis" and redis_missing:
            data["systems"][spec.name] = {"available": False, "reason": redis_missing, "what": spec.what}
            print(f"[{spec.name}] not available: {redis_missing}", flush=True)
            continue
        try:
            pythons[spec.name] = _python(spec, args.install)
            worker = Worker(spec, pythons[spec.name])
        except (_venvs.Unavailable, RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
            data["systems"][spec.name] = {"available": False, "reason": str(exc), "what": spec.what}
            print(f"[{spec.name}] not available: {exc}", flush=True)
            continue
        data["systems"][spec.name] = {
            "available": worker.available,
            "reason": worker.reason,
            "versions": worker.versions,
            "what": spec.what,
            "family": worker.family,
        }
        if worker.available:
            workers.append(worker)
            print(f"[{spec.name}] ready: {worker.versions}", flush=True)
        else:
            print(f"[{spec.name}] not available: {worker.reason}", flush=True)
            worker.close()
    try:
        for linked in _round_groups([wl for wl in wls if wl.mode != "mem"]):
            t0 = time.perf_counter()
            for wl in linked:
                cells = data["results"].setdefault(wl.key, {})
                for spec in chosen:
                    info = data["systems"][spec.name]
                    if not info["available"] and _takes_part(spec.name, spec.family, wl):
                        cells[spec.name] = {"error": info["reason"], "unavailable": True}
            for r in range(args.rounds):
                for wl in linked:
                    cells = data["results"][wl.key]
                    group = [w for w in workers if _takes_part(w.spec.name, w.family, wl)]
                    req = _request(wl, quick)
                    for worker in group if r % 2 == 0 else reversed(group):
                        cell = cells.setdefault(worker.spec.name, {})
                        if cell.get("error") or _enough(cell):
                            continue
                        _record(cell, worker.request(req))
            labels = " + ".join(wl.label for wl in linked)
            print(f"  {labels}: {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        for worker in workers:
            worker.close()
    for wl in wls:
        if wl.mode == "mem":
            _memory(data, wl, workers, pythons)
    data["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    data["workloads"] = [w.key for w in wls]
    return data


def _round_groups(wls: list[Workload]) -> list[list[Workload]]:
    """``wls`` in groups whose rounds interleave: a workload judged against
    another chosen one (``w3_sync`` against permflow's ``w3_seq``) is measured
    in the same rounds as it, so that drift of a noisy machine hits both
    sides of the ratio alike."""
    groups: list[list[Workload]] = []
    group_of: dict[str, list[Workload]] = {}
    for wl in wls:
        linked = [b.workload for b in BASELINES.get(wl.key, ()) if b.workload in group_of]
        group = group_of[linked[0]] if linked else []
        if not linked:
            groups.append(group)
        group.append(wl)
        group_of[wl.key] = group
    return groups


def _takes_part(name: str, family: str, wl: Workload) -> bool:
    return family == wl.family and (not wl.only or name in wl.only)


def failures(data: dict[str, Any]) -> list[str]:
    """Rows that failed for a reason other than "not available" / "no such API"."""
    bad = []
    for key, cells in data["results"].items():
        for system, cell in cells.items():
            if cell.get("error") and not cell.get("unavailable") and not cell.get("unsupported"):
                bad.append(f"{key} [{system}]: {cell['error']}")
    for system, cell in data["mem"].items():
        if cell.get("error"):
            bad.append(f"mem [{system}]: {cell['error']}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n, correctness only (for CI)")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default 5, quick 2)")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure LangGraph, LCEL and permchain (default: on, off with --quick)",
    )
    parser.add_argument(
        "--install",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the peers' virtualenvs when missing (default: on)",
    )
    parser.add_argument("--only", nargs="+", metavar="SYSTEM", help="measure only these systems")
    parser.add_argument(
        "--workloads", nargs="+", metavar="KEY", help="run only these workloads (e.g. w1_async)"
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write results.md/.json/.png (default: on, off with --quick)",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.peers = (not args.quick) if args.peers is None else args.peers
    args.write = (not args.quick) if args.write is None else args.write

    redis_missing = _redis_missing(args)
    if redis_missing and _redis_common.under_ci():
        print(f"python -m benchmarks: {redis_missing} (CI=true: the Redis rows must run)", file=sys.stderr)
        return 1
    data = run(args, redis_missing)
    wls = [w for w in workloads(args.quick) if w.key in data["workloads"]]
    table = _report.rows(data, wls)
    print()
    print(_report.text_table(table, targets=not args.quick))
    print(
        f"\n{len(table)} rows in {data['meta']['seconds']} s; ratios are cost / baseline cost "
        "(>1 means slower than the baseline)."
    )
    if args.write:
        from ._output import write

        for line in write(data, table):
            print(line)
    bad = failures(data)
    if bad:
        print("\nFAILED:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
