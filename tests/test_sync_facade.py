"""The sync facade: invoke/stream/batch from threads, from inside event loops, and nested."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import anyio
import pytest
import trio
from helpers import call_with_deadline

from permflow import InMemoryPubSubConnection, Message, PubSub, RunnableLambda, Topic


def _doubler(connection: InMemoryPubSubConnection | None = None) -> PubSub:
    middle = Topic("middle")
    return PubSub(
        Topic.IN.subscribe() | (lambda x: x * 2) | middle.publish(),
        middle.subscribe() | Topic.OUT.publish(),
        connection=connection,
    )


# -- plain threads ----------------------------------------------------------


def test_invoke_from_a_plain_thread() -> None:
    """invoke() works from a thread that runs no event loop."""
    assert call_with_deadline(lambda: _doubler().invoke(21)) == [42]


def test_batch_from_a_plain_thread() -> None:
    """batch() runs independent runs from a plain thread, results in input order."""
    assert call_with_deadline(lambda: _doubler().batch([1, 2, 3])) == [[2], [4], [6]]


def test_batch_with_one_config_per_input_keeps_runs_apart() -> None:
    """batch() with per-input state ids stores each run under its own id."""
    pubsub = _doubler()
    assert pubsub.batch([1, 2], [{"state_id": "b1"}, {"state_id": "b2"}]) == [[2], [4]]
    assert [m.value for m in pubsub.peek("b1")] == [1, 2, 2]
    assert [m.value for m in pubsub.peek("b2")] == [2, 4, 4]


def test_stream_from_a_plain_thread() -> None:
    """stream() yields every message of the run, in publish order, from a plain thread."""

    def consume() -> list[tuple[str, Any]]:
        return [(m.topic, m.value) for m in _doubler().stream(5)]

    assert call_with_deadline(consume) == [("__in__", 5), ("middle", 10), ("__out__", 10)]


def test_sync_calls_share_one_long_lived_loop() -> None:
    """Sync calls from different threads run on one background loop thread, not a new loop each."""
    seen: list[threading.Thread] = []

    async def where(x: Any) -> Any:
        seen.append(threading.current_thread())
        return x

    pubsub = PubSub(Topic.IN.subscribe() | where | Topic.OUT.publish())
    pubsub.invoke(1)
    pubsub.invoke(2)
    call_with_deadline(lambda: pubsub.invoke(3))
    assert len(set(seen)) == 1
    assert seen[0] is not threading.current_thread()


def test_eight_threads_share_one_pubsub_and_connection() -> None:
    """Eight threads invoking one PubSub at once with their own state ids get only their own results."""
    connection = InMemoryPubSubConnection()
    pubsub = _doubler(connection)
    start = threading.Barrier(8)
    results: dict[int, list[list[Any]]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait(timeout=10)
            results[i] = [pubsub.invoke((i, k), {"state_id": f"thread-{i}"}) for k in range(10)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for i in range(8):
        assert results[i] == [[(i, k, i, k)] for k in range(10)]
        log = connection.peek(f"thread-{i}")
        assert len(log) == 30
        assert all(m.state_id == f"thread-{i}" for m in log)
        assert {m.value[0] for m in log} == {i}


def test_eight_threads_stream_at_once() -> None:
    """Eight threads streaming one PubSub at once each get exactly their own run's messages."""
    pubsub = _doubler()
    start = threading.Barrier(8)
    results: dict[int, list[tuple[str, Any, str]]] = {}

    def worker(i: int) -> None:
        start.wait(timeout=10)
        config = {"state_id": f"stream-{i}"}
        results[i] = [(m.topic, m.value, m.state_id) for m in pubsub.stream(i, config)]

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    for i in range(8):
        sid = f"stream-{i}"
        assert results[i] == [("__in__", i, sid), ("middle", 2 * i, sid), ("__out__", 2 * i, sid)]


# -- on the caller's thread -------------------------------------------------


def _where_inline() -> tuple[PubSub, list[threading.Thread]]:
    """A program of one plain function pinned inline, recording the thread it ran on."""
    seen: list[threading.Thread] = []

    def where(x: Any) -> Any:
        seen.append(threading.current_thread())
        return x

    step = RunnableLambda(where, execution="inline")
    return PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish()), seen


def test_plain_inline_steps_run_on_the_callers_thread() -> None:
    """A sync invoke/batch of plain functions running on the loop anyway runs on the calling thread."""

    def call() -> tuple[Any, Any, threading.Thread]:
        return pubsub.invoke(1), pubsub.batch([2, 3]), threading.current_thread()

    pubsub, seen = _where_inline()
    invoked, batched, caller = call_with_deadline(call)
    assert (invoked, batched) == ([1], [[2], [3]])
    assert seen == [caller, caller, caller]


def test_async_steps_stay_on_the_background_loop() -> None:
    """A program with an async step runs on the shared background loop, never the caller's thread."""
    seen: list[threading.Thread] = []

    async def where(x: Any) -> Any:
        seen.append(threading.current_thread())
        return x

    pubsub = PubSub(Topic.IN.subscribe() | where | Topic.OUT.publish())
    assert pubsub.invoke(1) == [1]
    assert seen[0] is not threading.current_thread()


