"""RedisPubSubConnection against a real Redis: the protocol, the engine on top, failures.

asyncio only: redis-py has no trio support (one test checks the error under trio).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio
import redis.exceptions
from helpers import wakes_a_waiter

from permflow import (
    ConnectionFailedError,
    DefinitionError,
    Message,
    PoisonMessageError,
    PubSub,
    RedisPubSubConnection,
    SerializationError,
    Subscription,
    Topic,
)
from permflow.connections.redis import CorruptEntryError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def conn(redis_url: str, redis_prefix: str, raw: Any) -> AsyncIterator[RedisPubSubConnection]:
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=5.0) as c:
        yield c
    async for key in raw.scan_iter(match=f"{{{redis_prefix}:*"):
        await raw.delete(key)


def msg(topic: str, value: Any, depth: int = 0, trail: tuple[tuple[str, str, str], ...] = ()) -> Message:
    return Message(topic, value, "", time.time(), "", depth, trail)


def key(prefix: str, state_id: str, suffix: str) -> str:
    return f"{{{prefix}:{state_id}}}:{suffix}"


async def age(raw: Any, prefix: str, state_id: str, topic: str, process: str, seconds: float) -> None:
    """Make every pending delivery of ``process`` look ``seconds`` old (its owner went silent)."""
    stream = key(prefix, state_id, f"t:{topic}")
    for p in await raw.xpending_range(stream, process, "-", "+", 1000):
        await raw.xclaim(
            stream, process, p["consumer"], 0, [p["message_id"]], idle=int(seconds * 1000), justid=True
        )


READ_A = [Subscription("p", "a")]

# -- protocol ------------------------------------------------------------------


async def test_publish_and_peek_keep_values_lineage_and_order(conn: RedisPubSubConnection) -> None:
    """Stored messages come back from peek in publish order with value, depth, trail and time intact."""
    trail = (("proc", "f00d", "a"), ("other", "beef", "b"))
    sent = [msg("a", {"k": (1, b"x")}, 3, trail), msg("b", [1.5, None]), msg("a", "third")]
    stored = await conn.publish("s", sent)
    peeked = await conn.apeek("s")
    assert [m.id for m in peeked] == [m.id for m in stored]
    assert [m.id for m in stored] == sorted(
        {m.id for m in stored}, key=lambda i: tuple(map(int, i.split("-")))
    )
    for original, back in zip(sent, peeked, strict=True):
        assert (back.topic, back.value, back.depth, back.trail) == (
            original.topic,
            original.value,
            original.depth,
            original.trail,
        )
        assert back.published_at == original.published_at and back.state_id == "s"


async def test_a_new_reader_sees_earlier_messages_and_counts_them(conn: RedisPubSubConnection) -> None:
    """A process registered after messages were published gets all of them, counted as outstanding."""
    await conn.publish("s", [msg("a", 1), msg("a", 2), msg("b", 3)])
    await conn.register("s", READ_A)
    assert await conn.outstanding("s", ["p", "unknown"]) == {"p": 2, "unknown": 0}
    got = await conn.fetch("s", "p", owner="o")
    assert [d.messages[0].value for d in got] == [1, 2]
    assert [d.attempt for d in got] == [1, 1]
    assert await conn.fetch("s", "p", owner="o2") == []


async def test_register_again_is_a_no_op_and_a_change_is_refused(conn: RedisPubSubConnection) -> None:
    """Re-registering keeps progress; a known process with another topic raises DefinitionError."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", 1)])
    await conn.register("s", READ_A)
    assert await conn.outstanding("s", ["p"]) == {"p": 1}
    with pytest.raises(DefinitionError, match=r"'p'.*'s'"):
        await conn.register("s", [Subscription("p", "b")])
    with pytest.raises(KeyError, match="'nobody'"):
        await conn.fetch("s", "nobody", owner="o")


async def test_commit_acks_stores_and_refuses_a_second_commit(conn: RedisPubSubConnection) -> None:
    """Commit stores outputs with the ack once; committing the same delivery again stores nothing."""
    await conn.register("s", [*READ_A, Subscription("q", "b")])
    await conn.publish("s", [msg("a", "in")])
    (delivery,) = await conn.fetch("s", "p", owner="o")
    stored = await conn.commit(delivery, [msg("b", "out", 1)], owner="o")
    assert stored is not None and [m.value for m in stored] == ["out"]
    assert await conn.outstanding("s", ["p", "q"]) == {"p": 0, "q": 1}
    assert await conn.commit(delivery, [msg("b", "again", 1)], owner="o") is None
    assert [m.value for m in await conn.apeek("s")] == ["in", "out"]


