"""The benchmark scripts: where they find Redis, what a missing one does, and
that quick runs (which judge nothing) print no targets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1

# (module, arguments): each script limited to its Redis part, so that a missing
# Redis is all there is to report.
SCRIPTS = [
    ("benchmarks", ["--quick", "--only", "redis-floor", "permflow-redis"]),
    ("benchmarks.workers", ["--quick"]),
]


@pytest.fixture
def benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the repository's ``benchmarks`` package importable in this process."""
    monkeypatch.syspath_prepend(str(ROOT))


def bench(module: str, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` from the repository root, with ``env`` over a clean
    Redis and CI setting."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PERMFLOW_BENCH_REDIS_URL")}
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**base, "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _redis_common() -> ModuleType:
    from benchmarks.systems import _redis_common

    return _redis_common


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "redis://127.0.0.1:6379/0"),
        ({"PERMFLOW_TEST_REDIS_URL": "redis://tests:1/0"}, "redis://tests:1/0"),
        (
            {"PERMFLOW_TEST_REDIS_URL": "redis://tests:1/0", "PERMFLOW_BENCH_REDIS_URL": "redis://bench:2/0"},
            "redis://bench:2/0",
        ),
    ],
)
def test_benchmarks_find_redis_like_the_tests(
    benchmarks_on_path: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """PERMFLOW_BENCH_REDIS_URL wins, else PERMFLOW_TEST_REDIS_URL, else 127.0.0.1:6379."""
    for name in ("PERMFLOW_TEST_REDIS_URL", "PERMFLOW_BENCH_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _redis_common().redis_url() == expected


@pytest.mark.parametrize(("module", "args"), SCRIPTS)
def test_a_missing_redis_under_ci_fails_in_one_line(module: str, args: list[str]) -> None:
    """With CI=true and no Redis at PERMFLOW_TEST_REDIS_URL, each script fails at once with one line."""
    result = bench(module, args, CI="true", PERMFLOW_TEST_REDIS_URL=CLOSED)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"python -m {module}: no Redis at {CLOSED}")
    assert "CI=true" in lines[0]


@pytest.mark.parametrize(("module", "args"), SCRIPTS)
def test_a_missing_redis_outside_ci_is_not_available(module: str, args: list[str]) -> None:
    """Outside CI a missing Redis is reported as "not available" and fails nothing."""
    result = bench(module, args, PERMFLOW_TEST_REDIS_URL=CLOSED)
    assert result.returncode == 0, result.stderr
    assert "not available: no Redis at " + CLOSED in result.stdout
    assert result.stderr == ""


def test_a_quick_run_prints_no_targets() -> None:
    """A quick run of the main benchmark shows its table without a target column."""
    result = bench("benchmarks", ["--quick", "--only", "permflow", "asyncio", "--workloads", "w1_async"])
    assert result.returncode == 0, result.stderr
    assert "W1 100-process chain" in result.stdout
    assert "target" not in result.stdout


def test_the_worker_benchmark_judges_ratios_only_in_full_runs(
    benchmarks_on_path: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks.workers prints a ratio's target and verdict in a full run, neither in a quick one."""
    from benchmarks import workers

    pair = [
        workers.Setup("a", "cpu", 1, 10, 6, lambda n, loops: [], lambda x: x, rates=[10.0]),
        workers.Setup("b", "cpu", 2, 10, 12, lambda n, loops: [], lambda x: x, rates=[12.0]),
    ]
    assert workers.report(pair, "2 workers vs 1", 1.6, quick=True)
    quick = capsys.readouterr().out
    assert "2 workers vs 1: 1.20×" in quick and "target" not in quick and "BELOW" not in quick
    assert not workers.report(pair, "2 workers vs 1", 1.6, quick=False)
    assert "1.20×  (target ≥ 1.6×)  BELOW TARGET" in capsys.readouterr().out


def test_redis_rows_name_the_floor_of_each_ratio(benchmarks_on_path: None) -> None:
    """W1 on Redis shows one ratio per floor, each named, and judges its target against the first."""
    from benchmarks import _report
    from benchmarks._workloads import workloads

    cells = {
        "redis_ping": {"redis-floor": {"rounds": [100e-6]}},
        "redis_hop_script": {"redis-floor": {"rounds": [150e-6]}},
        "redis_hop_multi": {"redis-floor": {"rounds": [300e-6]}},
        "redis_w1": {"permflow-redis": {"rounds": [330e-6]}},
    }
    chosen = [w for w in workloads(quick=False) if w.key in cells]
    rows = {r.workload: r for r in _report.rows({"results": cells, "meta": {"quick": False}}, chosen)}
    w1 = next(r for label, r in rows.items() if label.startswith("W1 on Redis"))
    assert w1.ratio == "2.20× 1-RTT script floor; 3.30× PING; 1.10× 2-RTT MULTI hop"
    assert w1.target == "MISSED (≤2× 1-RTT script floor)"
    floor = next(r for label, r in rows.items() if label.startswith("Redis floor, 1 round trip"))
    assert floor.ratio == "1.50× PING"


def test_a_mem_row_cut_by_the_time_limit_says_so(benchmarks_on_path: None) -> None:
    """A MEM row whose system stopped at the time limit states how many invokes of how many it did."""
    from benchmarks import _report
    from benchmarks._workloads import workloads

    cell = {"start_kib": 1024, "end_kib": 2048, "peak_kib": 2048, "invokes": 40_000, "count": 100_000}
    mem = [w for w in workloads(quick=False) if w.mode == "mem"]
    (row,) = _report.rows(
        {"results": {}, "mem": {"x": cell | {"seconds": 600.0}}, "meta": {"quick": False}}, mem
    )
    assert row.note.startswith("only 40,000 of 100,000 invokes (time limit) in 600.0 s")
    assert "+26.2 B/run" in row.ratio


def test_a_full_worker_run_writes_its_figures(
    benchmarks_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks.workers writes workers.md and workers.json with the ratios, date and machine."""
    from benchmarks import _machine, _workers_output, workers

    monkeypatch.setattr(_workers_output, "HERE", tmp_path)
    cpu, io = workers._setups(quick=False)
    for setup, rates in zip(
        cpu + io, ([40.0, 42.0], [70.0, 72.0], [19.0, 19.0], [1000.0, 1020.0]), strict=True
    ):
        setup.rates = rates
    meta = _machine.describe() | {"redis": "7.0", "rounds": 2, "cpu_step_loops": 1000, "cpu_step_ms": 20.0}
    workers.write(meta, {"cpu": cpu, "io": io})
    text = (tmp_path / "workers.md").read_text()
    assert meta["date"] in text and _machine.summary(meta) in text
    assert "1.73× (2 workers vs 1) | met (≥ 1.6×)" in text
    assert "53.16× (concurrency 100 vs 1) | met (≥ 50×)" in text
    assert '"ratio"' in (tmp_path / "workers.json").read_text()
