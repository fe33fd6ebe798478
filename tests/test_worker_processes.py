"""Worker processes on Redis: ``python -m permflow worker tests.worker_app:NAME``.

Two worker subprocesses serve a client in this process. The tests kill and
stop workers mid-run and check that every run still finishes with each of its
messages stored exactly once. asyncio only: redis-py has no trio support.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import pytest
import worker_app
from helpers import each_line

from permflow import PubSub

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
LEASE = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class WorkerProcess:
    """One ``permflow worker`` subprocess and the lines it logs (read as they come)."""

    def __init__(self, process: anyio.abc.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self.driven: list[str] = []
        self.started = anyio.Event()
        self._changed = anyio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read_logs(self) -> None:
        assert self.process.stderr is not None
        async for lines in each_line(self.process.stderr):
            for line in lines:
                self.lines.append(line)
                if f"worker {self.name} started" in line:
                    self.started.set()
                marker = f"worker {self.name} drives state id "
                if marker in line:
                    self.driven.append(line.split(marker, 1)[1].strip())
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for_runs(self, count: int) -> None:
        """Return once this worker has started driving ``count`` runs."""
        while len(self.driven) < count:
            await self._changed.wait()

    def tail(self) -> str:
        return "\n".join(self.lines[-30:])


@asynccontextmanager
async def worker_processes(
    target: str,
    store_url: str,
    prefix: str,
    *,
    count: int = 2,
    concurrency: int = 4,
    grace: float = 10.0,
    meet_dir: Path | None = None,
    resource_dir: Path | None = None,
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` workers serving ``tests.worker_app:target``, started and logging;
    whatever is still running at the end is killed. With ``meet_dir`` their steps
    wait for a step of another worker (``worker_app.meet_another_worker``); with
    ``resource_dir`` the ``marker`` resource notes its life there."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if meet_dir is not None:
        env["PERMFLOW_TEST_MEET_DIR"] = str(meet_dir)
    if resource_dir is not None:
        env["PERMFLOW_TEST_RESOURCE_DIR"] = str(resource_dir)
    workers: list[WorkerProcess] = []
    try:
        async with anyio.create_task_group() as tg:
            for k in range(count):
                name = f"w{k + 1}"
                command = [
                    sys.executable, "-m", "permflow", "worker", f"tests.worker_app:{target}",
                    "--redis", store_url, "--prefix", prefix, "--lease", str(LEASE),
                    "--concurrency", str(concurrency), "--name", name, "--grace", str(grace),
                    "--log-level", "debug",
                ]  # fmt: skip
                process = await anyio.open_process(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
                worker = WorkerProcess(process, name)
                workers.append(worker)
                tg.start_soon(worker.read_logs)
            with anyio.fail_after(30):
                for worker in workers:
                    await worker.started.wait()
            try:
                yield workers
            finally:
                for worker in workers:
                    if worker.process.returncode is None:
                        worker.process.kill()
                with anyio.move_on_after(10, shield=True):
                    for worker in workers:
                        await worker.process.wait()
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()


@asynccontextmanager
async def client_of(pubsub: PubSub, store_url: str, prefix: str) -> AsyncIterator[PubSub]:
    client = worker_app.client(pubsub, store_url, prefix, lease=LEASE)
    try:
        yield client
    finally:
        await client.connection.aclose()


def expected_log(x: int, middle: str) -> list[tuple[str, Any]]:
    """The (topic, value) pairs one run of a chain stores, OUT values without their pid."""
    return [("__in__", x), (middle, x + 1), ("doubled", (x + 1) * 2), ("__out__", (x + 1) * 2)]


async def stored_pairs(client: PubSub, state_id: str) -> list[tuple[str, Any]]:
    pairs = []
    for m in await client.apeek(state_id):
        value = m.value["value"] if m.topic == "__out__" else m.value
        pairs.append((m.topic, value))
    return pairs


async def test_a_worker_names_its_redis_url_without_password_and_its_prefix(
    store_url: str, redis_prefix: str
) -> None:
    """A worker's start line names the Redis URL, with the password redacted, and the key prefix."""
    parts = urlsplit(store_url)
    password = parts.password
    if password is None:  # a server without a password accepts any for its default user
        password = "s3cret-pw"
        parts = parts._replace(netloc=f"default:{password}@{parts.netloc}")
    async with worker_processes("chain", urlunsplit(parts), redis_prefix, count=1) as (worker,):
        start = next(line for line in worker.lines if "worker w1 started" in line)
    host = parts.netloc.rpartition("@")[2]
    assert f"{parts.scheme}://{parts.username or ''}:***@{host}{parts.path}" in start
    assert f"prefix={redis_prefix!r}" in start
    assert password not in "\n".join(worker.lines)


