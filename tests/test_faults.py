"""Fault injection on Redis: dropped connections, restarts, a frozen server, lost
commit replies, corrupt keys, a step that crashes its worker, restricted ACL users.

Every test runs its own ``redis-server`` (tests/redis_servers.py) so it can stop,
restart, freeze or cut it without touching the shared server; worker processes
serve the PubSubs of tests/fault_app.py. asyncio only: redis-py has no trio support.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import fault_app
import pytest
from helpers import call_with_deadline, each_line
from redis_servers import CuttingProxy, RedisServer

from permflow import (
    ConnectionFailedError,
    PermflowError,
    PoisonMessageError,
    PubSub,
    RedisPubSubConnection,
    RunTimeoutError,
    Topic,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

ROOT = Path(__file__).resolve().parents[1]

#: The ACL rule of a user that can do everything permflow does under prefix "myapp"
#: (local runs, peek, delete, run summaries, workers), found by experiment: dropping
#: any one of its categories breaks one of those. See test_acl_restricted_user.
APP_ACL = (
    "~{myapp:* ~{myapp}:* resetchannels "
    "-@all +@scripting +@stream +@hash +@set +@string +@keyspace -@dangerous"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started redis-server of this test's own; stopped (thawed first) by its pid afterwards."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def pairs(messages: list[Any]) -> list[tuple[str, Any]]:
    return [(m.topic, m.value) for m in messages]


def values(outs: list[dict[str, Any]]) -> list[Any]:
    """OUT values of a fault_app chain without their pid."""
    return [out["value"] for out in outs]


def local_chain(step: Any, conn: RedisPubSubConnection) -> PubSub:
    """IN → step → OUT over ``conn``, run in this process."""
    return PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish(), connection=conn)


def workers_client(pubsub: PubSub, url: str, prefix: str, lease: float) -> PubSub:
    return pubsub.with_connection(
        RedisPubSubConnection.from_url(url, prefix=prefix, lease=lease)
    ).with_workers()


class Outcomes:
    """The results (or exceptions) of calls made in tasks, by key."""

    def __init__(self) -> None:
        self.results: dict[Any, Any] = {}
        self._changed = anyio.Event()

    async def run(self, key: Any, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            self.results[key] = await call()
        except Exception as exc:
            self.results[key] = exc
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, keys: Iterable[Any]) -> None:
        keys = list(keys)
        while not all(key in self.results for key in keys):
            await self._changed.wait()

    def summary(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """Per key: the OUT values without pids, an exception's type name, or "hung"."""
        found: dict[Any, Any] = {}
        for key in keys:
            result = self.results.get(key, "hung")
            if isinstance(result, list):
                found[key] = values(result)
            elif isinstance(result, BaseException):
                found[key] = type(result).__name__
            else:
                found[key] = result
        return found


# -- worker processes -------------------------------------------------------------


class WorkerProcess:
    """One ``permflow worker`` subprocess and the lines it logs on stderr."""

    def __init__(self, process: anyio.abc.Process, name: str, pool: WorkerPool) -> None:
        self.process = process
        self.name = name
        self.pool = pool
        self.lines: list[str] = []
        self.started = anyio.Event()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def read_logs(self) -> None:
        assert self.process.stderr is not None
        try:
            async for lines in each_line(self.process.stderr):
                for line in lines:
                    self.lines.append(line)
                    if f"worker {self.name} started" in line:
                        self.started.set()
                self.pool.changed()
        finally:
            with anyio.move_on_after(10, shield=True):
                await self.process.wait()  # end of stderr: the process is gone (or killed)
            self.pool.changed()

    def logged(self, level: str, text: str) -> list[int]:
        """Indexes of the lines logged at ``level`` that contain ``text``."""
        return [k for k, line in enumerate(self.lines) if f" {level} " in line and text in line]

    def tail(self) -> str:
        return f"--- worker {self.name} (exit code {self.process.returncode}):\n" + "\n".join(
            self.lines[-40:]
        )