async def test_a_stale_owner_cannot_commit(conn: RedisPubSubConnection, raw: Any, redis_prefix: str) -> None:
    """When a silent owner's delivery was reclaimed, only the new owner's commit is stored."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", "in")])
    (old,) = await conn.fetch("s", "p", owner="slow")
    await age(raw, redis_prefix, "s", "a", "p", 60)
    (new,) = await conn.fetch("s", "p", owner="fast")
    assert new.attempt == 2
    assert await conn.commit(new, [msg("b", "fast")], owner="fast") is not None
    assert await conn.commit(old, [msg("b", "slow")], owner="slow") is None
    assert [m.value for m in await conn.apeek("s")] == ["in", "fast"]


async def test_release_hands_deliveries_back_at_once(conn: RedisPubSubConnection) -> None:
    """Released deliveries go to the next fetcher immediately, in publish order, counting the attempt."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", i) for i in range(3)])
    await conn.fetch("s", "p", owner="o1")
    await conn.release("s", "o1")
    got = await conn.fetch("s", "p", owner="o2")
    assert [(d.messages[0].value, d.attempt) for d in got] == [(0, 2), (1, 2), (2, 2)]


async def test_live_leases_are_renewed_and_silent_ones_expire(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """renew keeps an owner's deliveries; without it they go to another owner after the lease."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", "x")])
    await conn.fetch("s", "p", owner="alive")
    await age(raw, redis_prefix, "s", "a", "p", 60)
    await conn.renew("s", "alive")
    assert await conn.fetch("s", "p", owner="other") == []
    await age(raw, redis_prefix, "s", "a", "p", 4)  # younger than the 5 s lease
    assert await conn.fetch("s", "p", owner="other") == []
    await age(raw, redis_prefix, "s", "a", "p", 6)
    (taken,) = await conn.fetch("s", "p", owner="other")
    assert taken.messages[0].value == "x" and taken.attempt == 2


async def test_consumers_that_hold_nothing_are_deleted(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """Owners leave no consumer behind once released or reclaimed, so consumer lists stay small."""
    await conn.register("s", [*READ_A, Subscription("q", "b")])
    await conn.publish("s", [msg("a", 1), msg("a", 2), msg("b", "unread: the run goes on")])
    await conn.fetch("s", "p", owner="crashed")
    await age(raw, redis_prefix, "s", "a", "p", 60)
    for d in await conn.fetch("s", "p", owner="run"):
        await conn.commit(d, [], owner="run")
    await conn.release("s", "run")
    consumers = await raw.xinfo_consumers(key(redis_prefix, "s", "t:a"), "p")
    assert [c["name"] for c in consumers] == []


async def test_join_gets_everything_as_one_delivery_and_limit_applies_to_subscribers(
    conn: RedisPubSubConnection,
) -> None:
    """A join process gets all its messages in one delivery; a subscriber gets at most ``limit``."""
    await conn.register("s", [Subscription("j", "a", join=True), *READ_A])
    await conn.publish("s", [msg("a", i) for i in range(5)])
    (joined,) = await conn.fetch("s", "j", owner="o", limit=2)
    assert [m.value for m in joined.messages] == [0, 1, 2, 3, 4]
    first = await conn.fetch("s", "p", owner="o", limit=2)
    assert [d.messages[0].value for d in first] == [0, 1]
    assert await conn.outstanding("s", ["p", "j"]) == {"p": 5, "j": 5}
    assert await conn.commit(joined, [], owner="o") == []
    assert await conn.outstanding("s", ["j"]) == {"j": 0}


async def test_serialization_error_stores_nothing(conn: RedisPubSubConnection) -> None:
    """An unstorable output fails the commit naming type and topic; the delivery stays held."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", "in")])
    (delivery,) = await conn.fetch("s", "p", owner="o")
    with pytest.raises(SerializationError, match=r"object.*'bad'"):
        await conn.commit(delivery, [msg("good", 1), msg("bad", object())], owner="o")
    with pytest.raises(SerializationError):
        await conn.publish("s", [msg("good", 1), msg("bad", object())])
    assert [m.topic for m in await conn.apeek("s")] == ["a"]
    assert await conn.commit(delivery, [msg("good", 1)], owner="o") is not None


async def test_wait_for_change_wakes_on_publish_and_times_out(conn: RedisPubSubConnection) -> None:
    """A waiter wakes when another task publishes, and otherwise returns after its time."""
    await conn.outstanding("s", [])
    await wakes_a_waiter(conn, "s", lambda: conn.publish("s", [msg("a", 1)]))
    with anyio.fail_after(10):
        started = time.monotonic()
        await conn.wait_for_change("quiet", 0.2)
        assert time.monotonic() - started >= 0.15