async def test_two_worker_processes_run_a_batch_of_200_three_process_chains(
    store_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """200 runs submitted at once all return the right value, and both workers computed some
    (forced: a worker's first result waits until the other worker produced one too)."""
    async with worker_processes("chain", store_url, redis_prefix, meet_dir=tmp_path) as workers:
        async with client_of(worker_app.chain, store_url, redis_prefix) as client:
            with anyio.fail_after(120):
                results = await client.abatch(list(range(200)))
    assert [[out["value"] for out in run] for run in results] == [[(x + 1) * 2] for x in range(200)]
    pids = {out["pid"] for run in results for out in run}
    assert pids == {w.pid for w in workers}
    assert all(w.driven for w in workers)


async def test_a_worker_runs_process_steps_in_a_pool_it_closes_on_sigterm(
    store_url: str, redis_prefix: str
) -> None:
    """A worker runs an ``execution="process"`` step in a process of its own pool (a pid neither
    the worker's nor the client's); on SIGTERM it exits 0 and that process is gone too."""
    async with worker_processes("crunch", store_url, redis_prefix, count=1) as (worker,):
        async with client_of(worker_app.crunch, store_url, redis_prefix) as client:
            with anyio.fail_after(60):
                results = await client.abatch([10, 100, 1000])
        worker.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await worker.process.wait() == 0
    assert [[out["value"] for out in run] for run in results] == [[45], [4950], [499500]]
    pids = {out["pid"] for run in results for out in run}
    assert len(pids) == 1 and not pids & {worker.pid, os.getpid()}
    with pytest.raises(ProcessLookupError):
        os.kill(pids.pop(), 0)


@asynccontextmanager
async def submitting(
    client: PubSub, inputs: list[Any], configs: list[dict[str, Any]]
) -> AsyncIterator[list[Any]]:
    """Submit ``client.abatch(inputs, configs)`` in the background; the yielded
    list holds the results once the block (and the batch) has finished."""
    results: list[Any] = []

    async def submit() -> None:
        results.extend(await client.abatch(inputs, configs))

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit)
        yield results


async def test_a_killed_worker_loses_no_run_and_stores_nothing_twice(
    store_url: str, redis_prefix: str
) -> None:
    """After SIGKILL of a worker holding runs, the other finishes them, storing each message once."""
    configs = [{"state_id": f"kill-{x}"} for x in range(40)]
    async with worker_processes("slow_chain", store_url, redis_prefix) as (victim, survivor):
        async with client_of(worker_app.slow_chain, store_url, redis_prefix) as client:
            with anyio.fail_after(120):
                async with submitting(client, list(range(40)), configs) as results:
                    await victim.wait_for_runs(3)
                    victim.process.send_signal(signal.SIGKILL)
                    assert await victim.process.wait() == -signal.SIGKILL
                    held = list(victim.driven)
            assert [[out["value"] for out in run] for run in results] == [[(x + 1) * 2] for x in range(40)]
            # runs the victim was driving when it died were finished by the survivor
            finished_by = {c["state_id"]: run[0]["pid"] for c, run in zip(configs, results, strict=True)}
            assert survivor.pid in {finished_by[sid] for sid in held}, victim.tail()
            for x, config in enumerate(configs):
                assert await stored_pairs(client, config["state_id"]) == expected_log(x, "work")


async def test_sigterm_lets_a_worker_finish_within_its_grace_period_and_lose_nothing(
    store_url: str, redis_prefix: str
) -> None:
    """A worker sent SIGTERM mid-run exits with code 0 within its grace period; every run completes."""
    grace = 5.0
    configs = [{"state_id": f"term-{x}"} for x in range(40)]
    async with worker_processes("slow_chain", store_url, redis_prefix, grace=grace) as (stopped, other):
        async with client_of(worker_app.slow_chain, store_url, redis_prefix) as client:
            with anyio.fail_after(120):
                async with submitting(client, list(range(40)), configs) as results:
                    await stopped.wait_for_runs(3)
                    began = time.monotonic()
                    stopped.process.send_signal(signal.SIGTERM)
                    with anyio.fail_after(grace + 30):  # a generous backstop; the bound is checked below
                        code = await stopped.process.wait()
                    took = time.monotonic() - began
            assert code == 0, stopped.tail()
            assert took < grace + 2, f"worker took {took:.1f}s to stop with grace={grace}s"
            assert any("SIGTERM" in line for line in stopped.lines)
            assert [[out["value"] for out in run] for run in results] == [[(x + 1) * 2] for x in range(40)]
            for x, config in enumerate(configs):
                assert await stored_pairs(client, config["state_id"]) == expected_log(x, "work")
            assert other.driven