class WorkerPool:
    """Starts ``permflow worker`` subprocesses on one Redis prefix; kills what is left at the end."""

    def __init__(self, tg: anyio.abc.TaskGroup, url: str, prefix: str, lease: float) -> None:
        self.tg, self.url, self.prefix, self.lease = tg, url, prefix, lease
        self.workers: list[WorkerProcess] = []
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is checked whenever a worker logs or exits."""
        while not condition():
            await self._changed.wait()

    async def start(self, target: str, name: str, *, concurrency: int = 4) -> WorkerProcess:
        """A worker serving ``tests.fault_app:target``, once it logged that it started."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        command = [
            sys.executable, "-m", "permflow", "worker", f"tests.fault_app:{target}",
            "--redis", self.url, "--prefix", self.prefix, "--lease", str(self.lease),
            "--concurrency", str(concurrency), "--name", name, "--log-level", "INFO",
        ]  # fmt: skip
        process = await anyio.open_process(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        worker = WorkerProcess(process, name, self)
        self.workers.append(worker)
        self.tg.start_soon(worker.read_logs)
        with anyio.fail_after(30):
            await self.wait_until(lambda: worker.started.is_set() or not worker.alive)
        assert worker.alive, worker.tail()
        return worker

    def tails(self) -> str:
        return "\n".join(w.tail() for w in self.workers)


@asynccontextmanager
async def worker_pool(url: str, prefix: str, *, lease: float) -> AsyncIterator[WorkerPool]:
    pool: WorkerPool | None = None
    try:
        async with anyio.create_task_group() as tg:
            pool = WorkerPool(tg, url, prefix, lease)
            try:
                yield pool
            finally:
                await _kill(pool.workers)
    finally:
        if pool is not None:
            await _kill(pool.workers)


async def _kill(workers: list[WorkerProcess]) -> None:
    """SIGKILL the workers still running, by pid, and reap them."""
    for worker in workers:
        if worker.alive:
            worker.process.kill()
    with anyio.move_on_after(10, shield=True):
        for worker in workers:
            await worker.process.wait()


# -- 1. a dropped connection during a step --------------------------------------------


@pytest.mark.anyio
async def test_connections_dropped_during_a_step_are_ridden_out(redis_server: RedisServer) -> None:
    """A run whose connections Redis drops while a step runs (lease 1 s) reconnects and returns its result."""
    dropped: list[int] = []

    async def slow(x: int) -> int:
        dropped.append(await anyio.to_thread.run_sync(redis_server.kill_clients))
        await anyio.sleep(1.5)  # the step's work: lease renewals must ride out the drop meanwhile
        return x * 2

    async with RedisPubSubConnection.from_url(redis_server.url, prefix="faults-drop", lease=1) as conn:
        pubsub = local_chain(slow, conn)
        with anyio.fail_after(20):
            assert await pubsub.ainvoke(21, {"state_id": "drop"}) == [42]
            stored = pairs(await pubsub.apeek("drop"))
    assert dropped and dropped[0] >= 1  # the drop hit the run's connection
    assert stored == [("__in__", 21), ("__out__", 42)]


@pytest.mark.anyio
async def test_redis_gone_longer_than_the_lease_fails_the_run_with_one_connection_error(
    redis_server: RedisServer,
) -> None:
    """Redis down longer than the lease during a step fails invoke with one ConnectionFailedError."""
    stopped = anyio.Event()

    async def slow(x: int) -> int:
        await anyio.to_thread.run_sync(redis_server.stop)
        stopped.set()
        await anyio.sleep(1.5)
        return x * 2

    caught: list[Exception] = []
    async with RedisPubSubConnection.from_url(redis_server.url, prefix="faults-down", lease=1) as conn:
        pubsub = local_chain(slow, conn)

        async def run() -> None:
            try:
                await pubsub.ainvoke(21, {"state_id": "down"})
            except Exception as exc:
                caught.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await stopped.wait()
                await anyio.sleep(2.0)  # the outage itself: twice the lease
                await anyio.to_thread.run_sync(redis_server.start)
    assert len(caught) == 1, "invoke returned although Redis was gone longer than the lease"
    error = caught[0]
    assert not isinstance(error, BaseExceptionGroup), f"an exception group, not one error: {error!r}"
    assert isinstance(error, PermflowError) and isinstance(error, ConnectionFailedError), repr(error)


# -- 2. a Redis restart under worker processes ----------------------------------------


@pytest.mark.anyio
async def test_worker_processes_survive_a_redis_restart_and_serve_new_runs(redis_server: RedisServer) -> None:
    """Workers outlive a 0.5 s Redis restart, log the loss once and the reconnection, and finish new runs."""
    prefix, lease = "faults-restart", 2.0
    before, after = Outcomes(), Outcomes()
    got_going = False
    async with worker_pool(redis_server.url, prefix, lease=lease) as pool:
        # room to spare: each worker's claim loop keeps asking Redis for work, so it sees the outage
        workers = [await pool.start("slow", f"w{k}", concurrency=10) for k in (1, 2)]
        client = workers_client(fault_app.slow, redis_server.url, prefix, lease)

        def submit(x: int) -> Callable[[], Awaitable[Any]]:
            return lambda: client.ainvoke(x, {"state_id": f"run-{x}"})

        try:
            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for x in range(6):  # their data dies with the restart: any end of theirs is fine
                        tg.start_soon(before.run, x, submit(x))
                    # in flight: a worker has done the first step of a run and is in its slow one
                    with anyio.move_on_after(20):
                        while ("work", 1) not in pairs(await client.apeek("run-0")):
                            await client.connection.wait_for_change("run-0", 0.5)
                        got_going = True
                    if got_going:
                        await anyio.to_thread.run_sync(redis_server.restart, 0.5)
                        with anyio.move_on_after(20):
                            await pool.wait_until(
                                lambda: all(not w.alive or w.logged("INFO", "reconnected") for w in workers)
                            )
                    tg.cancel_scope.cancel()  # calls from before the restart: their runs were lost
                if got_going and all(w.alive for w in workers):
                    async with anyio.create_task_group() as tg:
                        for x in range(10, 15):
                            tg.start_soon(after.run, x, submit(x))
                        with anyio.move_on_after(30):
                            await after.wait_for(range(10, 15))
                        tg.cancel_scope.cancel()  # runs that hang
        finally:
            await client.connection.aclose()
        alive = [w.alive for w in workers]
    assert got_going, "no run got going:\n" + pool.tails()
    assert all(alive), "a worker died with the Redis restart:\n" + pool.tails()
    for worker in workers:
        lost = worker.logged("WARNING", "lost its connection")
        back = worker.logged("INFO", "reconnected")
        assert len(lost) == 1, worker.tail()
        assert back and back[-1] > lost[0], worker.tail()
    assert after.summary(range(10, 15)) == {x: [fault_app.expected(x)] for x in range(10, 15)}, pool.tails()


@pytest.mark.anyio
async def test_runs_in_flight_resume_after_a_redis_restart_without_resubmitting() -> None:
    """Runs in flight when a persistent Redis restarts finish on the workers, each message stored once."""
    prefix, lease = "faults-resume", 2.0
    server = RedisServer(persistent=True)
    server.start()
    calls = Outcomes()
    try:
        async with worker_pool(server.url, prefix, lease=lease) as pool:
            workers = [await pool.start("slow", f"w{k}", concurrency=10) for k in (1, 2)]
            client = workers_client(fault_app.slow, server.url, prefix, lease)
            try:
                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for x in range(6):
                            tg.start_soon(
                                calls.run, x, lambda x=x: client.ainvoke(x, {"state_id": f"run-{x}"})
                            )
                        # in flight: every run has done its first step and is in its slow one
                        for x in range(6):
                            while ("work", x + 1) not in pairs(await client.apeek(f"run-{x}")):
                                await client.connection.wait_for_change(f"run-{x}", 0.5)
                        await anyio.to_thread.run_sync(server.restart, 0.5)
                        await calls.wait_for(range(6))  # the same calls: nobody resubmits
                    logs = {x: pairs(await client.apeek(f"run-{x}")) for x in range(6)}
            finally:
                await client.connection.aclose()
            alive = [w.alive for w in workers]
    finally:
        server.close()
    assert all(alive), pool.tails()
    assert calls.summary(range(6)) == {x: [fault_app.expected(x)] for x in range(6)}, pool.tails()
    for log in logs.values():  # every message exactly once: nothing lost, nothing stored twice
        assert [topic for topic, _ in log] == ["__in__", "work", "done", "__out__"], log


# -- 3. a frozen server ----------------------------------------------------------------


def call_while_frozen(
    server: RedisServer, func: Callable[[], Any], frozen_for: float
) -> tuple[BaseException | None, Any, float]:
    """Freeze ``server``, call ``func`` in a thread, thaw once it returned or after
    ``frozen_for`` seconds; (error or None, result, seconds the call took)."""
    box: list[tuple[BaseException | None, Any, float]] = []

    def target() -> None:
        began = time.monotonic()
        try:
            result = func()
        except BaseException as exc:
            box.append((exc, None, time.monotonic() - began))
        else:
            box.append((None, result, time.monotonic() - began))

    server.freeze()
    try:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(frozen_for)
    finally:
        server.thaw()
    thread.join(20)
    if thread.is_alive():
        pytest.fail("the call did not return even 20 s after the server was thawed")
    return box[0]


def test_a_timeout_holds_against_a_frozen_server(redis_server: RedisServer) -> None:
    """invoke with timeout=2 against a server that stopped answering fails within 3.5 s, not when it wakes."""
    conn = RedisPubSubConnection.from_url(redis_server.url, prefix="faults-frozen", lease=5)
    try:
        pubsub = local_chain(lambda x: x * 2, conn)
        assert call_with_deadline(lambda: pubsub.invoke(1), 20) == [2]  # connected and warm
        error, result, took = call_while_frozen(redis_server, lambda: pubsub.invoke(2, {"timeout": 2}), 8)
    finally:
        conn.close()
    assert error is not None, f"invoke returned {result!r} after {took:.1f}s, once the server was thawed"
    assert isinstance(error, (RunTimeoutError, ConnectionFailedError)), repr(error)
    assert took < 2 + 1.5, f"invoke took {took:.1f}s with timeout=2 against a frozen server"


def test_a_socket_timeout_turns_a_frozen_server_into_a_connection_error(redis_server: RedisServer) -> None:
    """With socket_timeout=1 and no run timeout, invoke on a frozen server fails within 5 s."""
    conn = RedisPubSubConnection.from_url(redis_server.url, prefix="faults-frozen-socket", socket_timeout=1)
    try:
        pubsub = local_chain(lambda x: x * 2, conn)
        assert call_with_deadline(lambda: pubsub.invoke(1), 20) == [2]
        error, result, took = call_while_frozen(redis_server, lambda: pubsub.invoke(2), 8)
    finally:
        conn.close()
    assert error is not None, f"invoke returned {result!r} after {took:.1f}s, once the server was thawed"
    assert isinstance(error, ConnectionFailedError), repr(error)
    assert took < 5, f"invoke took {took:.1f}s with socket_timeout=1 against a frozen server"


# -- 4. resuming after a drop ----------------------------------------------------------


class StepFailed(Exception):
    """The failure the step of the resume test raises after dropping the connections."""


@pytest.mark.anyio
async def test_a_resume_after_a_dropped_connection_does_not_wait_for_the_lease(
    redis_server: RedisServer,
) -> None:
    """A step that drops the connections and fails holds nothing: the resume does not wait the 30 s lease."""
    calls: list[int] = []

    async def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            await anyio.to_thread.run_sync(redis_server.kill_clients)
            raise StepFailed("boom")
        return x * 10

    async with RedisPubSubConnection.from_url(redis_server.url, prefix="faults-resume", lease=30) as conn:
        pubsub = local_chain(flaky, conn)
        with anyio.fail_after(10), pytest.raises(StepFailed):
            await pubsub.ainvoke(4, {"state_id": "resume"})
        began = time.monotonic()
        with anyio.move_on_after(10) as waited:
            out = await pubsub.ainvoke(None, {"state_id": "resume"})
        took = time.monotonic() - began
        if waited.cancelled_caught:
            pytest.fail(
                "the resume still waited after 10 s: the failed call's delivery is held for the lease"
            )
        stored = pairs(await pubsub.apeek("resume"))
    assert took < 5, f"the resume took {took:.1f}s"
    assert out == [40]
    assert calls == [4, 4]
    assert stored == [("__in__", 4), ("__out__", 40)]


# -- 5. the first calls after a reconnect, and commits cut off ---------------------------


def test_the_first_calls_after_idle_connections_were_dropped_succeed(redis_server: RedisServer) -> None:
    """After Redis dropped the idle pooled connections, the next peek and invoke succeed at once."""
    conn = RedisPubSubConnection.from_url(redis_server.url, prefix="faults-idle")
    try:
        pubsub = local_chain(lambda x: x * 2, conn)
        assert call_with_deadline(lambda: pubsub.invoke(1, {"state_id": "idle"}), 20) == [2]
        assert redis_server.kill_clients() >= 1
        assert pairs(call_with_deadline(lambda: pubsub.peek("idle"), 20)) == [("__in__", 1), ("__out__", 2)]
        assert call_with_deadline(lambda: pubsub.invoke(5, {"state_id": "idle"}), 20) == [10]
    finally:
        conn.close()


@dataclass
class CutRun:
    """What a run through a cut call left: the OUT values the calls returned, the
    errors met, the stored log as (topic, value), what is outstanding, the proxy."""

    returned: list[Any]
    errors: list[Exception]
    stored: list[tuple[str, Any]]
    left: dict[str, int]
    proxy: CuttingProxy


async def run_through_a_cut(
    redis_server: RedisServer,
    prefix: str,
    make: Callable[[RedisPubSubConnection], PubSub],
    warm_up: tuple[Any, list[Any]],
    marker: bytes,
    cut: str,
    value: Any,
) -> CutRun:
    """Invoke ``value`` (state id "cut") on ``make(conn)``, whose connection goes through a
    proxy that cuts the call carrying ``marker`` (before Redis ran it, or after, losing its
    reply), and resume once if that call failed. A first run of ``warm_up`` (input, its
    result) loads the scripts, so that the cut call is not answered NOSCRIPT."""
    proxy = CuttingProxy(redis_server.port)
    returned: list[Any] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        conn = RedisPubSubConnection.from_url(proxy.url, prefix=prefix, lease=30)
        try:
            pubsub = make(conn)
            assert await pubsub.ainvoke(warm_up[0], {"state_id": "warm-up"}) == warm_up[1]
            proxy.arm(marker, cut)
            with anyio.fail_after(20):
                try:
                    returned += await pubsub.ainvoke(value, {"state_id": "cut"})
                except ConnectionFailedError as exc:
                    errors.append(exc)
                    returned += await pubsub.ainvoke(None, {"state_id": "cut"})  # the one resume
                stored = pairs(await pubsub.apeek("cut"))
                left = await conn.outstanding("cut", pubsub.process_names)
        finally:
            await conn.aclose()
            tg.cancel_scope.cancel()
    return CutRun(returned, errors, stored, left, proxy)


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cut",
    [
        pytest.param("reply", id="commit-executed-reply-lost"),
        pytest.param("request", id="commit-never-executed"),
    ],
)
async def test_a_commit_cut_off_stores_and_returns_everything_once(
    redis_server: RedisServer, cut: str
) -> None:
    """A commit cut off before Redis ran it or after (reply lost) stores and returns each message once."""
    run = await run_through_a_cut(
        redis_server, f"faults-cut-{cut}", lambda conn: local_chain(lambda x: f"committed-{x}", conn),
        (1, ["committed-1"]), b"committed-7", cut, 7,  # only the commit of the step's output carries it
    )  # fmt: skip
    returned, errors, stored, proxy = run.returned, run.errors, run.stored, run.proxy
    assert proxy.fired.is_set(), "the proxy never saw the commit"
    if cut == "reply":  # the commit ran: its answer was no error (such as NOSCRIPT)
        assert proxy.dropped_reply[:1] == b"*", proxy.dropped_reply
    assert returned == ["committed-7"], (
        f"OUT values returned over the calls: {returned!r} (errors {errors!r})"
    )
    assert stored == [("__in__", 7), ("__out__", "committed-7")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cut",
    [
        pytest.param("reply", id="ack-executed-reply-lost"),
        pytest.param("request", id="ack-never-executed"),
    ],
)
async def test_an_ack_of_a_rejected_message_cut_off_loses_and_repeats_nothing(
    redis_server: RedisServer, cut: str
) -> None:
    """The one call acking a message a predicate rejected (and fetching the next), cut off before
    or after Redis ran it: the run still returns each matching result once and stores each once."""
    from permflow.connections.redis._scripts import ACK_FETCH

    numbers = Topic("numbers")

    def make(conn: RedisPubSubConnection) -> PubSub:
        return PubSub(
            Topic.IN.subscribe() | (lambda n: list(range(n))) | numbers.publish_each(),
            numbers.subscribe(when=lambda n: n % 2 == 0) | (lambda n: n * 10) | Topic.OUT.publish(),
            connection=conn,
        )

    run = await run_through_a_cut(redis_server, f"faults-ack-{cut}", make, (2, [0]), _sha(ACK_FETCH), cut, 6)
    returned, stored, left, proxy = run.returned, run.stored, run.left, run.proxy
    assert proxy.fired.is_set(), "the proxy never saw an ack"
    assert sorted(returned) == [0, 20, 40]
    assert sorted(v for t, v in stored if t == "__out__") == [0, 20, 40]
    assert sorted(v for t, v in stored if t == "numbers") == list(range(6))
    assert len(stored) == 1 + 6 + 3
    assert set(left.values()) == {0}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cut",
    [
        pytest.param("reply", id="start-executed-reply-lost"),
        pytest.param("request", id="start-never-executed"),
    ],
)
async def test_a_start_cut_off_stores_the_input_once_and_the_run_finishes(
    redis_server: RedisServer, cut: str
) -> None:
    """The one call that registers a run, stores its input and fetches its first delivery,
    cut off before or after Redis ran it: the input is stored once and the run returns its
    result once."""
    from permflow.connections.redis._start_scripts import START

    middle = Topic("middle")

    def make(conn: RedisPubSubConnection) -> PubSub:
        return PubSub(
            Topic.IN.subscribe() | (lambda n: n + 1) | middle.publish(),
            middle.subscribe() | (lambda n: n * 10) | Topic.OUT.publish(),
            connection=conn,
        )

    run = await run_through_a_cut(redis_server, f"faults-start-{cut}", make, (1, [20]), _sha(START), cut, 4)
    returned, stored, left, proxy = run.returned, run.stored, run.left, run.proxy
    assert proxy.fired.is_set(), "the proxy never saw a start"
    assert returned == [50]
    assert stored == [("__in__", 4), ("middle", 5), ("__out__", 50)]
    assert set(left.values()) == {0}