async def test_a_change_between_outstanding_and_wait_is_not_missed(conn: RedisPubSubConnection) -> None:
    """A publish that lands after outstanding() but before wait_for_change() wakes the wait at once."""
    await conn.outstanding("s", [])
    await conn.publish("s", [msg("a", 1)])
    with anyio.fail_after(5):
        await conn.wait_for_change("s", 30)


async def test_delete_removes_every_key(conn: RedisPubSubConnection, raw: Any, redis_prefix: str) -> None:
    """adelete leaves no key of the state id behind, and other state ids untouched."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", 1), msg("b", 2)])
    await conn.publish("keep", [msg("a", 1)])
    assert await conn.astate_ids() == ["keep", "s"]
    await conn.adelete("s")
    left = [k async for k in raw.scan_iter(match=f"{{{redis_prefix}:s}}*")]
    assert left == []
    assert await conn.apeek("s") == [] and len(await conn.apeek("keep")) == 1
    assert await conn.astate_ids() == ["keep"]


async def test_state_ids_with_braces_stay_apart(conn: RedisPubSubConnection) -> None:
    """State ids containing braces or percent signs get their own keys and list back unchanged."""
    odd = ["a}b", "{x}", "100%"]
    for sid in odd:
        await conn.publish(sid, [msg("t", sid)])
    for sid in odd:
        assert [m.value for m in await conn.apeek(sid)] == [sid]
    assert sorted(await conn.astate_ids()) == sorted(odd)


# -- stored data that permflow did not write ------------------------------------------


async def test_garbage_in_a_topic_stream_is_a_clear_error_once(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """Foreign entries fail one fetch naming the key; the readable ones are handed back untouched."""
    await conn.register("s", READ_A)
    await conn.publish("s", [msg("a", "good")])
    stream = key(redis_prefix, "s", "t:a")
    await raw.xadd(stream, {"hello": "world"})
    await raw.xadd(stream, {"v": "more garbage"})
    await conn.publish("s", [msg("a", "after")])
    with pytest.raises(CorruptEntryError, match=r"\{.*:s\}:t:a") as info:
        await conn.fetch("s", "p", owner="o")
    assert "'p'" in str(info.value) and "1 more" in str(info.value)
    got = await conn.fetch("s", "p", owner="o2")
    assert [(d.messages[0].value, d.attempt) for d in got] == [("good", 1), ("after", 1)]
    for d in got:
        await conn.commit(d, [], owner="o2")
    assert await conn.outstanding("s", ["p"]) == {"p": 0}


async def test_a_run_meeting_garbage_fails_once_then_carries_on(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """invoke raises CorruptEntryError once; the next invoke finishes at once (no lease to wait out)."""
    pubsub = PubSub(processes=SEED, connection=conn)
    assert await pubsub.ainvoke("a", {"state_id": "g"}) == ["abc"]
    # the finished run is kept compact: a new reader has its streams rebuilt
    await conn.register("g", [Subscription("late", "elsewhere")])
    await raw.xadd(key(redis_prefix, "g", "t:one"), {"junk": "1"})
    await conn.publish("g", [msg("one", "x")])
    with anyio.fail_after(3):
        with pytest.raises(Exception) as info:
            await pubsub.ainvoke(None, {"state_id": "g"})
        assert isinstance(single(info.value), CorruptEntryError)
        assert "Invoke again" in str(single(info.value))
        assert await pubsub.ainvoke(None, {"state_id": "g"}) == ["xc"]


def single(exc: BaseException) -> BaseException:
    """The one error inside ``exc``: errors raised while the engine drives a run
    (not inside a step) currently reach the caller wrapped in a one-error group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def test_pickled_entries_are_refused_by_a_json_connection(
    redis_url: str, redis_prefix: str, conn: RedisPubSubConnection
) -> None:
    """A json connection never unpickles: it names the serializer the entry was written with."""
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, serializer="pickle") as writer:
        await writer.publish("s", [msg("a", {"x": 1})])
        assert [m.value for m in await writer.apeek("s")] == [{"x": 1}]
    with pytest.raises(CorruptEntryError, match=r"'pickle'.*'json'"):
        await conn.apeek("s")


