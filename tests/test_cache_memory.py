"""Cached steps outside runs and on the in-memory connection: keys, the LRU
bound, expiry on an injected clock, and calls sharing one execution."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import pytest
from helpers import counted

from permflow import (
    InMemoryPubSubConnection,
    PubSub,
    RunnableLambda,
    SerializationError,
    Topic,
    clear_local_cache,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _fresh_local_cache() -> None:
    """Outside a run the cache is per process: each test starts with it empty."""
    clear_local_cache()


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- outside a run ------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_outside_a_run_the_cache_is_per_process(is_async: bool) -> None:
    """A plain invoke of a cached chain reuses results from this process's in-memory cache."""
    calls: list[Any] = []
    chain = Topic.IN.subscribe() | RunnableLambda(counted(calls, is_async=is_async)).with_cache(name="d")
    assert [chain.invoke(x) for x in (1, 2, 1, 2)] == [2, 4, 2, 4]
    assert calls == [1, 2]
    clear_local_cache("d")
    assert chain.invoke(1) == 2
    assert calls == [1, 2, 1]


def test_equal_inputs_give_one_key_whatever_their_order() -> None:
    """Dicts and sets equal but built in another order hit the same entry; other types do not."""
    calls: list[Any] = []
    cached = RunnableLambda(lambda x: calls.append(x) or len(calls)).with_cache(name="order")
    assert cached.invoke({"a": 1, "b": {3, 1, 2}, 5: "x"}) == 1
    assert cached.invoke({5: "x", "b": {2, 3, 1}, "a": 1}) == 1
    assert cached.invoke({"a": 1, "b": [3, 1, 2], 5: "x"}) == 2
    assert cached.invoke((1, 2)) == 3
    assert cached.invoke([1, 2]) == 4


def test_an_input_that_is_not_json_compatible_needs_a_key_function() -> None:
    """Without key=, an input JSON cannot hold fails with SerializationError naming step and type."""

    class Order:
        id = 7

    cached = RunnableLambda(lambda order: order.id).with_cache(name="orders")
    with pytest.raises(SerializationError, match=r"'orders'.*Order.*key=") as caught:
        cached.invoke(Order())
    assert "with_cache(key=" in str(caught.value)
    assert (
        RunnableLambda(lambda order: order.id).with_cache(name="orders", key=lambda o: o.id).invoke(Order())
        == 7
    )


def test_an_unstorable_result_outside_a_run_fails_naming_the_step() -> None:
    """Outside a run too, a result JSON cannot hold fails with SerializationError naming step and type."""
    cached = RunnableLambda(lambda x: Point(x, x)).with_cache(name="points")
    with pytest.raises(SerializationError, match=r"step 'points' \(a test_cache_memory\.Point\)"):
        cached.invoke(1)


async def test_a_pickle_cache_stores_what_json_cannot(anyio_backend: str) -> None:
    """With cache_serializer='pickle', a result and an input JSON cannot hold are cached."""
    calls: list[Any] = []

    def mirror(p: Point) -> Point:
        calls.append(p)
        return Point(p.y, p.x)

    conn = InMemoryPubSubConnection(cache_serializer="pickle")
    pubsub = PubSub(
        Topic.IN.subscribe() | RunnableLambda(mirror).with_cache() | Topic.OUT.publish(), connection=conn
    )
    with anyio.fail_after(10):
        assert await pubsub.ainvoke(Point(1, 2)) == [Point(2, 1)]
        assert await pubsub.ainvoke(Point(1, 2)) == [Point(2, 1)]
    assert calls == [Point(1, 2)]


# -- the in-memory connection's store -----------------------------------------


async def test_the_in_memory_cache_forgets_the_least_recently_used(anyio_backend: str) -> None:
    """With cache_size=3, a fourth entry evicts the least recently used one (a hit counts as a use)."""
    calls: list[Any] = []
    conn = InMemoryPubSubConnection(cache_size=3)
    pubsub = PubSub(
        Topic.IN.subscribe() | RunnableLambda(counted(calls)).with_cache(name="lru") | Topic.OUT.publish(),
        connection=conn,
    )
    with anyio.fail_after(10):
        for x in (1, 2, 3, 1, 4):  # 1 is used again, so 2 is the least recently used when 4 comes
            await pubsub.ainvoke(x)
        assert calls == [1, 2, 3, 4]
        for x in (1, 3, 4, 2):
            await pubsub.ainvoke(x)
    assert calls == [1, 2, 3, 4, 2]


def test_the_default_in_memory_cache_holds_ten_thousand_entries() -> None:
    """The documented bound: 10,000 entries, then the oldest goes."""
    conn = InMemoryPubSubConnection()
    for n in range(10_001):
        conn._default_cache().set("n", str(n), b"", None)
    assert len(conn._default_cache()) == 10_000
    assert conn._default_cache().get("n", "0") is None
    assert conn._default_cache().get("n", "1") == b""