@pytest.mark.anyio
@pytest.mark.parametrize("cut", ["reply", "request"])
async def test_an_ack_and_fetch_cut_off_acks_once_and_returns_what_it_fetched(
    redis_server: RedisServer, cut: str
) -> None:
    """ack_and_fetch sent again after its connection was cut returns the next delivery (which a
    first send that ran had already handed out), acked nothing twice, and stored nothing."""
    from permflow import Message, Subscription
    from permflow.connections.redis._scripts import ACK_FETCH

    proxy = CuttingProxy(redis_server.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        conn = RedisPubSubConnection.from_url(proxy.url, prefix=f"faults-ackfetch-{cut}", lease=30)
        try:
            with anyio.fail_after(20):
                await conn.register("s", [Subscription("p", "t")])
                await conn.publish("s", [Message("t", v, "s", 0.0) for v in (1, 2, 3)])
                (first,) = await conn.fetch("s", "p", owner="o", limit=1)
                # loads the script, so that the cut call is not answered NOSCRIPT
                await conn.ack_and_fetch(first, owner="other")
                proxy.arm(hashlib.sha1(ACK_FETCH.encode()).hexdigest().encode(), cut)
                fetched = await conn.ack_and_fetch(first, owner="o", limit=1)
                counts = await conn.outstanding("s", ["p"])
                rest = await conn.fetch("s", "p", owner="another")
                log = await conn.apeek("s")
        finally:
            await conn.aclose()
            tg.cancel_scope.cancel()
    assert proxy.fired.is_set(), "the proxy never saw the call"
    assert fetched is not None and [(d.messages[0].value, d.attempt) for d in fetched] == [(2, 1)]
    assert counts == {"p": 2}  # 1 acked once; 2 held by o; 3 not yet fetched
    assert [d.messages[0].value for d in rest] == [3]
    assert [m.value for m in log] == [1, 2, 3]


# -- 6. a corrupt run in the listing -----------------------------------------------------


def test_a_corrupt_run_does_not_break_the_listing(redis_server: RedisServer) -> None:
    """run_summaries and `permflow runs` list healthy runs as usual and a run with a corrupt key as broken."""
    prefix, healthy = "faults-listing", ["healthy-a", "healthy-b"]
    conn = RedisPubSubConnection.from_url(redis_server.url, prefix=prefix)
    try:
        pubsub = local_chain(lambda x: x * 2, conn)
        for state_id in [*healthy, "corrupt-run"]:
            assert call_with_deadline(lambda s=state_id: pubsub.invoke(1, {"state_id": s}), 20) == [2]
        with redis_server.admin() as admin:
            admin.set(f"{{{prefix}:corrupt-run}}:n", "not a hash")
        summaries = call_with_deadline(conn.run_summaries, 20)
    finally:
        conn.close()
    by_id = {row["state_id"]: row for row in summaries}
    assert sorted(by_id) == ["corrupt-run", *healthy], summaries
    for state_id in healthy:
        row = by_id[state_id]
        assert row.get("error") is None and row["outstanding"] == 0, row
        assert isinstance(row["updated_at"], float) and row["updated_at"] > 0, row
    error = by_id["corrupt-run"].get("error")
    assert isinstance(error, str) and re.search("wrongtype|wrong type", error, re.IGNORECASE), by_id

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "permflow", "runs", "--redis", redis_server.url, "--prefix", prefix],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for state_id in healthy:
        (line,) = [line for line in lines if state_id in line]
        assert not re.search("broken|error", line, re.IGNORECASE), result.stdout
    (line,) = [line for line in lines if "corrupt-run" in line]
    assert re.search("broken|error", line, re.IGNORECASE), result.stdout


