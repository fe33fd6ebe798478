"""Steps in worker processes: ``RunnableLambda(f, execution="process")``.

The steps themselves live in ``tests/process_steps.py`` (a worker process
imports them by name). Starting a process costs ~0.1 s, so most tests share
one PubSub and its pool; the tests about a pool's lifetime make their own.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from process_steps import (
    HoldsALock,
    StepFailed,
    busy,
    exit_abruptly,
    fail,
    fail_unpicklably,
    give_a_lock,
    meet,
    pid_of,
    record_then_wait,
    span,
    square,
    stale_shadowed,
)

from permflow import (
    ConfigError,
    DefinitionError,
    InMemoryPubSubConnection,
    PubSub,
    RedisPubSubConnection,
    RunnableLambda,
    SerializationError,
    Topic,
)
from permflow._processes import CLOSE_GRACE_SECONDS

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def in_process(func: Any) -> RunnableLambda:
    return RunnableLambda(func, execution="process")


def one_step(func: Any, **settings: Any) -> PubSub:
    """IN → ``func`` in a worker process → OUT."""
    return PubSub(Topic.IN.subscribe() | in_process(func) | Topic.OUT.publish(), **settings)


def fanned_out(func: Any, **settings: Any) -> PubSub:
    """IN (a list) → ``func`` on each element, in worker processes → OUT (the list)."""
    return PubSub(Topic.IN.subscribe() | in_process(func).map() | Topic.OUT.publish(), **settings)


def wait_until(done: Callable[[], bool], seconds: float = 20) -> None:
    """Poll ``done`` (a fact of another process) until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {seconds} s")
        time.sleep(0.005)  # another process's progress, which no event here can signal


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, PubSub]]:
    """PubSubs whose pools the tests of this module share (closed at the end)."""
    pubsubs = {
        "pid_of": one_step(pid_of),
        "fail": one_step(fail),
        "fail_unpicklably": one_step(fail_unpicklably),
        "give_a_lock": one_step(give_a_lock),
        "locked_input": PubSub(
            Topic.IN.subscribe() | (lambda x: threading.Lock()) | in_process(square) | Topic.OUT.publish()
        ),
    }
    yield pubsubs
    for pubsub in pubsubs.values():
        pubsub.close()


# -- where steps run ----------------------------------------------------------


async def test_a_step_runs_in_another_process(anyio_backend: str, shared: dict[str, PubSub]) -> None:
    """The step's output carries a pid other than this process's."""
    with anyio.fail_after(30):
        [out] = await shared["pid_of"].ainvoke(21)
    assert out["value"] == 21
    assert out["pid"] != os.getpid()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py has no trio support
async def test_a_step_runs_in_another_process_on_redis(
    anyio_backend: str, redis_url: str, redis_prefix: str
) -> None:
    """Over Redis too, the step runs in a worker process and its output is stored."""
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as conn:
        async with one_step(pid_of, connection=conn) as pubsub:
            with anyio.fail_after(30):
                [out] = await pubsub.ainvoke(5, {"state_id": "s"})
            assert [m.value for m in await pubsub.apeek("s")] == [5, out]
    assert out["value"] == 5 and out["pid"] != os.getpid()


async def test_outside_a_run_a_step_uses_the_module_pool(anyio_backend: str) -> None:
    """``ainvoke`` on the step alone (no PubSub) still runs it in a worker process."""
    with anyio.fail_after(30):
        out = await in_process(pid_of).ainvoke("x")
    assert out == {"value": "x", "pid": out["pid"]} and out["pid"] != os.getpid()


def test_sync_invoke_of_a_chain_runs_the_step_in_a_process() -> None:
    """The sync API works too: ``chain.invoke`` on a plain chain with a process step."""
    chain = in_process(square) | (lambda x: x + 1)
    assert chain.invoke(7) == 50


# -- what comes back ----------------------------------------------------------


async def test_an_exception_keeps_its_type_and_message(anyio_backend: str, shared: dict[str, PubSub]) -> None:
    """The user's own exception class raised in the worker process fails the run as itself."""
    with anyio.fail_after(30), pytest.raises(StepFailed) as info:
        await shared["fail"].ainvoke(3)
    assert type(info.value) is StepFailed and str(info.value) == "cannot handle 3"


async def test_an_unpicklable_exception_comes_back_as_a_runtime_error_naming_it(
    anyio_backend: str, shared: dict[str, PubSub]
) -> None:
    """An exception that cannot be pickled back arrives as a RuntimeError with its type and message."""
    with anyio.fail_after(30), pytest.raises(RuntimeError) as info:
        await shared["fail_unpicklably"].ainvoke(1)
    assert "process_steps.Unpicklable: 7: no 1" in str(info.value)
    assert "cannot be pickled" in str(info.value)