def test_plain_inline_steps_inside_a_running_loop_run_elsewhere() -> None:
    """Under asyncio.run and trio.run, such a sync invoke runs off the (busy) caller's thread and works."""
    pubsub, seen = _where_inline()

    async def main() -> tuple[list[Any], threading.Thread]:
        return pubsub.invoke(7), threading.current_thread()

    for run in (lambda: asyncio.run(main()), lambda: trio.run(main)):
        seen.clear()
        out, caller = call_with_deadline(run)
        assert out == [7]
        assert seen and seen[0] is not caller


def test_nested_sync_invoke_from_a_step_on_the_callers_loop() -> None:
    """A step running on the caller's own loop that calls a sync invoke does not deadlock."""
    inner, _ = _where_inline()

    def outer_step(x: int) -> int:
        return int(inner.invoke(x)[0]) + 1

    step = RunnableLambda(outer_step, execution="inline")
    outer = PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())
    assert call_with_deadline(lambda: outer.invoke(1)) == [2]


def test_the_callers_loop_survives_an_interrupt() -> None:
    """KeyboardInterrupt in a run on the caller's thread is raised, and the next call there works."""

    def step(x: str) -> str:
        if x == "stop":
            raise KeyboardInterrupt
        return x

    pubsub = PubSub(Topic.IN.subscribe() | RunnableLambda(step, execution="inline") | Topic.OUT.publish())

    def call() -> list[Any]:
        with pytest.raises(KeyboardInterrupt):
            pubsub.invoke("stop")
        return pubsub.invoke("go")

    assert call_with_deadline(call) == ["go"]


def test_a_threads_own_loop_is_closed_when_the_thread_ends() -> None:
    """The event loop a thread's sync calls ran on is closed once that thread ends."""
    loops: list[asyncio.AbstractEventLoop] = []

    def where(x: Any) -> Any:
        loops.append(asyncio.get_running_loop())
        return x

    pubsub = PubSub(Topic.IN.subscribe() | RunnableLambda(where, execution="inline") | Topic.OUT.publish())
    thread = threading.Thread(target=lambda: pubsub.invoke(1), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    gc.collect()
    assert len(loops) == 1 and loops[0].is_closed()


# -- inside a running event loop (a notebook cell) ---------------------------


def test_invoke_inside_running_asyncio_loop() -> None:
    """Sync invoke/batch called from a coroutine under asyncio.run (as in Jupyter) work."""
    pubsub = _doubler()

    async def main() -> tuple[list[Any], list[Any]]:
        return pubsub.invoke(4), pubsub.batch([1, 2])

    assert call_with_deadline(lambda: asyncio.run(main())) == ([8], [[2], [4]])


def test_stream_inside_running_asyncio_loop() -> None:
    """Sync stream() iterated inside a coroutine under asyncio.run yields the run's messages."""
    pubsub = _doubler()

    async def main() -> list[Any]:
        return [m.value for m in pubsub.stream(3)]

    assert call_with_deadline(lambda: asyncio.run(main())) == [3, 6, 6]


def test_invoke_inside_running_trio_loop() -> None:
    """Sync invoke/batch called from a function under trio.run work."""
    pubsub = _doubler()

    async def main() -> tuple[list[Any], list[Any]]:
        return pubsub.invoke(4), pubsub.batch([1, 2])

    assert call_with_deadline(lambda: trio.run(main)) == ([8], [[2], [4]])


def test_stream_inside_running_trio_loop() -> None:
    """Sync stream() iterated inside trio.run yields the run's messages."""
    pubsub = _doubler()

    async def main() -> list[Any]:
        return [m.value for m in pubsub.stream(3)]

    assert call_with_deadline(lambda: trio.run(main)) == [3, 6, 6]


def test_chain_invoke_inside_running_loops() -> None:
    """A chain's sync invoke (a unit test of its steps) works inside asyncio.run and trio.run."""
    chain = Topic.IN.subscribe() | (lambda x: x * 3) | Topic.OUT.publish()

    async def main() -> Any:
        return chain.invoke(2)

    assert call_with_deadline(lambda: asyncio.run(main())) == 6
    assert call_with_deadline(lambda: trio.run(main)) == 6


# -- nested: a step calling another PubSub's sync API ------------------------


def _nesting(step_kind: str) -> PubSub:
    inner = _doubler()

    def sync_step(x: int) -> int:
        return int(inner.invoke(x)[0]) + 1

    async def async_step(x: int) -> int:
        return int(inner.invoke(x)[0]) + 1

    step: Any = {
        "auto": sync_step,
        "thread": RunnableLambda(sync_step, execution="thread"),
        "inline": RunnableLambda(sync_step, execution="inline"),
        "async": async_step,
    }[step_kind]
    return PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())


