"""What a finished run keeps in Redis: a compact run of two small keys, no
consumers, streams within ``max_stream_length``; and a compact run used again
(new input, a new process, resent calls) behaves exactly as if it had stayed in
stream form. On one Redis and on a Redis Cluster (``store_url``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio

from permflow import Message, PubSub, RedisPubSubConnection, Subscription, Topic
from permflow.connections.redis import _client
from permflow.connections.redis._compact import COMPACT_MAX

pytestmark = pytest.mark.anyio

A, B = Topic("a"), Topic("b")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[Any]:
    """A plain redis client on ``url`` (a cluster client for ``redis+cluster://``)."""
    if url.startswith("redis+cluster://"):
        client: Any = redis.asyncio.RedisCluster.from_url("redis://" + url.split("://", 1)[1])
    else:
        client = redis.asyncio.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def run_keys(raw: Any, prefix: str, state_id: str) -> dict[str, bytes]:
    """Every key of ``state_id`` (its hash tag), with its type."""
    found = {}
    async for k in raw.scan_iter(match=f"{{{prefix}:{state_id}}}*", count=1000):
        found[k.decode()] = await raw.type(k)
    return found


def three_steps(calls: list[str] | None = None) -> tuple[Any, ...]:
    """IN → +1 → a → *2 → b → -3 → OUT, recording each call in ``calls``."""

    def step(name: str, fn: Any) -> Any:
        def run(x: int) -> int:
            if calls is not None:
                calls.append(f"{name}({x})")
            return int(fn(x))

        return run

    return (
        Topic.IN.subscribe() | step("inc", lambda x: x + 1) | A.publish(),
        A.subscribe() | step("double", lambda x: x * 2) | B.publish(),
        B.subscribe() | step("less", lambda x: x - 3) | Topic.OUT.publish(),
    )


async def test_a_finished_kept_run_is_two_small_keys(store_url: str, redis_prefix: str) -> None:
    """A finished 3-step run of 4 messages keeps its log string and an empty change stream: under 3 KB."""
    async with (
        RedisPubSubConnection.from_url(store_url, prefix=redis_prefix) as conn,
        raw_client(store_url) as raw,
    ):
        pubsub = PubSub(*three_steps(), connection=conn)
        assert await pubsub.ainvoke(1, {"state_id": "r"}) == [1]
        keys = await run_keys(raw, redis_prefix, "r")
        assert keys == {f"{{{redis_prefix}:r}}:log": b"string", f"{{{redis_prefix}:r}}:chg": b"stream"}
        assert await raw.xlen(f"{{{redis_prefix}:r}}:chg") == 1
        used = sum([await raw.memory_usage(k) for k in keys])
        assert used <= 3 * 1024, used
        assert [m.value for m in await conn.apeek("r")] == [1, 2, 4, 1]


async def test_no_consumer_is_left_after_a_clean_finish(redis_url: str, redis_prefix: str) -> None:
    """A clean finish leaves no consumer in any group, whether or not the run could be made compact."""
    fan = Topic("fan")
    processes = (
        Topic.IN.subscribe() | fan.publish_each(),
        fan.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(),
    )
    async with (
        RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as conn,
        raw_client(redis_url) as raw,
    ):
        pubsub = PubSub(*processes, connection=conn)
        for _ in range(3):  # small: made compact, streams and their groups gone
            await pubsub.ainvoke([1, 2], {"state_id": "small"})
        assert {t for t in (await run_keys(raw, redis_prefix, "small")).values()} == {b"string", b"stream"}
        # too long a log to be made compact: its streams stay, without consumers
        await pubsub.ainvoke(list(range(COMPACT_MAX)), {"state_id": "big"})
        keys = await run_keys(raw, redis_prefix, "big")
        streams = [k for k, t in keys.items() if t == b"stream"]
        assert f"{{{redis_prefix}:big}}:t:fan" in streams
        for stream in streams:
            for group in await raw.xinfo_groups(stream):
                assert await raw.xinfo_consumers(stream, group["name"]) == [], (stream, group["name"])


async def test_a_finished_fan_out_keeps_at_most_max_stream_length(store_url: str, redis_prefix: str) -> None:
    """A finished 20,000-item fan-out with max_stream_length=1000 keeps its newest 1000 log entries only."""
    fan = Topic("fan")
    processes = (
        Topic.IN.subscribe() | fan.publish_each(),
        fan.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(),
    )
    async with (
        RedisPubSubConnection.from_url(store_url, prefix=redis_prefix, max_stream_length=1000) as conn,
        raw_client(store_url) as raw,
    ):
        pubsub = PubSub(*processes, connection=conn)
        with anyio.fail_after(120):
            await pubsub.ainvoke(list(range(20_000)), {"state_id": "f"})
        keys = await run_keys(raw, redis_prefix, "f")
        assert set(keys) == {f"{{{redis_prefix}:f}}:log", f"{{{redis_prefix}:f}}:chg"}
        kept = await conn.apeek("f")
        assert len(kept) == 1000  # the newest: the last outputs
        assert {m.topic for m in kept} == {"__out__"} and len({m.value for m in kept}) == 1000


async def test_a_finished_long_run_keeps_its_streams_within_max_stream_length(
    redis_url: str, redis_prefix: str
) -> None:
    """A finished run too long to be made compact has every stream trimmed to max_stream_length."""
    fan = Topic("fan")
    processes = (
        Topic.IN.subscribe() | fan.publish_each(),
        fan.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(),
    )
    limit = COMPACT_MAX + 200
    async with (
        RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, max_stream_length=limit) as conn,
        raw_client(redis_url) as raw,
    ):
        pubsub = PubSub(*processes, connection=conn)
        with anyio.fail_after(120):
            await pubsub.ainvoke(list(range(3 * limit)), {"state_id": "f"})
        keys = await run_keys(raw, redis_prefix, "f")
        streams = [k for k, t in keys.items() if t == b"stream"]
        assert f"{{{redis_prefix}:f}}:t:fan" in streams
        for stream in streams:
            assert await raw.xlen(stream) <= limit, stream