# -- 7. a corrupt state id under workers ---------------------------------------------------


@pytest.mark.anyio
async def test_a_corrupt_state_id_is_quarantined_and_workers_live_on(redis_server: RedisServer) -> None:
    """A state id with a corrupt key fails its client and is quarantined; the workers live on."""
    prefix, lease = "faults-quarantine", 2.0
    outcomes = Outcomes()
    async with worker_pool(redis_server.url, prefix, lease=lease) as pool:
        workers = [await pool.start("quick", f"w{k}") for k in (1, 2)]
        client = workers_client(fault_app.quick, redis_server.url, prefix, lease)

        def quarantined() -> list[str]:
            return [line for w in workers for line in w.lines if "quarantined" in line and "corrupt" in line]

        def healthy(x: int) -> Callable[[], Awaitable[Any]]:
            return lambda: client.ainvoke(x, {"state_id": f"healthy-{x}"})

        try:
            with anyio.fail_after(90):
                assert values(await client.ainvoke(0, {"state_id": "corrupt"})) == [fault_app.expected(0)]
                with redis_server.admin() as admin:
                    admin.set(f"{{{prefix}:corrupt}}:n", "not a hash")
                async with anyio.create_task_group() as tg:
                    # input None: the client announces the state id, and a worker meets the corrupt key
                    tg.start_soon(
                        outcomes.run, "corrupt", lambda: client.ainvoke(None, {"state_id": "corrupt"})
                    )
                    for x in range(1, 7):
                        tg.start_soon(outcomes.run, x, healthy(x))
                    with anyio.move_on_after(20):
                        await pool.wait_until(
                            lambda: bool(quarantined()) or not all(w.alive for w in workers)
                        )
                    if all(w.alive for w in workers):
                        for x in range(7, 11):
                            tg.start_soon(outcomes.run, x, healthy(x))
                        with anyio.move_on_after(30):
                            await outcomes.wait_for(["corrupt", *range(1, 11)])
                    tg.cancel_scope.cancel()  # what has not ended by now hangs
        finally:
            await client.connection.aclose()
        alive = [w.alive for w in workers]
    assert all(alive), "a worker died on the corrupt state id:\n" + pool.tails()
    assert outcomes.summary(range(1, 11)) == {x: [fault_app.expected(x)] for x in range(1, 11)}
    corrupt = outcomes.results.get("corrupt", "no outcome: the call hung")
    assert isinstance(corrupt, PermflowError), f"the client of the corrupt state id got {corrupt!r}"
    assert len(quarantined()) == 1, pool.tails()