async def test_garbage_in_the_log_names_the_key(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """peek over a foreign log entry raises CorruptEntryError naming the log key."""
    await raw.xadd(key(redis_prefix, "s", "log"), {"t": "a", "s": "json", "v": "{not json"})
    with pytest.raises(CorruptEntryError, match=r":s\}:log"):
        await conn.apeek("s")


# -- retention ---------------------------------------------------------------------


async def test_ttl_expires_idle_state_ids(redis_url: str, redis_prefix: str, raw: Any) -> None:
    """With ttl, every key of a state id carries an expiry, refreshed by activity."""
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, ttl=100) as c:
        await c.register("s", READ_A)
        await c.publish("s", [msg("a", 1), msg("b", 2)])
        keys = [k async for k in raw.scan_iter(match=f"{{{redis_prefix}:s}}*")]
        assert len(keys) >= 6
        for k in keys:
            assert 0 < await raw.pttl(k) <= 100_000
        await raw.pexpire(key(redis_prefix, "s", "log"), 5000)
        (d,) = await c.fetch("s", "p", owner="o")
        await c.commit(d, [], owner="o")
        assert await raw.pttl(key(redis_prefix, "s", "log")) > 5000
        await c.adelete("s")


async def test_without_ttl_nothing_expires(conn: RedisPubSubConnection, raw: Any, redis_prefix: str) -> None:
    """By default state is kept until deleted."""
    await conn.publish("s", [msg("a", 1)])
    assert await raw.pttl(key(redis_prefix, "s", "log")) == -1


async def test_max_stream_length_trims_the_log_but_not_unread_entries(
    redis_url: str, redis_prefix: str, raw: Any
) -> None:
    """The log is trimmed to about max_stream_length; a reader still gets every unread message."""
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, max_stream_length=10) as c:
        await c.register("s", READ_A)
        for i in range(0, 1000, 100):
            await c.publish("s", [msg("a", n) for n in range(i, i + 100)] + [msg("noone", i)] * 30)
        assert await raw.xlen(key(redis_prefix, "s", "log")) <= 200  # approximate: whole nodes go
        assert 10 <= await raw.xlen(key(redis_prefix, "s", "t:noone")) <= 200  # of 300, none read
        assert await raw.xlen(key(redis_prefix, "s", "t:a")) == 1000  # unread by p: all kept
        got = await c.fetch("s", "p", owner="o")
        assert [d.messages[0].value for d in got] == list(range(1000))
        for d in got:
            await c.commit(d, [], owner="o")
        await c.publish("s", [msg("a", "last")])
        assert await raw.xlen(key(redis_prefix, "s", "t:a")) <= 200  # what p finished is trimmed
        await c.adelete("s")


# -- the engine on Redis -------------------------------------------------------------

one = Topic("one")
SEED = (
    Topic.IN.subscribe() | (lambda x: x + "b") | one.publish(),
    one.subscribe() | (lambda x: x + "c") | Topic.OUT.publish(),
)


async def test_seed_snippet(conn: RedisPubSubConnection) -> None:
    """The design's first example returns ['abc'] over Redis, and its generated state is deleted."""
    assert await PubSub(processes=SEED, connection=conn).ainvoke("a") == ["abc"]
    assert await conn.astate_ids() == []


def test_seed_snippet_through_the_sync_api(redis_url: str, redis_prefix: str) -> None:
    """The sync facade runs on permflow's own loop with a client of its own."""
    conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
    pubsub = PubSub(processes=SEED, connection=conn)
    try:
        assert pubsub.invoke("a", {"state_id": "sync"}) == ["abc"]
        assert [m.value for m in conn.peek("sync")] == ["a", "ab", "abc"]

        async def from_another_loop() -> list[Any]:
            out = await pubsub.ainvoke("x", {"state_id": "other-loop"})
            await conn.adelete("other-loop")
            await conn.aclose()  # closes this loop's client and the background loop's one
            return out

        assert asyncio.run(from_another_loop()) == ["xbc"]
        with pytest.raises(RuntimeError, match="closed"):
            conn.peek("sync")
    finally:
        cleanup = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
        cleanup.delete("sync")
        cleanup.close()


async def test_a_batch_larger_than_the_pool_waits_for_connections(redis_url: str, redis_prefix: str) -> None:
    """Many concurrent runs share a small pool: they wait for a free connection instead of failing."""
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, max_connections=3) as c:
        with anyio.fail_after(20):
            assert (
                await PubSub(processes=SEED, connection=c).abatch(["a", "b"] * 25) == [["abc"], ["bbc"]] * 25
            )


async def test_a_given_client_is_used_on_its_own_loop(redis_url: str, redis_prefix: str) -> None:
    """A connection around a user's client works on that client's loop and refuses other loops."""
    client = redis.asyncio.Redis.from_url(redis_url)
    conn = RedisPubSubConnection(client, prefix=redis_prefix)
    try:
        assert await PubSub(processes=SEED, connection=conn).ainvoke("a") == ["abc"]
        with pytest.raises(RuntimeError, match="from_url"):
            await anyio.to_thread.run_sync(lambda: asyncio.run(conn.apeek("x")))
        await conn.aclose()
        assert await client.ping()  # the user's client stays open
    finally:
        await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_gets_a_clear_error(anyio_backend: str, redis_url: str, redis_prefix: str) -> None:
    """Under trio the connection says it needs asyncio instead of failing obscurely."""
    conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
    with pytest.raises(RuntimeError, match="asyncio only"):
        await conn.apeek("s")
    await conn.aclose()  # closing is harmless under trio too