async def test_a_compact_run_resumed_with_new_input_behaves_as_before(
    store_url: str, redis_prefix: str
) -> None:
    """New input to a compact run: same earlier ids, each step runs once per message, publish order kept."""
    calls: list[str] = []
    async with (
        RedisPubSubConnection.from_url(store_url, prefix=redis_prefix) as conn,
        raw_client(store_url) as raw,
    ):
        pubsub = PubSub(*three_steps(calls), connection=conn)
        assert await pubsub.ainvoke(1, {"state_id": "r"}) == [1]
        before = await conn.apeek("r")
        assert await pubsub.ainvoke(5, {"state_id": "r"}) == [9]
        assert await pubsub.ainvoke(None, {"state_id": "r"}) == []
        after = await conn.apeek("r")
        assert [(m.id, m.topic, m.value) for m in after[:4]] == [(m.id, m.topic, m.value) for m in before]
        assert [m.value for m in after[4:]] == [5, 6, 12, 9]
        order = sorted({m.id for m in after}, key=lambda i: tuple(map(int, i.split("-"))))
        assert [m.id for m in after] == order  # distinct, in publish order
        assert calls == ["inc(1)", "double(2)", "less(4)", "inc(5)", "double(6)", "less(12)"]
        assert len(await run_keys(raw, redis_prefix, "r")) == 2  # compact again
        assert [m.value for m in await conn.read_log("r", before[-1].id)] == [5, 6, 12, 9]


async def test_a_process_added_to_a_compact_run_reads_its_topic_from_the_beginning(
    store_url: str, redis_prefix: str
) -> None:
    """A process added to a compact run gets every earlier message of its topic once; others rerun nothing."""
    calls: list[str] = []
    seen: list[int] = []

    def late(x: int) -> int:
        seen.append(x)
        return x * 100

    async with RedisPubSubConnection.from_url(store_url, prefix=redis_prefix) as conn:
        first = PubSub(*three_steps(calls), connection=conn)
        assert await first.ainvoke(1, {"state_id": "r"}) == [1]
        assert await first.ainvoke(2, {"state_id": "r"}) == [3]
        grown = PubSub(*three_steps(calls), A.subscribe() | late | Topic.OUT.publish(), connection=conn)
        assert sorted(await grown.ainvoke(None, {"state_id": "r"})) == [200, 300]
        assert sorted(await grown.ainvoke(7, {"state_id": "r"})) == [13, 800]
        assert sorted(seen[:2]) == [2, 3] and seen[2:] == [8]
        assert calls == [
            *("inc(1)", "double(2)", "less(4)"),
            *("inc(2)", "double(3)", "less(6)"),
            *("inc(7)", "double(8)", "less(16)"),
        ]


