"""Named mutants of permflow's core: would the test suite notice each break?

Each mutant is one deliberate bug in a guarantee permflow makes (exactly-once
commits, resume, leases, joins, cycles, retries...). For each, the checkout is
copied to a temporary directory, the bug is written in, and the tests that
should catch it run against the copy. A mutant the tests do not kill is a
guarantee no test protects.

    python tests/mutants.py                  # every mutant (several minutes)
    python tests/mutants.py --quick          # the CI subset (under 2 minutes)
    python tests/mutants.py --list
    python tests/mutants.py --only release_off backoff_flat
    python tests/mutants.py --full-suite     # check that the selections are fair

Exit status: 0 when every mutant was killed, 1 when one survived (unless
``--allow-survivors``), 2 when the check itself is broken: a mutant's original
text is no longer in its file exactly once (the code moved: update the
mutant), a selection fails on the unmutated code, or pytest could not run.

Adding a mutant: copy its ``original`` from the source exactly (it must occur
once in ``file``), keep ``replacement`` a small, plausible bug, say in ``why``
what it breaks, and select the test files that should kill it; a mutant only
the whole suite kills gets ``tests=()``. Not collected by pytest (the file
name does not start with ``test_``); standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_WORKERS = 2
#: A test that failed is run alone up to this many times: a kill (or a baseline
#: failure) counts only if it fails alone too, not just under the load of a run.
SOLO_TRIES = 3
MAX_DESELECTED = 3  # flaky tests deselected before a mutant's result is an error


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in ``file``
    replacement: str
    why: str  # one line: the guarantee this breaks
    tests: tuple[str, ...]  # pytest paths or node ids; () = the whole suite
    k: str | None = None  # an optional ``-k`` expression over ``tests``
    quick: bool = False  # part of ``--quick`` (the CI subset)
    timeout: float = 240.0  # seconds; a hang counts as killed (reported as a timeout)


CONFORMANCE = "tests/test_conformance.py"
REDIS = "tests/test_redis.py"

MUTANTS: tuple[Mutant, ...] = (
    # -- cycles ---------------------------------------------------------------------
    Mutant(
        "exact_repeat_off",
        "permflow/_lineage.py",
        "if name == process and digest == entry[1]:",
        "if False and name == process and digest == entry[1]:",
        "an exact repeat along one lineage must fail at once, not after recursion_limit hops",
        (CONFORMANCE, "tests/test_settings.py", "tests/test_cli.py", "tests/test_examples.py"),
    ),
    Mutant(
        "depth_limit_off",
        "permflow/_delivery.py",
        "if source.depth >= limit:",
        "if False:",
        "a loop that keeps changing its value must fail with CycleError at recursion_limit",
        (CONFORMANCE, "tests/test_settings.py"),
    ),
    # -- retries --------------------------------------------------------------------
    Mutant(
        "retry_rollback_all",
        "permflow/_retry.py",
        "part = ctx.child() if ctx else None",
        "part = ctx",
        "a failed attempt of a retried step discards only its own publishes, not the chain's earlier ones",
        ("tests/test_retry.py", "tests/test_runnable.py", "tests/test_errors.py"),
    ),
    Mutant(
        "backoff_flat",
        "permflow/_retry.py",
        "self.initial_wait * 2.0 ** (attempt - 1)",
        "self.initial_wait",
        "retry waits grow exponentially (initial_wait, 2x, 4x ...)",
        ("tests/test_retry.py", "tests/test_runnable.py", "tests/test_observability.py"),
    ),
    Mutant(
        "backoff_uncapped",
        "permflow/_retry.py",
        "        wait = min(self.max_wait, self.initial_wait * 2.0 ** (attempt - 1))\n"
        "        if self.jitter:\n"
        "            wait += random.uniform(0, wait)\n"
        "        return min(wait, self.max_wait)",
        "        wait = self.initial_wait * 2.0 ** (attempt - 1)\n"
        "        if self.jitter:\n"
        "            wait += random.uniform(0, wait)\n"
        "        return wait",
        "no retry wait exceeds max_wait, jitter included",
        ("tests/test_retry.py", "tests/test_runnable.py", "tests/test_observability.py"),
    ),
    # -- exactly-once commits ---------------------------------------------------------
    Mutant(
        "commit_owner_check_off_memory",
        "permflow/connections/memory.py",
        "if entry is None or entry.owner != owner:",
        "if entry is None:",
        "only the current holder of a delivery may commit it (a stale driver's outputs are refused)",
        (CONFORMANCE,),
        k="InMemory",
        quick=True,
    ),
    Mutant(
        "commit_owner_check_off_redis",
        "permflow/connections/redis/_script_lib.py",
        "    if not mine[ARGV[k]] then ok = false end",
        "    if false then ok = false end",
        "COMMIT stores and acks only for the owner XPENDING says holds the delivery",
        (REDIS, CONFORMANCE),
        quick=True,
    ),
    Mutant(
        "recommit_stores_twice",
        "permflow/connections/redis/_scripts.py",
        "  local ok, ids = held(stream, process, owner, n)\n  local stored",
        "  local ok, ids = held(stream, process, owner, n)\n  if again then ok = true end\n  local stored",
        "a commit resent after its reply was lost must not store its outputs a second time",
        ("tests/test_faults.py", REDIS),
    ),
    Mutant(
        "fetch_steals_inflight_memory",
        "permflow/connections/memory.py",
        "if pending.owner is None:",
        "if pending.owner != owner:",
        "a delivery another owner holds is not handed out again",
        (CONFORMANCE, "tests/test_concurrency.py"),
    ),
    Mutant(
        "lease_ignored_redis",
        "permflow/connections/redis/_script_lib.py",
        "elseif who ~= owner and p[3] >= lease then",
        "elseif who ~= owner and p[3] >= 0 then",
        "FETCH takes another owner's delivery only after its lease ran out",
        (REDIS, CONFORMANCE),
    ),
    # -- resume and redelivery --------------------------------------------------------
    Mutant(
        "release_off",
        "permflow/_engine.py",
        "await self.conn.release(self.state_id, self.owner)",
        "pass",
        "an interrupted or failed run hands its deliveries back, so a resume redelivers them at once",
        (CONFORMANCE, "tests/test_sync_facade.py"),
        quick=True,
    ),
    Mutant(
        "release_others_memory",
        "permflow/connections/memory.py",
        "if entry.owner == owner:",
        "if True:",
        "release hands back only the releasing owner's deliveries, not another driver's in-flight ones",
        (CONFORMANCE, "tests/test_concurrency.py", "tests/test_sync_facade.py", "tests/test_workers.py"),
    ),
    Mutant(
        "lease_reclaim_off_redis",
        "permflow/connections/redis/_script_lib.py",
        "elseif who ~= owner and p[3] >= lease then",
        "elseif false then",
        "deliveries of an owner that went silent are taken over after the lease",
        (REDIS, "tests/test_redis_processes.py"),
    ),
    Mutant(
        "renew_off",
        "permflow/_engine.py",
        "await self.conn.renew(self.state_id, self.owner)",
        "pass",
        "a live driver renews its leases, so no other driver takes over a step that outlasts the lease",
        (REDIS, "tests/test_redis_processes.py", "tests/test_faults.py"),
    ),
    Mutant(
        "idle_while_held_elsewhere",
        "permflow/_engine.py",
        "await conn.wait_for_change(sid, self.settings.poll_interval)",
        "return",
        "a run is idle only when nothing is outstanding; work another owner holds is waited for",
        (CONFORMANCE, REDIS, "tests/test_redis_processes.py"),
    ),
    # -- joins --------------------------------------------------------------------------
    Mutant(
        "early_join",
        "permflow/_engine.py",
        "        if not waiting:\n            waiting = [s for s in plan.joins if counts[s.name]]",
        "        if True:\n            waiting += [s for s in plan.joins if counts[s.name]]",
        "joins fire only when the run is otherwise idle, never while subscribers still have work",
        (CONFORMANCE, "tests/test_workers.py", "tests/test_worker_processes.py"),
        quick=True,
    ),
    Mutant(
        "join_split_memory",
        "permflow/connections/memory.py",
        "if group.join:",
        "if False:",
        "a join gets every not-yet-joined message as one delivery and fires once per idle point",
        (CONFORMANCE,),
        k="InMemory",
    ),
    # -- poison messages, stops, values -------------------------------------------------
    Mutant(
        "dead_letter_off",
        "permflow/_delivery.py",
        "if delivery.attempt > settings.max_deliveries:",
        "if False:",
        "a delivery failing on every redelivery is dead-lettered after max_deliveries",
        (CONFORMANCE,),
        quick=True,
    ),
    Mutant(
        "stop_commit_refusal_off_memory",
        "permflow/connections/memory.py",
        "if state is None or delivery.state_id in self._stopping:",
        "if state is None:",
        "once a client left a stream, the workers' commits for that run are refused",
        ("tests/test_workers.py", CONFORMANCE),
    ),
    Mutant(
        "stop_commit_refusal_off_redis",
        "permflow/connections/redis/_scripts.py",
        "stores nothing more.\n  if redis.call('EXISTS', KEYS[6]) == 1 then return false end",
        "stores nothing more.\n  if false then return false end",
        "once a client left a stream, COMMIT refuses the workers' commits for that run",
        ("tests/test_redis_work.py", "tests/test_workers.py"),
        quick=True,
    ),
    Mutant(
        "serialization_check_off",
        "permflow/_serialization.py",
        "    raise _refuse(value, topic, path)\n",
        "    return repr(value)\n",
        "a value the JSON serializer cannot store is refused before anything is committed",
        ("tests/test_serialization.py", REDIS),
    ),
    # -- the compact form of finished Redis runs ---------------------------------------
    Mutant(
        "compact_off",
        "permflow/connections/redis/_compact.py",
        "  if not finished(topics) then return end",
        "  if true then return end",
        "a finished run is made compact: two small keys, no consumers left",
        ("tests/test_redis_footprint.py",),
    ),
    Mutant(
        "expand_redelivers",
        "permflow/connections/redis/_compact.py",
        "redis.call('XGROUP', 'CREATE', tkey(topic), process, '$', 'MKSTREAM')",
        "redis.call('XGROUP', 'CREATE', tkey(topic), process, '0', 'MKSTREAM')",
        "a compact run used again delivers nothing twice: its processes had finished everything",
        ("tests/test_redis_footprint.py",),
    ),
    Mutant(
        "compact_drops_new_readers_backlog",
        "permflow/connections/redis/_compact.py",
        "    redis.call('XADD', tkey(field(fields, 't')), id, 'l', id, unpack(fields))\n",
        "",
        "a process added to a compact run reads its topic from the beginning",
        ("tests/test_redis_footprint.py",),
    ),
    # -- the round trips of a run (START, counts answered by the last commit) ----------
    Mutant(
        "start_resent_as_is",
        "permflow/connections/redis/_client.py",
        '    "START": "RESTART",',
        '    "START": "START",',
        "a START resent after its reply was lost must not store the run's input a second time",
        ("tests/test_faults.py",),
        k="start_cut",
    ),
    Mutant(
        "start_fetch_not_noted",
        "permflow/_engine.py",
        "                    self._fetched = True\n",
        "",
        "a run whose START failed after it ran hands back the input it was handed",
        ("tests/test_redis_round_trips.py",),
    ),
    Mutant(
        "need_round_resent_unsafe",
        "permflow/connections/redis/_core.py",
        "            name = _STORES_AGAIN.get(name, name)",
        "            name = name",
        "a storing script sent again after a NEED reply goes in its twin's form, never storing twice",
        ("tests/test_redis_round_trips.py",),
    ),
    Mutant(
        "bounded_ahead_uncounted",
        "permflow/connections/redis/_scripts.py",
        "    if ahead == 0 then\n",
        "    if true then\n",
        "a worker's bounded fetch-ahead leaves what it did not take counted",
        ("tests/test_redis_round_trips.py",),
    ),
    Mutant(
        "fleeting_commit_declares_all",
        "permflow/connections/redis/_runs.py",
        "            only = self.ttl is None and state_id in self._fleeting",
        "            only = False",
        "a commit of a run deleted at its end declares only the topics it touches",
        ("tests/test_redis_round_trips.py",),
    ),
    Mutant(
        "commit_counts_kept_stale",
        "permflow/connections/redis/_core.py",
        "        self._counted.pop(state_id, None)\n",
        "",
        "counts a commit brought back answer only the next question, not one after another call",
        ("tests/test_redis_round_trips.py",),
    ),
    # -- fetch-ahead (a commit fetches for the readers of what it stored) --------------
    Mutant(
        "fetch_ahead_kept",
        "permflow/connections/redis/_core.py",
        "if bound.ahead:",
        "if False:",
        "deliveries a commit fetched ahead that nobody asked for are handed back before the next call",
        (REDIS,),
    ),
    Mutant(
        "fetch_ahead_reused",
        "permflow/connections/redis/_runs.py",
        "ahead = bound.ahead.pop((state_id, process, owner), None)",
        "ahead = bound.ahead.get((state_id, process, owner), None)",
        "a fetched-ahead reply is handed out once, not again at the next fetch",
        (REDIS,),
        quick=True,
    ),
    # -- step capabilities ------------------------------------------------------------
    Mutant(
        "filter_inverted",
        "permflow/_filter.py",
        "        if verdict:\n            kept.append(message)",
        "        if not verdict:\n            kept.append(message)",
        "a filtered subscription must run for the messages its predicate accepts, and only those",
        ("tests/test_filters.py",),
        quick=True,
    ),
    Mutant(
        "cache_no_single_flight",
        "permflow/_cache.py",
        "                flight = _flights.get(where)\n",
        "                flight = None\n",
        "concurrent calls of a cached step with one key must run the step once",
        ("tests/test_cache.py",),
    ),
    Mutant(
        "cache_version_ignored",
        "permflow/_cache.py",
        "head = _canonical([self.version, serializer.name])",
        "head = _canonical([None, serializer.name])",
        "changing a cached step's version must invalidate what it stored",
        ("tests/test_cache.py", "tests/test_cache_memory.py"),
    ),
    Mutant(
        "resources_unlocked",
        "permflow/_resources.py",
        "        async with self.lock:\n            if self.view is None:",
        "        if True:\n            if self.view is None:",
        "40 concurrent first uses of the shared resources must still make each one once",
        ("tests/test_resources.py",),
    ),
    Mutant(
        "replicas_unchecked",
        "permflow/connections/redis/_replication.py",
        "        if acked >= self.replicas:\n            return",
        "        if True:\n            return",
        "with replicas=N a write must fail when fewer than N replicas acknowledge it",
        ("tests/test_replicas.py",),
    ),
)


# -- running ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str  # a mutant's name, or "(unmutated)" for the baseline
    status: str  # killed | killed (timeout) | survived | error | passed | failed
    seconds: float
    detail: str  # the first failing test, or what went wrong


BASELINE = "(unmutated)"
_running: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()
_stopping = threading.Event()  # set on Ctrl-C: start no more pytest


def check_texts(mutants: tuple[Mutant, ...]) -> list[str]:
    """Why mutants cannot be applied to the current code (empty: all can)."""
    problems = []
    for m in mutants:
        path = ROOT / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.original)
        if count != 1:
            problems.append(f"{m.name}: its original text occurs {count} times in {m.file} (must be once)")
        if m.original == m.replacement:
            problems.append(f"{m.name}: the replacement equals the original")
    return problems


def _repo_files() -> list[str]:
    """Files of the checkout as it is now (tracked and new ones; no ignored ones)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def _copy_repo(dest: Path) -> None:
    files = _repo_files()
    if files:
        for rel in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        return
    ignore = shutil.ignore_patterns(".git", ".venv", ".venvs", "__pycache__", "*.pyc", ".*_cache")
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def _pytest_args(tests: tuple[str, ...], k: str | None = None, *, stop_first: bool = True) -> list[str]:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    if stop_first:
        args.insert(3, "-x")
    return [*args, "-k", k] if k else args