async def test_resume_after_breaking_out_of_a_stream(conn: RedisPubSubConnection) -> None:
    """Leaving astream early and invoking again with None finishes the run, storing each message once."""
    gate = anyio.Event()

    async def wait_for_gate(x: str) -> str:
        await gate.wait()
        return x + "!"

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x: x + "b") | one.publish(),
        one.subscribe() | wait_for_gate | Topic.OUT.publish(),
        connection=conn,
    )
    with anyio.fail_after(10):
        async with pubsub.astream("a", {"state_id": "hitl"}) as stream:
            async for m in stream:
                if m.topic == "one":
                    break
        gate.set()
        assert await pubsub.ainvoke(None, {"state_id": "hitl"}) == ["ab!"]
    assert [m.value for m in await conn.apeek("hitl")] == ["a", "ab", "ab!"]


async def test_join_and_error_topic_over_redis(conn: RedisPubSubConnection) -> None:
    """A join sees every fanned-out message at once; failures go to Topic.ERROR as records."""
    parts, total = Topic("parts"), Topic("total")

    def explode(x: int) -> list[int]:
        if x == 0:
            raise ZeroDivisionError("zero")
        return list(range(x))

    pubsub = PubSub(
        Topic.IN.subscribe() | explode | parts.publish_each(),
        parts.join() | (lambda xs: sorted(xs)) | total.publish() | Topic.OUT.publish(),
        Topic.ERROR.subscribe() | (lambda e: e["error"]) | Topic.OUT.publish(),
        connection=conn,
    )
    with anyio.fail_after(10):
        assert await pubsub.ainvoke(4) == [[0, 1, 2, 3]]
        assert await pubsub.ainvoke(0) == ["ZeroDivisionError"]


async def test_a_failing_step_fails_invoke_with_its_own_error(conn: RedisPubSubConnection) -> None:
    """A step's exception reaches the caller with its type; the input stays pending for a retry."""

    def boom(x: Any) -> Any:
        raise KeyError("missing")

    pubsub = PubSub(Topic.IN.subscribe() | boom | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10), pytest.raises(KeyError, match="missing"):
        await pubsub.ainvoke("x", {"state_id": "fails"})
    assert await conn.outstanding("fails", pubsub.process_names) == {pubsub.process_names[0]: 1}


async def echo_with_one_input(conn: RedisPubSubConnection, value: str) -> tuple[PubSub, str]:
    """IN → OUT with max_deliveries=2, and ``value`` stored on IN of state id "s"; (pubsub, process)."""
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x: x) | Topic.OUT.publish(), connection=conn, max_deliveries=2
    )
    (name,) = pubsub.process_names
    await conn.register("s", [Subscription(name, "__in__")])
    await conn.publish("s", [msg("__in__", value)])
    return pubsub, name