async def test_calls_sent_again_after_a_lost_reply_keep_exactly_once_across_compaction(
    store_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publish, commit, fetch and ack each sent again after a lost reply: same outputs, each message once."""
    real = _client.Bound.run

    async def lossy(self: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        again = _client.AGAIN.get(name)
        if again is None:
            return await real(self, name, keys, args)
        await real(self, name, keys, args)  # its reply is lost: send the twin
        return await real(self, again, keys, args)

    monkeypatch.setattr(_client.Bound, "run", lossy)
    calls: list[str] = []
    async with RedisPubSubConnection.from_url(store_url, prefix=redis_prefix) as conn:
        pubsub = PubSub(*three_steps(calls), connection=conn)
        assert await pubsub.ainvoke(1, {"state_id": "r"}) == [1]
        assert await pubsub.ainvoke(5, {"state_id": "r"}) == [9]
        assert [m.value for m in await conn.apeek("r")] == [1, 2, 4, 1, 5, 6, 12, 9]
        assert calls == ["inc(1)", "double(2)", "less(4)", "inc(5)", "double(6)", "less(12)"]


async def test_a_driver_waiting_for_changes_wakes_when_the_run_is_made_compact(
    redis_url: str, redis_prefix: str
) -> None:
    """Making a run compact trims its change stream yet wakes whoever waits on it, before or after."""
    async with (
        RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as conn,
        RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as other,
    ):
        await conn.register("s", [Subscription("p", "a")])
        await conn.publish("s", [msg("a", 0)])
        assert await other.outstanding("s", ["p"]) == {"p": 1}
        (d,) = await conn.fetch("s", "p", owner="o")
        await conn.commit(d, [], owner="o")  # the last one: the run is made compact
        with anyio.fail_after(1):  # a change since that count: no waiting
            await other.wait_for_change("s", 30)
        await conn.publish("s", [msg("a", 1)])
        assert await other.outstanding("s", ["p"]) == {"p": 1}
        woke = anyio.Event()

        async def waiter() -> None:
            await other.wait_for_change("s", 30)
            woke.set()

        with anyio.fail_after(2):  # well under the 2.5 s a blocked read lasts at most
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                (d,) = await conn.fetch("s", "p", owner="o")
                await conn.commit(d, [], owner="o")  # compact again
                await woke.wait()
        assert await other.outstanding("s", ["p"]) == {"p": 0}


async def test_a_compact_run_is_summarised_expired_and_deleted_like_any(
    redis_url: str, redis_prefix: str
) -> None:
    """run_summaries lists a compact run; ttl covers its keys; delete removes them."""
    async with (
        RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, ttl=600) as conn,
        raw_client(redis_url) as raw,
    ):
        pubsub = PubSub(*three_steps(), connection=conn)
        await pubsub.ainvoke(1, {"state_id": "r"})
        keys = await run_keys(raw, redis_prefix, "r")
        assert len(keys) == 2
        for k in keys:
            assert 0 < await raw.pttl(k) <= 600_000
        (summary,) = await conn.arun_summaries()
        assert summary["state_id"] == "r" and summary["outstanding"] == 0 and summary["error"] is None
        last_message = int((await conn.apeek("r"))[-1].id.split("-")[0]) / 1000
        assert last_message <= summary["updated_at"] < last_message + 60  # its last change
        await conn.adelete("r")
        assert await run_keys(raw, redis_prefix, "r") == {}


def msg(topic: str, value: Any) -> Message:
    return Message(topic, value, "", time.time(), "", 0, ())


async def test_streams_a_fan_out_finished_with_are_trimmed_while_the_run_goes_on(
    redis_url: str, redis_prefix: str
) -> None:
    """A 20,000-item fan-out in a run that goes on: every stream ends within max_stream_length=1000."""
    fan = Topic("fan")
    processes = (
        Topic.IN.subscribe() | fan.publish_each(),
        fan.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(),
    )
    async with (
        RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, max_stream_length=1000) as conn,
        raw_client(redis_url) as raw,
    ):
        await conn.register("f", [Subscription("idle", "other")])
        await conn.publish("f", [msg("other", "never read: the run is not finished")])
        pubsub = PubSub(*processes, connection=conn)
        with anyio.fail_after(120):
            assert len(await pubsub.ainvoke(list(range(20_000)), {"state_id": "f"})) == 20_000
        keys = await run_keys(raw, redis_prefix, "f")
        streams = [k for k, t in keys.items() if t == b"stream"]
        assert f"{{{redis_prefix}:f}}:t:fan" in streams  # not compact
        for stream in streams:
            assert await raw.xlen(stream) <= 1000, stream
        assert len(await conn.apeek("f")) == 1000