# -- 8. a message that crashes its worker --------------------------------------------------


@pytest.mark.anyio
async def test_a_message_that_crashes_its_worker_is_dead_lettered(redis_server: RedisServer) -> None:
    """A message whose step kills its worker is dead-lettered after max_deliveries; healthy runs finish."""
    # a lease of 2 s: on a loaded machine a live worker must not miss its renewals
    prefix, lease, poison = "faults-poison", 2.0, fault_app.POISON
    exits: list[tuple[str, int]] = []
    outcomes = Outcomes()
    async with worker_pool(redis_server.url, prefix, lease=lease) as pool:
        first = [await pool.start("poison", f"w{k}.1") for k in (1, 2)]
        client = workers_client(fault_app.poison, redis_server.url, prefix, lease)

        async def keep_alive(slot: int, worker: WorkerProcess) -> None:
            """The supervisor of one slot: restart its worker whenever it dies."""
            for incarnation in range(2, 100):
                exits.append((worker.name, await worker.process.wait()))
                worker = await pool.start("poison", f"w{slot}.{incarnation}")

        def submit(x: int) -> Callable[[], Awaitable[Any]]:
            return lambda: client.ainvoke(x, {"state_id": f"run-{x}"})

        try:
            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for slot, worker in enumerate(first, start=1):
                        tg.start_soon(keep_alive, slot, worker)
                    for x in [poison, *range(1, 10)]:  # each run on its own: abatch would cancel the rest
                        tg.start_soon(outcomes.run, x, submit(x))
                    with anyio.move_on_after(75):
                        await outcomes.wait_for([poison, *range(1, 10)])
                    tg.cancel_scope.cancel()  # the supervisors, and runs that hang
                # the client hears of the dead letter just before its commit lands: wait for it
                with anyio.move_on_after(10):
                    while "__error__" not in [m.topic for m in await client.apeek(f"run-{poison}")]:
                        await client.connection.wait_for_change(f"run-{poison}", 0.5)
                stored = await client.apeek(f"run-{poison}")
        finally:
            await client.connection.aclose()
    # one assert for both, so that a failure shows every run's outcome
    summary = outcomes.summary([poison, *range(1, 10)])
    poisoned = outcomes.results.get(poison)
    assert isinstance(poisoned, PoisonMessageError) and all(
        summary[x] == [fault_app.expected(x)] for x in range(1, 10)
    ), f"outcomes {summary}, poison run: {poisoned!r}\n{pool.tails()}"
    assert [m.topic for m in stored].count("__error__") == 1, pairs(stored)
    # max_deliveries=3 crashes, unless a worker too slow to renew lost the poison to the other
    # worker mid-step (both then crash on one charge): a few more, never unbounded
    assert 1 <= len(exits) <= 6 and all(code == 1 for _, code in exits), exits


