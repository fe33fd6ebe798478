"""Cached steps (``step.with_cache``) on the in-memory connection (asyncio and trio)
and on Redis (asyncio), inside runs and outside them.

Steps count their real executions in a list; a cache hit leaves it unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from helpers import counted

from permflow import (
    InMemoryPubSubConnection,
    PubSub,
    PubSubConnection,
    RunnableLambda,
    SerializationError,
    Topic,
    clear_local_cache,
)

pytestmark = pytest.mark.anyio

ITEMS = Topic("items")
SEEN = Topic("seen")


@pytest.fixture(autouse=True)
def _fresh_local_cache() -> None:
    """Outside a run the cache is per process: each test starts with it empty."""
    clear_local_cache()


def cached_chain(conn: PubSubConnection, step: Any) -> PubSub:
    return PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish(), connection=conn)


class CachedStepTests:
    """What a cached step does inside runs on a given ``connection``."""

    @pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
    async def test_a_second_run_reuses_the_result_across_state_ids(
        self, connection: PubSubConnection, is_async: bool
    ) -> None:
        """Runs on other state ids get the stored result without running the step again."""
        calls: list[Any] = []
        step = RunnableLambda(counted(calls, is_async=is_async)).with_cache(name="double")
        pubsub = cached_chain(connection, step)
        with anyio.fail_after(20):
            outs = [await pubsub.ainvoke(x, {"state_id": f"s{i}"}) for i, x in enumerate([3, 3, 4, 3, 4])]
        assert outs == [[6], [6], [8], [6], [8]]
        assert calls == [3, 4]

    async def test_key_function_decides_what_counts_as_the_same_input(
        self, connection: PubSubConnection
    ) -> None:
        """With key=, inputs with the same key share one result."""
        calls: list[Any] = []

        def describe(item: dict[str, Any]) -> str:
            calls.append(item)
            return f"item {item['id']}"

        step = RunnableLambda(describe).with_cache(name="describe", key=lambda item: item["id"])
        pubsub = cached_chain(connection, step)
        with anyio.fail_after(20):
            first = await pubsub.ainvoke({"id": 1, "noise": "a"})
            second = await pubsub.ainvoke({"id": 1, "noise": "b"})
            third = await pubsub.ainvoke({"id": 2, "noise": "a"})
        assert (first, second, third) == (["item 1"], ["item 1"], ["item 2"])
        assert calls == [{"id": 1, "noise": "a"}, {"id": 2, "noise": "a"}]

    async def test_changing_the_version_runs_the_step_again(self, connection: PubSubConnection) -> None:
        """A new version misses; going back to the old version finds its entry again."""
        calls: list[Any] = []
        func = counted(calls)
        with anyio.fail_after(20):
            for version in (1, 1, "2", "2", 1):
                pubsub = cached_chain(connection, RunnableLambda(func).with_cache(name="v", version=version))
                assert await pubsub.ainvoke(5) == [10]
        assert calls == [5, 5]

    async def test_failures_are_not_cached(self, connection: PubSubConnection) -> None:
        """A failed execution stores nothing: the next run executes the step, and its success is stored."""
        calls: list[Any] = []
        pubsub = cached_chain(
            connection, RunnableLambda(counted(calls, fail_first=1)).with_cache(name="flaky")
        )
        with anyio.fail_after(20):
            with pytest.raises(RuntimeError, match="attempt 1 failed"):
                await pubsub.ainvoke(1)
            assert await pubsub.ainvoke(1) == [2]
            assert await pubsub.ainvoke(1) == [2]
        assert calls == [1, 1]

    async def test_forty_concurrent_deliveries_with_one_key_run_the_step_once(
        self, connection: PubSubConnection
    ) -> None:
        """40 deliveries of one value in flight together execute the step once and all get its result."""
        calls: list[Any] = []
        arrivals: list[Any] = []  # deliveries that reached the cache (their key made)
        release = anyio.Event()

        async def lookup(x: int) -> int:
            calls.append(x)
            await release.wait()
            return x + 100

        def key(x: int) -> int:
            arrivals.append(x)
            return x

        step = RunnableLambda(lookup).with_cache(name="lookup", key=key)
        pubsub = PubSub(
            Topic.IN.subscribe() | (lambda n: [7] * n) | ITEMS.publish_each(),
            ITEMS.subscribe() | step | Topic.OUT.publish(),
            connection=connection,
        )
        outs: list[Any] = []

        async def run() -> None:
            outs.extend(await pubsub.ainvoke(40))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                # all 40 are in the cache (nothing awaits between making the key and
                # joining the flight) while the first is still running the step
                while len(arrivals) < 40 or not calls:
                    await anyio.wait_all_tasks_blocked()
                assert calls == [7]
                release.set()
        assert outs == [107] * 40
        assert calls == [7]

    async def test_a_cached_chain_publishes_again_on_a_hit(self, connection: PubSubConnection) -> None:
        """A hit on a cached chain publishes what the chain published, on every topic, without running it."""
        calls: list[Any] = []
        chain = ITEMS.subscribe() | counted(calls) | SEEN.publish() | (lambda x: x + 1) | Topic.OUT.publish()
        pubsub = PubSub(
            Topic.IN.subscribe() | ITEMS.publish(), chain.with_cache(name="chain"), connection=connection
        )
        with anyio.fail_after(20):
            assert await pubsub.ainvoke(2, {"state_id": "first"}) == [5]
            assert await pubsub.ainvoke(2, {"state_id": "second"}) == [5]
            log = [(m.topic, m.value) for m in await connection.apeek("second")]
        assert calls == [2]
        assert log == [("__in__", 2), ("items", 2), ("seen", 4), ("__out__", 5)]

    async def test_an_unstorable_result_fails_the_step_naming_it(self, connection: PubSubConnection) -> None:
        """A result the connection cannot store fails the run with SerializationError naming step and type."""

        class Opaque:
            """Neither JSON-compatible nor anything the codec knows."""

        pubsub = cached_chain(connection, RunnableLambda(lambda x: Opaque()).with_cache(name="make-opaque"))
        with anyio.fail_after(20), pytest.raises(SerializationError) as caught:
            await pubsub.ainvoke(1)
        assert "'make-opaque'" in str(caught.value)
        assert "Opaque" in str(caught.value)

    async def test_clear_cache_forgets_one_step_or_all(self, connection: PubSubConnection) -> None:
        """clear_cache(name) makes that step run again and keeps the others; clear_cache() forgets all."""
        calls_a: list[Any] = []
        calls_b: list[Any] = []
        pubsub = PubSub(
            Topic.IN.subscribe()
            | RunnableLambda(counted(calls_a)).with_cache(name="a")
            | Topic.OUT.publish(),
            Topic.IN.subscribe()
            | RunnableLambda(counted(calls_b)).with_cache(name="b")
            | Topic.OUT.publish(),
            connection=connection,
        )
        with anyio.fail_after(20):
            await pubsub.ainvoke(1)
            await connection.aclear_cache("a")
            await pubsub.ainvoke(1)
            assert (calls_a, calls_b) == ([1, 1], [1])
            await connection.aclear_cache()
            await pubsub.ainvoke(1)
        assert (calls_a, calls_b) == ([1, 1, 1], [1, 1])


class TestInMemory(CachedStepTests):
    @pytest.fixture
    async def connection(self) -> AsyncIterator[PubSubConnection]:
        async with InMemoryPubSubConnection() as conn:
            yield conn


class TestRedis(CachedStepTests):
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def connection(self, redis_url: str, redis_prefix: str) -> AsyncIterator[PubSubConnection]:
        from permflow import RedisPubSubConnection

        async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as conn:
            yield conn