async def test_poison_counts_survive_crashed_owners(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """Owners that died while running a delivery's step count as attempts, so the engine dead-letters it."""
    pubsub, name = await echo_with_one_input(conn, "poison")
    (first,) = await conn.fetch("s", name, owner="dead-1")  # its step started, then the owner died
    assert (first.attempt, first.suspect) == (1, False)
    await age(raw, redis_prefix, "s", "__in__", name, 60)
    (again,) = await conn.fetch("s", name, owner="dead-2")
    assert (again.attempt, again.suspect) == (2, True)
    assert await conn.charge(again, owner="dead-2")  # dead-2 started its step too, then died
    await age(raw, redis_prefix, "s", "__in__", name, 60)
    with anyio.fail_after(10), pytest.raises(PoisonMessageError, match="2 times"):
        await pubsub.ainvoke(None, {"state_id": "s"})
    assert [m.topic for m in await conn.apeek("s")] == ["__in__", "__error__"]


async def test_owners_that_died_before_the_step_charge_nothing(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """A delivery whose owners died holding it, but never started its step as a suspect, is not charged."""
    pubsub, name = await echo_with_one_input(conn, "healthy")
    for crashed in ("dead-1", "dead-2", "dead-3", "dead-4"):
        (held,) = await conn.fetch("s", name, owner=crashed)
        assert held.attempt == 2 if crashed != "dead-1" else held.attempt == 1
        await age(raw, redis_prefix, "s", "__in__", name, 60)
    with anyio.fail_after(10):
        assert await pubsub.ainvoke(None, {"state_id": "s"}) == ["healthy"]
    assert [m.topic for m in await conn.apeek("s")] == ["__in__", "__out__"]


async def test_a_suspect_beside_fresh_work_at_max_concurrency_one_does_not_deadlock(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """A suspect and a fresh delivery under max_concurrency=1 both run: gate, then slot, for every step."""
    seen: list[str] = []

    async def step(x: str) -> str:
        seen.append(x)
        await anyio.lowlevel.checkpoint()
        return x

    pubsub = PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish(), connection=conn, max_concurrency=1)
    (name,) = pubsub.process_names
    await conn.register("s", [Subscription(name, "__in__")])
    await conn.publish("s", [msg("__in__", "held by a ghost")])
    await conn.fetch("s", name, owner="ghost")  # its owner vanished holding it: a suspect
    await age(raw, redis_prefix, "s", "__in__", name, 60)
    await conn.publish("s", [msg("__in__", "fresh")])
    with anyio.fail_after(10):
        assert sorted(await pubsub.ainvoke(None, {"state_id": "s"})) == ["fresh", "held by a ghost"]
    assert sorted(seen) == ["fresh", "held by a ghost"]


async def test_a_live_driver_keeps_its_delivery_past_the_lease(redis_url: str, redis_prefix: str) -> None:
    """A step running twice the lease is not taken over by a second driver: renewal keeps it."""
    calls: list[int] = []
    second_tried = anyio.Event()

    async def slow(x: int) -> int:
        calls.append(x)
        await second_tried.wait()
        return x

    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=0.5) as short:
        pubsub = PubSub(Topic.IN.subscribe() | slow | Topic.OUT.publish(), connection=short)
        outs: list[Any] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                async def first() -> None:
                    outs.extend(await pubsub.ainvoke(1, {"state_id": "kept"}))

                tg.start_soon(first)
                while not calls:
                    await short.wait_for_change("kept", 0.1)
                for _ in range(4):  # a second driver keeps trying for two leases
                    await short.wait_for_change("kept", 0.25)
                    (name,) = pubsub.process_names
                    assert await short.fetch("kept", name, owner="intruder") == []
                second_tried.set()
        assert outs == [1] and calls == [1]


async def test_two_concurrent_resumers_store_outputs_once(
    redis_url: str, redis_prefix: str, conn: RedisPubSubConnection
) -> None:
    """Two drivers resuming one state id at once (short leases) leave every output stored once."""
    work = Topic("work")
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda n: list(range(n))) | work.publish_each(),
        work.subscribe() | (lambda x: x * 10) | Topic.OUT.publish(),
        connection=conn,
    )
    async with pubsub.astream(50, {"state_id": "race"}) as stream:
        async for m in stream:
            if m.topic == "work":
                break
    others = [RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=1.0) for _ in range(2)]
    results: list[list[Any]] = []

    async def resume(c: RedisPubSubConnection) -> None:
        results.append(await pubsub.with_connection(c).ainvoke(None, {"state_id": "race"}))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for c in others:
                tg.start_soon(resume, c)
    for c in others:
        await c.aclose()
    outs = [m.value for m in await conn.apeek("race") if m.topic == "__out__"]
    assert sorted(outs) == [x * 10 for x in range(50)]
    assert sorted(results[0] + results[1]) == sorted(outs)