async def test_an_entry_expires_when_its_ttl_has_passed(anyio_backend: str) -> None:
    """On the store's clock, an entry is a hit until ttl seconds passed and a miss from then on."""
    calls: list[Any] = []
    clock = FakeClock()
    conn = InMemoryPubSubConnection()
    conn._default_cache().clock = clock
    pubsub = PubSub(
        Topic.IN.subscribe()
        | RunnableLambda(counted(calls)).with_cache(name="t", ttl=10)
        | Topic.OUT.publish(),
        connection=conn,
    )
    with anyio.fail_after(10):
        await pubsub.ainvoke(1)
        clock.now += 9.999
        await pubsub.ainvoke(1)
        assert calls == [1]
        clock.now += 0.001
        await pubsub.ainvoke(1)
        assert calls == [1, 1]
        clock.now += 9.999
        await pubsub.ainvoke(1)
    assert calls == [1, 1]


async def test_an_unreadable_entry_is_a_miss(anyio_backend: str) -> None:
    """An entry the cache cannot decode is ignored: the step runs and its result replaces it."""
    calls: list[Any] = []
    conn = InMemoryPubSubConnection()
    cached = RunnableLambda(counted(calls)).with_cache(name="garbled")
    pubsub = PubSub(Topic.IN.subscribe() | cached | Topic.OUT.publish(), connection=conn)
    key = cached.cache_key(1, conn.cache_serializer)
    await conn.cache_set("garbled", key, b"r{not json", None)
    with anyio.fail_after(10):
        assert await pubsub.ainvoke(1) == [2]
        assert await pubsub.ainvoke(1) == [2]
    assert calls == [1]


# -- calls sharing one execution ----------------------------------------------


async def test_concurrent_callers_share_the_first_callers_failure(anyio_backend: str) -> None:
    """When the one running execution fails, its waiters raise the same error; the next call runs again."""
    calls: list[Any] = []
    release = anyio.Event()

    async def fragile(x: int) -> int:
        calls.append(x)
        await release.wait()
        if len(calls) == 1:
            raise ValueError("upstream down")
        return x

    cached = RunnableLambda(fragile).with_cache(name="fragile")
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await cached.ainvoke(1)
        except ValueError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert calls == [1]
        assert len(errors) == 40 and {str(e) for e in errors} == {"upstream down"}
        assert len({id(e) for e in errors}) == 40  # each caller its own copy: notes do not pile up
        assert await cached.ainvoke(1) == 1
    assert calls == [1, 1]


async def test_when_the_first_caller_is_cancelled_a_waiter_runs_the_step(anyio_backend: str) -> None:
    """Cancelling the caller that runs the step hands the work to one waiter; the others share its result."""
    calls: list[Any] = []
    started = anyio.Event()
    release = anyio.Event()

    async def slow(x: int) -> int:
        calls.append(x)
        started.set()
        if len(calls) > 1:
            await release.wait()
        else:
            await anyio.sleep_forever()
        return x * 3

    cached = RunnableLambda(slow).with_cache(name="slow")
    results: list[int] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with anyio.create_task_group() as first:
                first.start_soon(cached.ainvoke, 2)
                await started.wait()
                for _ in range(5):
                    tg.start_soon(lambda: _append(results, cached.ainvoke(2)))
                await anyio.wait_all_tasks_blocked()
                first.cancel_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert calls == [2, 2]
            release.set()
    assert results == [6] * 5


async def _append(results: list[int], call: Any) -> None:
    results.append(await call)


def test_two_event_loops_in_two_threads_share_one_execution(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent calls with one key from two threads, each with its own event loop, run the step once."""
    import threading

    import permflow._cache as cache

    started, release, waiting = threading.Event(), threading.Event(), threading.Event()
    runs: list[int] = []

    def slow(x: int) -> int:
        runs.append(x)
        started.set()
        release.wait(10)
        return x * 2

    step = RunnableLambda(slow, execution="thread").with_cache(name="two loops")
    original_wait = cache._Flight.wait

    async def observed_wait(self: Any) -> None:
        waiting.set()  # the second caller found the first one's flight
        await original_wait(self)

    monkeypatch.setattr(cache._Flight, "wait", observed_wait)
    results: dict[str, Any] = {}

    def call(who: str) -> None:
        results[who] = anyio.run(step.ainvoke, 21)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    assert waiting.wait(10)
    release.set()
    first.join(10)
    second.join(10)
    assert results == {"first": 42, "second": 42}
    assert runs == [21]


def test_clear_local_cache_forgets_results_stored_outside_runs() -> None:
    """``clear_local_cache(name)`` forgets one step's results stored by ``chain.invoke``; without a
    name, every step's."""
    doubled: list[Any] = []
    tripled: list[Any] = []
    double = RunnableLambda(counted(doubled)).with_cache(name="double")
    triple = RunnableLambda(counted(tripled)).with_cache(name="triple")
    for step in (double, triple, double, triple):
        assert step.invoke(4) == 8
    assert (doubled, tripled) == ([4], [4])
    clear_local_cache("double")
    double.invoke(4)
    triple.invoke(4)
    assert (doubled, tripled) == ([4, 4], [4])
    clear_local_cache()
    triple.invoke(4)
    assert tripled == [4, 4]