# -- ACL users -----------------------------------------------------------------------------


def create_app_user(server: RedisServer, rule: str) -> None:
    with server.admin() as admin:
        admin.execute_command("ACL", "SETUSER", "app", "reset", "on", ">secret", *rule.split())


@pytest.mark.anyio
async def test_acl_restricted_user(redis_server: RedisServer) -> None:
    """A user limited to APP_ACL runs, peeks, deletes and lists runs, and serves them as a worker."""
    # The minimal working rule, found by experiment (each category is needed: without
    # @scripting no EVALSHA; @stream, @hash, @set, @string are called inside the
    # scripts; @keyspace gives SCAN, EXISTS, DEL, PEXPIRE), for prefix "myapp":
    #
    #   ACL SETUSER app on >secret ~{myapp:* ~{myapp}:* resetchannels
    #       -@all +@scripting +@stream +@hash +@set +@string +@keyspace -@dangerous
    #
    # ~{myapp:* covers the keys of every run ({myapp:<state id>}:...), ~{myapp}:* the
    # workers' announcement stream {myapp}:work; no channels are used.
    create_app_user(redis_server, APP_ACL)
    url = redis_server.url_for("app", "secret")
    async with RedisPubSubConnection.from_url(url, prefix="myapp", lease=2) as conn:
        pubsub = fault_app.quick.with_connection(conn)
        with anyio.fail_after(60):
            assert values(await pubsub.ainvoke(1, {"state_id": "local"})) == [fault_app.expected(1)]
            assert values(await pubsub.ainvoke(2)) == [fault_app.expected(2)]
            assert [m.topic for m in await pubsub.apeek("local")] == ["__in__", "work", "done", "__out__"]
            async with worker_pool(url, "myapp", lease=2) as pool:
                worker = await pool.start("quick", "acl")
                outs = await pubsub.with_workers().ainvoke(3, {"state_id": "remote"})
            assert outs == [{"value": fault_app.expected(3), "pid": worker.process.pid}], pool.tails()
            summaries = await conn.arun_summaries()
            assert sorted(row["state_id"] for row in summaries) == ["local", "remote"]
            await pubsub.adelete("local")
            assert await pubsub.apeek("local") == []