# -- failures and credentials ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_is_a_connection_failed_error_without_the_password() -> None:
    """A refused connection raises ConnectionFailedError naming URL and action, never the password."""
    port = free_port()
    conn = RedisPubSubConnection.from_url(f"redis://alice:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in repr(conn)
    with pytest.raises(ConnectionFailedError) as info:
        await conn.publish("s", [msg("a", 1)])
    text = str(info.value)
    assert "hunter2" not in text
    assert f"redis://alice:***@127.0.0.1:{port}/0" in text and "publishing to state id 's'" in text
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    await conn.aclose()


async def test_an_invoke_against_a_down_redis_names_what_failed_not_the_cleanup() -> None:
    """Without a state id, the error names the start of the run that failed, not the clean-up after it."""
    conn = RedisPubSubConnection.from_url(f"redis://127.0.0.1:{free_port()}/0")
    pubsub = PubSub(Topic.IN.subscribe() | str.upper | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10), pytest.raises(ConnectionFailedError, match="starting a run") as info:
        await pubsub.ainvoke("x")
    assert "deleting" not in str(info.value)
    await conn.aclose()


async def test_the_next_call_reconnects(tmp_path: Any) -> None:
    """After a failure, the same connection works as soon as the server is up."""
    port = free_port()
    conn = RedisPubSubConnection.from_url(f"redis://127.0.0.1:{port}/0", prefix="reconnect")
    with pytest.raises(ConnectionFailedError, match="reading the log"):
        await conn.apeek("s")
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    async with await anyio.open_process([*args, "--dir", str(tmp_path)]) as server:
        try:
            with anyio.fail_after(10):
                seen = b""
                assert server.stdout is not None
                while b"Ready to accept connections" not in seen:
                    seen += await server.stdout.receive()
                await conn.publish("s", [msg("a", 1)])
                assert [m.value for m in await conn.apeek("s")] == [1]
        finally:
            await conn.aclose()
            server.terminate()


async def test_username_and_password_urls(redis_url: str, redis_prefix: str, raw: Any) -> None:
    """An ACL user with a password connects through the URL; a wrong password fails without leaking."""
    user, password = f"permflow-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await raw.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    parts = urlsplit(redis_url)
    base = f"{parts.hostname}:{parts.port or 6379}{parts.path}"
    try:
        async with RedisPubSubConnection.from_url(
            f"redis://{user}:{password}@{base}", prefix=redis_prefix
        ) as c:
            assert await PubSub(processes=SEED, connection=c).ainvoke("a") == ["abc"]
        async with RedisPubSubConnection.from_url(f"redis://{user}:wrong-{password}@{base}") as c:
            with pytest.raises(ConnectionFailedError) as info:
                await c.apeek("s")
            assert password not in str(info.value) and user in str(info.value)
    finally:
        await raw.acl_deluser(user)


def test_rediss_urls_are_redacted_too() -> None:
    """TLS URLs keep their scheme and host in messages but lose the password."""
    conn = RedisPubSubConnection.from_url("rediss://:s3cret@cache.example:6380/2")
    assert "s3cret" not in repr(conn) and "rediss://:***@cache.example:6380/2" in repr(conn)


def test_invalid_settings_are_refused() -> None:
    """Bad prefixes, leases, ttls and serializers fail at construction with a clear message."""
    for kwargs, says in (
        ({"prefix": "a{b"}, "prefix must be a non-empty string without braces"),
        ({"lease": 0}, "lease must be a positive number of seconds"),
        ({"ttl": -1}, "ttl must be a positive number of seconds or None"),
        ({"max_stream_length": 0}, "max_stream_length must be at least 1"),
        ({"serializer": "yaml"}, "unknown serializer 'yaml'"),
    ):
        with pytest.raises(ValueError, match=says):
            RedisPubSubConnection.from_url("redis://localhost", **kwargs)


# -- fetch-ahead: a commit fetches for the readers of what it stored -----------------

FAN = [*READ_A, Subscription("q", "b")]


async def committed_to_b(conn: RedisPubSubConnection, owner: str, values: list[Any]) -> None:
    """Register p (reads a) and q (reads b); owner takes p's input and commits ``values`` to b."""
    await conn.register("s", FAN)
    await conn.publish("s", [msg("a", "in")])
    (delivery,) = await conn.fetch("s", "p", owner=owner)
    assert await conn.commit(delivery, [msg("b", v, 1) for v in values], owner=owner) is not None


async def holders(raw: Any, prefix: str, process: str, topic: str) -> list[tuple[str, int]]:
    """(consumer, times delivered) of every pending delivery of ``process`` on ``topic``
    (none once the run finished and was made compact: its topic streams are gone)."""
    stream = key(prefix, "s", f"t:{topic}")
    if await raw.type(stream) != b"stream":
        return []
    pending = await raw.xpending_range(stream, process, "-", "+", 100)
    return [(p["consumer"].decode(), p["times_delivered"]) for p in pending]


async def test_a_commit_fetches_ahead_and_the_next_fetch_gets_it_once(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """Commit takes q's delivery for its owner, whose next fetch returns it once; counted till committed."""
    await committed_to_b(conn, "o1", ["out"])
    assert await holders(raw, redis_prefix, "q", "b") == [("o1", 1)]
    (ahead,) = await conn.fetch("s", "q", owner="o1")  # a plain FETCH hides o1's own pending entry
    assert (ahead.messages[0].value, ahead.attempt) == ("out", 1)
    assert await conn.fetch("s", "q", owner="o1") == []
    assert await conn.outstanding("s", ["p", "q"]) == {"p": 0, "q": 1}
    assert await conn.commit(ahead, [], owner="o1") == []
    assert await conn.outstanding("s", ["p", "q"]) == {"p": 0, "q": 0}
    assert await holders(raw, redis_prefix, "q", "b") == []


async def test_fetch_ahead_nobody_asked_for_is_handed_back_at_the_next_call(
    conn: RedisPubSubConnection, redis_url: str, redis_prefix: str
) -> None:
    """Unasked fetch-ahead goes back at the next call: attempt 1 for anyone, waiters woken, counts right."""
    await committed_to_b(conn, "o1", ["out"])
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=5.0) as other:
        assert await other.outstanding("s", ["q"]) == {"q": 1}
        assert await other.fetch("s", "q", owner="o2") == []  # o1 holds it for now
        woke = anyio.Event()

        async def waiter() -> None:
            await other.wait_for_change("s", 30)
            woke.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert await conn.outstanding("s", ["p", "q"]) == {"p": 0, "q": 1}
                await woke.wait()
        (taken,) = await other.fetch("s", "q", owner="o2")
        assert (taken.messages[0].value, taken.attempt) == ("out", 1)
        assert await conn.commit(taken, [msg("c", "o1")], owner="o1") is None
        assert await other.commit(taken, [msg("c", "o2")], owner="o2") is not None
        assert await other.outstanding("s", ["q"]) == {"q": 0}
    assert [m.value for m in await conn.apeek("s")] == ["in", "out", "o2"]


async def test_another_owner_on_the_same_connection_gets_what_was_fetched_ahead(
    conn: RedisPubSubConnection,
) -> None:
    """Another owner's fetch right after the commit hands the fetch-ahead back first and gets attempt 1."""
    await committed_to_b(conn, "o1", ["out"])
    (taken,) = await conn.fetch("s", "q", owner="o2")
    assert (taken.messages[0].value, taken.attempt) == ("out", 1)
    assert await conn.fetch("s", "q", owner="o1") == []
    assert await conn.commit(taken, [], owner="o2") == []


async def test_a_fetch_with_a_limit_is_not_answered_from_the_fetch_ahead(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """With three fetched ahead, a limit=1 fetch returns one and leaves two fetchable at attempt 1."""
    await committed_to_b(conn, "o1", [0, 1, 2])
    assert await holders(raw, redis_prefix, "q", "b") == [("o1", 1)] * 3
    (first,) = await conn.fetch("s", "q", owner="o1", limit=1)
    assert (first.messages[0].value, first.attempt) == (0, 1)
    rest = await conn.fetch("s", "q", owner="o2")
    assert [(d.messages[0].value, d.attempt) for d in rest] == [(1, 1), (2, 1)]
    assert await conn.outstanding("s", ["q"]) == {"q": 3}
    assert sorted(await holders(raw, redis_prefix, "q", "b")) == [("o1", 1), ("o2", 1), ("o2", 1)]


async def test_no_fetch_ahead_when_a_state_id_is_registered_with_different_process_sets(
    conn: RedisPubSubConnection, redis_url: str, redis_prefix: str, raw: Any
) -> None:
    """Once two process sets registered one state id, a commit leaves its readers' deliveries unfetched."""
    await conn.register("s", READ_A)
    await committed_to_b(conn, "o1", ["out"])
    assert await holders(raw, redis_prefix, "q", "b") == []
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as other:
        (taken,) = await other.fetch("s", "q", owner="o2")
        assert (taken.messages[0].value, taken.attempt) == ("out", 1)


async def test_concurrent_commits_of_one_owner_lose_no_fetch_ahead(conn: RedisPubSubConnection) -> None:
    """Two commits in flight at once for one owner both fetch ahead for q; the owner's fetches get both."""
    await conn.register("s", FAN)
    await conn.publish("s", [msg("a", 0), msg("a", 1)])
    inputs = await conn.fetch("s", "p", owner="o")

    async def commit(delivery: Any) -> None:
        value = delivery.messages[0].value
        assert await conn.commit(delivery, [msg("b", value, 1)], owner="o") is not None

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for d in inputs:
                tg.start_soon(commit, d)
    got = await conn.fetch("s", "q", owner="o")
    got += await conn.fetch("s", "q", owner="o")
    assert sorted(d.messages[0].value for d in got) == [0, 1]


async def test_a_closed_connection_s_fetch_ahead_is_fetched_by_a_new_connection(
    redis_url: str, redis_prefix: str
) -> None:
    """What a connection fetched ahead before closing reaches a new one (at once or after the lease)."""
    first = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=1.0)
    await committed_to_b(first, "o1", ["out"])
    await first.aclose()
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=1.0) as second:
        with anyio.fail_after(10):
            while not (got := await second.fetch("s", "q", owner="o2")):
                await second.wait_for_change("s", 0.2)
        (taken,) = got
        assert taken.messages[0].value == "out" and taken.attempt in (1, 2)
        assert await second.commit(taken, [], owner="o1") is None
        assert await second.commit(taken, [], owner="o2") == []
        assert await second.outstanding("s", ["p", "q"]) == {"p": 0, "q": 0}