@pytest.mark.anyio
@pytest.mark.parametrize("step_kind", ["auto", "thread", "inline", "async"])
async def test_nested_sync_invoke_under_async_run(step_kind: str) -> None:
    """A step calling another PubSub's sync invoke works inside ainvoke on asyncio and trio."""
    with anyio.fail_after(20):
        assert await _nesting(step_kind).ainvoke(5) == [11]


@pytest.mark.parametrize("step_kind", ["auto", "thread"])
def test_nested_sync_invoke_under_sync_run(step_kind: str) -> None:
    """A step in a worker thread calling another PubSub's sync invoke works inside a sync invoke.

    Steps on the loop thread (inline, async) are covered in a fresh interpreter
    by test_execution.py, where a regression cannot wedge this session's loop.
    """
    assert call_with_deadline(lambda: _nesting(step_kind).invoke(5)) == [11]


@pytest.mark.anyio
async def test_nested_sync_invokes_from_many_steps_at_once() -> None:
    """Twenty concurrent steps each calling a sync invoke all finish."""
    inner = _doubler()
    work = Topic("work")

    def call(x: int) -> int:
        return int(inner.invoke(x)[0])

    pubsub = PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe() | call | Topic.OUT.publish(),
    )
    with anyio.fail_after(20):
        out = await pubsub.ainvoke(list(range(20)))
    assert sorted(out) == [2 * i for i in range(20)]


# -- leaving a stream early --------------------------------------------------


def test_break_out_of_stream_stops_a_blocked_async_step() -> None:
    """Breaking out of stream() returns promptly and cancels a step waiting on an event never set."""
    started = threading.Event()
    cancelled = threading.Event()
    never = anyio.Event  # created inside the step, on the run's loop

    async def blocked(x: Any) -> Any:
        started.set()
        try:
            await never().wait()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return x

    pubsub = PubSub(Topic.IN.subscribe() | blocked | Topic.OUT.publish())

    def consume() -> tuple[list[Message], float]:
        got: list[Message] = []
        for message in pubsub.stream("q", {"state_id": "break-async"}):
            got.append(message)
            assert started.wait(10)
            begin = time.perf_counter()
            break
        return got, time.perf_counter() - begin

    got, took = call_with_deadline(consume, seconds=15)
    assert [m.topic for m in got] == ["__in__"]
    assert took < 2.0
    assert cancelled.is_set()


def test_break_out_of_stream_abandons_a_blocked_sync_step() -> None:
    """Breaking out of stream() returns promptly even while a sync step is blocked in its thread."""
    started, release = threading.Event(), threading.Event()

    def blocked(x: Any) -> Any:
        started.set()
        release.wait(30)
        return x

    pubsub = PubSub(Topic.IN.subscribe() | blocked | Topic.OUT.publish())

    def consume() -> float:
        for _ in pubsub.stream("q", {"state_id": "break-sync"}):
            assert started.wait(10)
            begin = time.perf_counter()
            break
        return time.perf_counter() - begin

    try:
        assert call_with_deadline(consume, seconds=15) < 2.0
        assert [m.topic for m in pubsub.peek("break-sync")] == ["__in__"]
    finally:
        release.set()


def test_exception_in_stream_consumer_stops_the_run() -> None:
    """An exception raised by the consumer of stream() propagates and stops the run."""
    started, cancelled = threading.Event(), threading.Event()

    async def blocked(x: Any) -> Any:
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return x

    conn = InMemoryPubSubConnection()
    pubsub = PubSub(Topic.IN.subscribe() | blocked | Topic.OUT.publish(), connection=conn)

    def consume() -> None:
        for _ in pubsub.stream("q", {"state_id": "gave-up"}):
            assert started.wait(10)
            raise KeyError("consumer gave up")

    with pytest.raises(KeyError, match="consumer gave up"):
        call_with_deadline(consume, seconds=15)
    assert cancelled.wait(10)  # the run stopped: its step was cancelled
    # and its input stays pending for a resume, nothing was published
    assert [m.topic for m in conn.peek("gave-up")] == ["__in__"]


def test_step_error_surfaces_from_sync_stream() -> None:
    """A failing step's exception is raised from the sync stream() iterator."""

    def boom(x: Any) -> Any:
        raise LookupError(f"no {x}")

    pubsub = PubSub(Topic.IN.subscribe() | boom | Topic.OUT.publish())
    with pytest.raises(LookupError, match="no key"):
        call_with_deadline(lambda: list(pubsub.stream("key")))


def test_run_sync_of_a_coroutine_ending_cancelled_returns() -> None:
    """A call whose coroutine ends cancelled raises at once instead of blocking forever."""
    import asyncio
    import concurrent.futures

    from permflow._portal import run_sync

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises((asyncio.CancelledError, concurrent.futures.CancelledError)):
        run_sync(cancelled)


def test_stream_checks_its_config_when_called() -> None:
    """stream() refuses a bad config at once, like astream(), not at the first message."""
    with pytest.raises(ValueError, match="unknown config keys"):
        _doubler().stream(1, {"stateid": "typo"})
