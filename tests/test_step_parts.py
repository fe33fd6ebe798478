"""Parts of a step that publish apart: a retry attempt or a cached call inside a
dict step must neither drop nor copy what the dict's other keys publish."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from permflow import InMemoryPubSubConnection, PubSub, RunnableLambda, Topic

pytestmark = pytest.mark.anyio

SIDE = Topic("side")


def _program(part: Any, go: anyio.Event, conn: InMemoryPubSubConnection) -> PubSub:
    async def beside(x: int) -> int:
        go.set()  # publishes (next step) while ``part`` is still running
        return x

    return PubSub(
        Topic.IN.subscribe()
        | {"part": part, "beside": RunnableLambda(beside) | SIDE.publish()}
        | Topic.OUT.publish(),
        SIDE.subscribe(name="side reader") | (lambda x: x),
        connection=conn,
    )


def _side_messages(conn: InMemoryPubSubConnection, state_id: str) -> list[Any]:
    return [m.value for m in conn.peek(state_id) if m.topic == "side"]


async def test_a_cached_call_stores_and_replays_only_its_own_publishes(anyio_backend: str) -> None:
    """A cache hit does not publish again what a sibling key published while the step first ran."""
    go = anyio.Event()
    runs: list[int] = []

    async def slow(x: int) -> int:
        runs.append(x)
        await go.wait()
        return x + 1

    conn = InMemoryPubSubConnection()
    pubsub = _program(RunnableLambda(slow).with_cache(name="slow"), go, conn)
    for state_id in ("first", "second"):
        assert await pubsub.ainvoke(1, {"state_id": state_id}) == [{"part": 2, "beside": 1}]
        assert _side_messages(conn, state_id) == [1]
    assert runs == [1]  # the second run was a hit


async def test_a_failed_retry_attempt_drops_its_publishes_not_its_siblings(anyio_backend: str) -> None:
    """Rolling back a failed attempt keeps what a sibling key published meanwhile."""
    go = anyio.Event()
    attempts: list[int] = []
    work = Topic("work")

    async def flaky(x: int) -> int:
        attempts.append(x)
        await go.wait()
        if len(attempts) == 1:
            raise ConnectionError("first attempt fails")
        return x + 1

    conn = InMemoryPubSubConnection()
    part = (RunnableLambda(flaky) | work.publish()).with_retry(stop_after_attempt=2, initial_wait=0)
    pubsub = _program(part, go, conn)
    assert await pubsub.ainvoke(1, {"state_id": "retried"}) == [{"part": 2, "beside": 1}]
    assert _side_messages(conn, "retried") == [1]
    assert [m.value for m in conn.peek("retried") if m.topic == "work"] == [2]
    assert len(attempts) == 2