async def test_an_unpicklable_result_is_a_serialization_error(
    anyio_backend: str, shared: dict[str, PubSub]
) -> None:
    """A result that cannot be pickled fails the step with SerializationError naming its type and the step."""
    with anyio.fail_after(30), pytest.raises(SerializationError) as info:
        await shared["give_a_lock"].ainvoke(1)
    assert "_thread.lock" in str(info.value) and "'give_a_lock'" in str(info.value)


async def test_an_unpicklable_input_is_a_serialization_error_before_anything_is_sent(
    anyio_backend: str, shared: dict[str, PubSub]
) -> None:
    """An input that cannot be pickled fails with SerializationError naming its type and the
    step; no process pool was started for it."""
    pubsub = shared["locked_input"]
    with anyio.fail_after(30), pytest.raises(SerializationError) as info:
        await pubsub.ainvoke(1)
    assert "lock" in str(info.value) and "'square'" in str(info.value)
    assert pubsub.services.process_pool()._executor is None


async def test_a_dead_worker_process_fails_the_step_and_the_pool_is_replaced(anyio_backend: str) -> None:
    """A step whose process exits abruptly fails with BrokenProcessPool naming the step; the
    next call on the same PubSub gets a working pool."""
    pubsub = PubSub(
        Topic.IN.subscribe() | {"dies": in_process(exit_abruptly)} | Topic.OUT.publish(),
        Topic("ok").subscribe() | in_process(square) | Topic.OUT.publish(),
        inputs=["ok"],
    )
    async with pubsub:
        with anyio.fail_after(30):
            with pytest.raises(BrokenProcessPool, match="'exit_abruptly' died"):
                await pubsub.ainvoke(1)
            assert await pubsub.ainvoke(4, topic="ok") == [16]


# -- bad definitions ----------------------------------------------------------


def _nested(x: Any) -> Any:
    def inner(y: Any) -> Any:
        return y

    return inner


async def _async_step(x: Any) -> Any:
    return x


@pytest.mark.parametrize(
    ("func", "problem"),
    [
        (lambda x: x, "is a lambda"),
        (_nested(0), "defined inside a function"),
        (_async_step, "is an async function"),
        (functools.partial(_async_step), "is an async function"),
        (HoldsALock(), "cannot be sent to a worker process"),
        (HoldsALock().__call__, "cannot be sent to a worker process"),
        (stale_shadowed, "not the same object"),
    ],
    ids=["lambda", "nested", "async", "async-partial", "unpicklable-object", "its-bound-method", "shadowed"],
)
def test_a_step_that_cannot_be_imported_is_refused_when_built(func: Any, problem: str) -> None:
    """Functions a worker process cannot import by name fail at ``RunnableLambda(...)`` with
    DefinitionError naming the problem and the fix."""
    with pytest.raises(DefinitionError) as info:
        in_process(func)
    assert problem in str(info.value)
    if problem != "is an async function":
        assert "top level of a module" in str(info.value)


def test_a_function_of_an_interactive_session_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A function defined in a ``__main__`` without a file (notebook, REPL) cannot be imported."""

    def typed_in(x: Any) -> Any:
        return x

    typed_in.__module__ = "__main__"
    typed_in.__qualname__ = "typed_in"
    monkeypatch.setitem(sys.modules, "__main__", type(sys)("__main__"))
    with pytest.raises(DefinitionError, match="interactive session"):
        in_process(typed_in)


def test_a_picklable_partial_of_a_module_function_is_accepted() -> None:
    """What pickles by reference is fine: a partial of a module-level function."""
    assert in_process(functools.partial(busy)).invoke(10) != os.getpid()


def test_an_unknown_execution_names_process_among_the_choices() -> None:
    """A misspelt execution lists the four policies."""
    with pytest.raises(ConfigError, match="'process'"):
        RunnableLambda(square, execution="processes")  # type: ignore[arg-type]


# -- max_processes ------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_invalid_max_processes_is_refused(value: Any) -> None:
    """max_processes must be a positive integer, in the constructor and in config."""
    with pytest.raises(ConfigError, match="max_processes"):
        one_step(square, max_processes=value)
    with pytest.raises(ConfigError, match="max_processes"):
        one_step(square).invoke(1, {"max_processes": value})


def test_max_processes_carries_over_to_another_connection() -> None:
    """``with_connection`` shares the pool: a loop of moved PubSubs starts no new processes."""
    original = one_step(square, max_processes=3)
    moved = original.with_connection(InMemoryPubSubConnection())
    assert moved.services.max_processes == 3
    assert moved.services.process_pool() is original.services.process_pool()
    assert moved.services.process_pool().max_processes == 3


async def test_two_processes_run_at_once_and_no_more_than_max_processes(
    anyio_backend: str, tmp_path: Path
) -> None:
    """Six calls fanned out with max_processes=2 ran in exactly two processes, two of them at
    once (each call waits until a call in another process arrived)."""
    async with fanned_out(meet, max_processes=2) as pubsub:
        with anyio.fail_after(30):
            [pids] = await pubsub.ainvoke([(str(tmp_path), i) for i in range(6)])
    assert len(set(pids)) == 2 and os.getpid() not in pids


async def test_max_processes_in_config_serialises_one_call(anyio_backend: str) -> None:
    """With max_processes=1 in config, a call's process steps never overlap, though its pool has two."""
    async with fanned_out(span, max_processes=2) as pubsub:
        with anyio.fail_after(30):
            [spans] = await pubsub.ainvoke([("", 200_000)] * 4, {"max_processes": 1})
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_four_cpu_bound_calls_use_both_processes_of_a_pool_of_two() -> None:
    """Four busy loops fanned out with max_processes=2 are spread over two processes."""
    with fanned_out(busy, max_processes=2) as pubsub:
        [pids] = pubsub.invoke([3_000_000] * 4)
    assert len(set(pids)) == 2