def test_noperm_hint(redis_server: RedisServer) -> None:
    """A user missing a needed command gets an error saying NOPERM and naming the key patterns."""
    create_app_user(redis_server, APP_ACL + " -evalsha")
    conn = RedisPubSubConnection.from_url(redis_server.url_for("app", "secret"), prefix="myapp")
    try:
        pubsub = local_chain(lambda x: x * 2, conn)
        with pytest.raises(ConnectionFailedError) as info:
            call_with_deadline(lambda: pubsub.invoke(1, {"state_id": "noperm"}), 20)
    finally:
        conn.close()
    text = str(info.value)
    assert "NOPERM" in text and "~{myapp:*" in text and "~{myapp}:*" in text, text


def test_wrong_password_hint(redis_server: RedisServer) -> None:
    """A wrong password gives a ConnectionFailedError about authentication that promises no reconnect."""
    create_app_user(redis_server, APP_ACL)
    conn = RedisPubSubConnection.from_url(redis_server.url_for("app", "not-the-secret"), prefix="myapp")
    try:
        with pytest.raises(ConnectionFailedError) as info:
            call_with_deadline(lambda: conn.peek("s"), 20)
    finally:
        conn.close()
    text = str(info.value)
    assert re.search("authenticat|credential", text, re.IGNORECASE), text
    assert "the next call reconnects" not in text, text
    assert "not-the-secret" not in text, text