async def test_a_join_over_a_fan_out_spread_over_two_workers_fires_once(
    store_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Fifty squares computed by both workers (forced, as above) are joined once into the right sum."""
    async with worker_processes("fan_out", store_url, redis_prefix, meet_dir=tmp_path) as workers:
        async with client_of(worker_app.fan_out, store_url, redis_prefix) as client:
            with anyio.fail_after(60):
                out = await client.ainvoke(50, {"state_id": "fan"})
            topics = [m.topic for m in await client.apeek("fan")]
    assert out == [
        {"sum": sum(x * x for x in range(50)), "count": 50, "pids": sorted(w.pid for w in workers)}
    ]
    assert topics.count("__out__") == 1
    assert topics.count("squares") == topics.count("items") == 50


async def test_a_filtered_subscription_on_two_worker_processes_runs_for_matching_messages_only(
    store_url: str, redis_prefix: str
) -> None:
    """Workers run a filtered subscription's step for the even numbers only: nothing is published
    for the odd ones, and none of them is left outstanding."""
    async with worker_processes("filtered", store_url, redis_prefix) as workers:
        async with client_of(worker_app.filtered, store_url, redis_prefix) as client:
            with anyio.fail_after(60):
                out = await client.ainvoke(30, {"state_id": "evens"})
            log = await client.apeek("evens")
            left = await client.connection.outstanding("evens", client.process_names)
    assert [(o["sum"], o["count"]) for o in out] == [(sum(x * x for x in range(0, 30, 2)), 15)]
    assert set(out[0]["pids"]) <= {w.pid for w in workers}
    assert sorted(m.value["value"] for m in log if m.topic == "squares") == [x * x for x in range(0, 30, 2)]
    assert [m.topic for m in log].count("items") == 30
    assert set(left.values()) == {0}


async def test_a_worker_makes_its_own_resources_once_and_closes_them_on_sigterm(
    store_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A worker process makes the PubSub's resources itself, once for many runs, and exits them
    when SIGTERM stops it; the client, where no step runs, makes none."""
    async with worker_processes(
        "with_resources", store_url, redis_prefix, count=1, resource_dir=tmp_path
    ) as (worker,):
        async with client_of(worker_app.with_resources, store_url, redis_prefix) as client:
            with anyio.fail_after(60):
                results = await client.abatch(list(range(10)))
            assert not (tmp_path / f"closed-{worker.pid}").exists()  # open while the worker runs
            worker.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await worker.process.wait()
    assert code == 0, worker.tail()
    assert worker.pid != os.getpid()
    assert results == [[{"value": x, "pid": worker.pid, "resource_pid": worker.pid}] for x in range(10)]
    assert sorted(os.listdir(tmp_path)) == [f"closed-{worker.pid}", f"made-{worker.pid}"]
    assert (tmp_path / f"made-{worker.pid}").read_text() == "made\n"
    assert (tmp_path / f"closed-{worker.pid}").read_text() == "closed\n"


async def test_a_second_worker_process_gets_the_first_ones_cached_result(
    store_url: str, redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached result computed by one worker process is reused by a later one: the step never runs there."""
    executions = tmp_path / "executions"
    monkeypatch.setenv("PERMFLOW_TEST_EXECUTIONS_FILE", str(executions))
    outs = []
    for run in ("first", "second"):
        async with worker_processes("cached", store_url, redis_prefix, count=1) as (worker,):
            async with client_of(worker_app.cached, store_url, redis_prefix) as client:
                with anyio.fail_after(60):
                    outs.append((worker.pid, await client.ainvoke(4, {"state_id": run})))
            assert worker.driven == [run]
    (first_pid, first_out), (second_pid, second_out) = outs
    assert first_pid != second_pid
    assert first_out == second_out == [{"value": 40, "pid": first_pid}]
    assert executions.read_text().split() == [str(first_pid)]