def _failures(output: str) -> list[str]:
    """Node ids of the failed tests, from pytest's short summary."""
    return [
        line.split(" - ")[0].split(" ", 1)[1]
        for line in output.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]


def _run_pytest(copy: Path, args: list[str], timeout: float, log: Path) -> int | None:
    """pytest's exit code (None on timeout); its output is appended to ``log``."""
    env = dict(os.environ)
    others = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *others])
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(args[1:])}\n")
        out.flush()
        process = subprocess.Popen(
            args, cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        with _lock:
            _running.add(process)
            if _stopping.is_set():
                _kill(process)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            process.wait()
            out.write(f"\n(killed after {timeout:.0f}s)\n")
            return None
        finally:
            with _lock:
                _running.discard(process)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill a pytest we started and what it started (its own session)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)


def _output_since(log: Path, offset: int) -> str:
    with log.open(encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        return f.read()


class _Copy:
    """A copy of the checkout (with a mutant written in) that runs pytest, logging to ``log``."""

    def __init__(self, path: Path, timeout: float, log: Path) -> None:
        self.path, self.timeout, self.log = path, timeout, log

    def pytest(self, args: list[str]) -> tuple[int | None, list[str]]:
        """pytest's exit code (None on timeout) and the node ids that failed."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        code = _run_pytest(self.path, args, self.timeout, self.log)
        return code, _failures(_output_since(self.log, offset))

    def fails_alone(self, node: str) -> int:
        """On which of ``SOLO_TRIES`` runs of ``node`` alone it failed (0: it never did)."""
        for attempt in range(1, SOLO_TRIES + 1):
            if self.pytest(_pytest_args((node,)))[0] != 0:
                return attempt
        return 0


def run_one(
    mutant: Mutant | None, tests: tuple[str, ...], k: str | None, timeout: float, logs: Path
) -> Outcome:
    """Copy the checkout, apply ``mutant`` (None: the baseline), run the selection."""
    name = mutant.name if mutant else BASELINE
    slug = name.strip("()")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"permflow-mutant-{slug}-", ignore_cleanup_errors=True) as tmp:
        _copy_repo(Path(tmp))
        copy = _Copy(Path(tmp), timeout, logs / f"{slug}.log")
        if mutant is None:
            status, detail = _baseline(copy, tests)
        else:
            path = copy.path / mutant.file
            text = path.read_text(encoding="utf-8")
            if text.count(mutant.original) != 1:
                return Outcome(name, "error", 0.0, f"original text not found once in {mutant.file}")
            path.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")
            status, detail = _judge(copy, tests, k)
    return Outcome(name, status, time.monotonic() - started, detail)


def _baseline(copy: _Copy, tests: tuple[str, ...]) -> tuple[str, str]:
    """Does the unmutated code pass every selection? Tests that fail only
    under load (they pass alone) are reported, not held against it."""
    code, failed = copy.pytest(_pytest_args(tests, stop_first=False))
    if code == 0:
        return "passed", ""
    if code != 1 or not failed:
        return "failed", f"pytest exit code {code}, see {copy.log}"
    broken = [node for node in failed if copy.fails_alone(node)]
    if broken:
        return "failed", ", ".join(broken)
    return "passed", f"had tests that failed under load but passed alone: {', '.join(failed)}"


def _judge(copy: _Copy, tests: tuple[str, ...], k: str | None) -> tuple[str, str]:
    """Killed, survived or error. A kill counts only if the failing test also
    fails on its own; one that passes alone failed under load (a flake) and is
    deselected for another run of the selection."""
    deselected: list[str] = []
    notes: list[str] = []
    while True:
        extra = [arg for node in deselected for arg in ("--deselect", node)]
        code, failed = copy.pytest([*_pytest_args(tests, k), *extra])
        if code != 1 or not failed:
            break
        attempt = copy.fails_alone(failed[0])
        if attempt:
            if attempt > 1:
                notes.append(f"intermittent: passed alone {attempt - 1} time(s) before failing")
            break
        deselected.append(failed[0])
        notes.append(f"{failed[0]} failed, then passed alone {SOLO_TRIES} times: deselected")
        if len(deselected) == MAX_DESELECTED:
            code = -1
            break
    note = f" ({'; '.join(notes)})" if notes else ""
    if code is None:
        return "killed (timeout)", f"no result within {copy.timeout:.0f}s{note}"
    if code == 0:
        return "survived", note.strip()
    if code == 1:
        return "killed", (failed[0] if failed else "") + note
    return "error", f"pytest exit code {code}, see {copy.log}{note}"


def _baseline_selection(mutants: list[Mutant], full: bool) -> tuple[str, ...]:
    """The union of the selections (without -k: a superset must pass too)."""
    if full or any(not m.tests for m in mutants):
        return ()
    return tuple(dict.fromkeys(t for m in mutants for t in m.tests))


def _describe(tests: tuple[str, ...], k: str | None) -> str:
    where = " ".join(t.removeprefix("tests/") for t in tests) or "(whole suite)"
    return f"{where} -k {k!r}" if k else where


def print_list(mutants: tuple[Mutant, ...]) -> None:
    width = max(len(m.name) for m in mutants)
    for m in mutants:
        print(f"{m.name:<{width}}  {'quick' if m.quick else '     '}  {m.file}")
        print(f"{'':<{width}}         why:   {m.why}")
        print(f"{'':<{width}}         tests: {_describe(m.tests, m.k)}")


def print_table(outcomes: list[Outcome], order: list[str]) -> None:
    ranked = sorted(outcomes, key=lambda o: order.index(o.name) if o.name in order else -1)
    width = max(len(o.name) for o in ranked)
    status = max(len(o.status) for o in ranked)
    print(f"\n{'mutant':<{width}}  {'result':<{status}}  {'time':>6}  first failing test / note")
    print(f"{'-' * width}  {'-' * status}  {'-' * 6}  {'-' * 40}")
    for o in ranked:
        print(f"{o.name:<{width}}  {o.status:<{status}}  {o.seconds:5.0f}s  {o.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the CI subset")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--allow-survivors", action="store_true", help="report survivors, exit 0")
    parser.add_argument("--full-suite", action="store_true", help="run every mutant against the whole suite")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--jobs", type=int, default=MAX_WORKERS, choices=range(1, MAX_WORKERS + 1))
    args = parser.parse_args(argv)

    problems = check_texts(MUTANTS)
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        problems.append("two mutants share a name")
    chosen = [m for m in MUTANTS if m.quick] if args.quick else list(MUTANTS)
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown mutant(s): {', '.join(unknown)}; see --list")
        chosen = [m for m in chosen if m.name in args.only]
    if args.list:
        print_list(tuple(chosen))
        for p in problems:
            print(f"ROTTEN: {p}", file=sys.stderr)
        return 2 if problems else 0
    if problems:
        for p in problems:
            print(f"ROTTEN: {p}", file=sys.stderr)
        print("The code changed under these mutants: update their original text.", file=sys.stderr)
        return 2
    if not chosen:
        parser.error("no mutant selected")

    jobs: list[tuple[Mutant | None, tuple[str, ...], str | None, float]] = []
    if not args.no_baseline:
        base = _baseline_selection(chosen, args.full_suite)
        jobs.append((None, base, None, 900.0 if not base else 300.0))
    for m in chosen:
        if args.full_suite:
            jobs.append((m, (), None, max(m.timeout, 900.0)))
        else:
            jobs.append((m, m.tests, m.k, m.timeout))
    jobs.sort(key=lambda job: bool(job[1]))  # whole-suite runs first: the others fill in around them
    print(
        f"{len(chosen)} mutant(s){' + the unmutated baseline' if not args.no_baseline else ''}, "
        f"{args.jobs} at a time, {sys.executable}"
    )
    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled CI job cleans up like Ctrl-C
    started = time.monotonic()
    outcomes: list[Outcome] = []
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    logs = Path(tempfile.mkdtemp(prefix="permflow-mutants-logs-"))
    futures = []
    try:
        futures += [pool.submit(run_one, *job, logs) for job in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            o = future.result()
            outcomes.append(o)
            note = f"  {o.detail}" if o.detail else ""
            print(f"[{done}/{len(jobs)}] {o.status:<16} {o.name} ({o.seconds:.0f}s){note}", flush=True)
    except KeyboardInterrupt:
        for f in futures:
            f.cancel()
        with _lock:
            _stopping.set()
            for process in _running:
                _kill(process)
        pool.shutdown(wait=True)
        print("interrupted: the pytest runs it started were killed", file=sys.stderr)
        return 130
    finally:
        pool.shutdown(wait=True)

    print_table(outcomes, [BASELINE, *(m.name for m in chosen)])
    mutants = [o for o in outcomes if o.name != BASELINE]
    killed = [o for o in mutants if o.status.startswith("killed")]
    survived = [o for o in mutants if o.status == "survived"]
    errors = [o for o in mutants if o.status == "error"]
    print(f"\nscore: {len(killed)}/{len(mutants)} killed in {time.monotonic() - started:.0f}s (logs: {logs})")
    by_name = {m.name: m for m in chosen}
    for o in survived:
        m = by_name[o.name]
        print(f"  survived: {o.name}: {m.why} (ran: {_describe(() if args.full_suite else m.tests, m.k)})")
    baseline = [o for o in outcomes if o.name == BASELINE]
    if baseline and baseline[0].detail and baseline[0].status == "passed":
        print(f"warning: the unmutated code {baseline[0].detail}", file=sys.stderr)
    if baseline and baseline[0].status != "passed":
        print(f"the unmutated code fails its selection: {baseline[0].detail}", file=sys.stderr)
        print("kills mean nothing until it passes.", file=sys.stderr)
        return 2
    if errors:
        return 2
    if survived and not args.allow_survivors:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