# -- lifetime -----------------------------------------------------------------


async def test_close_shuts_the_pool_down(anyio_backend: str, tmp_path: Path) -> None:
    """After ``aclose`` the pool's processes have exited; the PubSub can run again with a new pool."""
    pubsub = fanned_out(meet, max_processes=2)
    first, again = tmp_path / "first", tmp_path / "again"
    first.mkdir()
    again.mkdir()
    with anyio.fail_after(30):
        [pids] = await pubsub.ainvoke([(str(first), 0), (str(first), 1)])
        await pubsub.aclose()
    assert all(gone(pid) for pid in pids)
    with anyio.fail_after(30):
        [new] = await pubsub.ainvoke([(str(again), 0), (str(again), 1)])
        await pubsub.aclose()
    assert not set(new) & set(pids)


async def test_a_cancelled_run_abandons_its_calls(anyio_backend: str, tmp_path: Path) -> None:
    """Stopping a run while a process step runs returns at once; the other call, queued
    behind it (max_processes=1), never runs, and the pool closes."""
    pubsub = fanned_out(record_then_wait, max_processes=1)
    try:
        with anyio.fail_after(30):
            async with pubsub.astream([(str(tmp_path), 0), (str(tmp_path), 1)]) as messages:
                async for _ in messages:  # the input; then wait until a call runs, and leave
                    await anyio.to_thread.run_sync(wait_until, lambda: any(tmp_path.iterdir()))
                    break
    finally:
        (tmp_path / "go").touch()
        with anyio.fail_after(30):
            await pubsub.aclose()
    ran = [p.name for p in os.scandir(tmp_path) if p.name != "go"]
    assert ran in (["ran-0"], ["ran-1"])


async def test_close_terminates_a_call_that_outlives_the_grace_period(
    anyio_backend: str, tmp_path: Path
) -> None:
    """A call abandoned by a stopped run and still running when the PubSub closes is given
    CLOSE_GRACE_SECONDS, then its process is terminated: ``aclose`` does not wait for it."""
    pubsub = one_step(record_then_wait)
    with anyio.fail_after(30):
        async with pubsub.astream((str(tmp_path), 0)) as messages:
            async for _ in messages:  # the input; then wait until the call runs, and leave
                await anyio.to_thread.run_sync(wait_until, lambda: any(tmp_path.iterdir()))
                break
    pid = int((tmp_path / "ran-0").read_text())
    with anyio.fail_after(CLOSE_GRACE_SECONDS + 10):  # far less than the step's 20 s wait
        await pubsub.aclose()
    assert gone(pid)


def test_the_pools_are_shut_down_at_interpreter_exit(tmp_path: Path) -> None:
    """A script that used process steps (and never closed anything) exits cleanly and its
    worker processes are gone after it."""
    script = tmp_path / "script.py"
    script.write_text(
        "from permflow import PubSub, RunnableLambda, Topic\n"
        "from process_steps import pid_of\n"
        "if __name__ == '__main__':\n"
        "    step = RunnableLambda(pid_of, execution='process')\n"
        "    pubsub = PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())\n"
        "    print(step.invoke(0)['pid'], pubsub.invoke(0)[0]['pid'])\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pids = [int(pid) for pid in done.stdout.split()]
    wait_until(lambda: all(gone(pid) for pid in pids))  # they are not our children to wait for


async def test_waiting_for_process_calls_holds_no_thread(anyio_backend: str) -> None:
    """Fifty calls waiting for their processes hold none of the default thread limiter's
    tokens (the app's own to_thread calls are not starved), and a cancelled wait cancels
    a call that has not started."""
    from concurrent.futures import Future

    import anyio.to_thread
    from anyio import wait_all_tasks_blocked

    from permflow._processes import _result

    futures: list[Future[bytes]] = [Future() for _ in range(50)]
    results: list[bytes] = []

    async def wait(future: Future[bytes]) -> None:
        results.append(await _result(future))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for future in futures:
                tg.start_soon(wait, future)
            await wait_all_tasks_blocked()
            assert anyio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
            for k, future in enumerate(futures):
                future.set_result(b"%d" % k)
        assert sorted(results) == sorted(b"%d" % k for k in range(50))

        cancelled: Future[bytes] = Future()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_result, cancelled)
            await wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert cancelled.cancelled()
