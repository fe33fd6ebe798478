"""Cached steps on Redis: shared by separate connection objects, expiring by
Redis's own clock, surviving a server restart, and kept apart by serializer.
(Worker processes sharing a cached result: tests/test_worker_processes.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from helpers import counted
from redis_servers import RedisServer

from permflow import PubSub, RedisPubSubConnection, RunnableLambda, Topic

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chain(step: Any) -> PubSub:
    return PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())


@pytest.fixture
async def connections(redis_url: str, redis_prefix: str) -> AsyncIterator[list[RedisPubSubConnection]]:
    """Two separate connection objects (two client pools) on one prefix."""
    conns = [RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) for _ in range(2)]
    yield conns
    for conn in conns:
        await conn.aclose()


async def test_a_separate_connection_object_gets_the_stored_result(
    connections: list[RedisPubSubConnection], raw: Any, redis_prefix: str
) -> None:
    """A result stored through one RedisPubSubConnection is a hit through another; one key, no hash tag."""
    calls: list[Any] = []
    pubsub = chain(RunnableLambda(counted(calls)).with_cache(name="shared:step"))
    with anyio.fail_after(20):
        assert await pubsub.with_connection(connections[0]).ainvoke(21) == [42]
        assert await pubsub.with_connection(connections[1]).ainvoke(21) == [42]
        keys = [k.decode() async for k in raw.scan_iter(match=f"{redis_prefix}:cache:*")]
    assert calls == [21]
    assert len(keys) == 1
    assert keys[0].startswith(f"{redis_prefix}:cache:shared%3Astep:")
    assert "{" not in keys[0]  # no hash tag: entries spread over the slots of a cluster


async def test_an_entry_expires_by_redis_after_its_ttl(
    connections: list[RedisPubSubConnection], raw: Any, redis_prefix: str
) -> None:
    """With ttl=1 the key gets Redis's own expiry; once it expired, the step runs again."""
    calls: list[Any] = []
    conn = connections[0]
    step = RunnableLambda(counted(calls)).with_cache(name="brief", ttl=1)
    pubsub = chain(step).with_connection(conn)
    with anyio.fail_after(20):
        await pubsub.ainvoke(1)
        key = f"{redis_prefix}:cache:brief:{step.cache_key(1, conn.cache_serializer)}"
        assert 0 < await raw.pttl(key) <= 1000
        for _ in range(400):  # polling Redis's clock, up to a deadline
            if not await raw.exists(key):
                break
            await anyio.sleep(0.05)
        assert calls == [1]
        await pubsub.ainvoke(1)
    assert calls == [1, 1]


async def test_entries_survive_a_restart_of_a_persistent_server() -> None:
    """What was cached before a persistent Redis restarted is a hit for a new connection afterwards."""
    calls: list[Any] = []
    server = RedisServer(persistent=True)
    server.start()
    try:
        pubsub = chain(RunnableLambda(counted(calls)).with_cache(name="durable"))
        with anyio.fail_after(30):
            async with RedisPubSubConnection.from_url(server.url, prefix="restart") as conn:
                assert await pubsub.with_connection(conn).ainvoke(3) == [6]
            await anyio.to_thread.run_sync(server.restart, 0.1)
            async with RedisPubSubConnection.from_url(server.url, prefix="restart") as conn:
                assert await pubsub.with_connection(conn).ainvoke(3) == [6]
    finally:
        server.close()
    assert calls == [3]


async def test_entries_of_another_serializer_are_never_read(redis_url: str, redis_prefix: str) -> None:
    """Entries a pickle connection stored are never read by a JSON connection on the same prefix."""
    calls: list[Any] = []
    step = RunnableLambda(lambda x: calls.append(x) or {"n": x, "as": complex(x, 0)}).with_cache(name="mixed")
    pickled = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, serializer="pickle")
    plain = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
    try:
        with anyio.fail_after(20):
            assert await chain(step).with_connection(pickled).ainvoke(2) == [{"n": 2, "as": 2 + 0j}]
            assert await chain(step).with_connection(pickled).ainvoke(2) == [{"n": 2, "as": 2 + 0j}]
            assert calls == [2]
            assert await chain(step).with_connection(plain).ainvoke(2) == [{"n": 2, "as": 2 + 0j}]
    finally:
        await pickled.aclose()
        await plain.aclose()
    assert calls == [2, 2]
