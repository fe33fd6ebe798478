"""Work distribution on RedisPubSubConnection: announcements, claims, marks, summaries.

asyncio only: redis-py has no trio support.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from helpers import wakes_a_waiter

from permflow import Message, PermflowError, PubSub, RedisPubSubConnection, Subscription, Topic
from permflow._worker import Worker
from permflow.connections._base import Claim

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _connect(
    redis_url: str, prefix: str, raw: Any, lease: float
) -> AsyncIterator[RedisPubSubConnection]:
    async with RedisPubSubConnection.from_url(redis_url, prefix=prefix, lease=lease) as c:
        yield c
    async for k in raw.scan_iter(match=f"{{{prefix}:*"):
        await raw.delete(k)
    await raw.delete(f"{{{prefix}}}:stops", f"{{{prefix}}}:workers")


@pytest.fixture
async def conn(redis_url: str, redis_prefix: str, raw: Any) -> AsyncIterator[RedisPubSubConnection]:
    async for c in _connect(redis_url, redis_prefix, raw, 5.0):
        yield c


@pytest.fixture
async def short(redis_url: str, redis_prefix: str, raw: Any) -> AsyncIterator[RedisPubSubConnection]:
    """A connection whose claims lapse after one silent second."""
    async for c in _connect(redis_url, redis_prefix, raw, 1.0):
        yield c


def msg(topic: str, value: Any) -> Message:
    return Message(topic, value, "", time.time(), "", 0, ())


async def claim_one(conn: RedisPubSubConnection, worker: str) -> Claim:
    with anyio.fail_after(10):
        while True:
            got = await conn.claim(worker, limit=1, max_seconds=0.5)
            if got:
                assert len(got) == 1
                return got[0]


async def test_announce_claim_finish_round_trip(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """An announced state id is claimed once, and nothing is left to claim after finish."""
    await conn.announce("s")
    claim = await claim_one(conn, "w1")
    assert claim.state_id == "s"
    assert await conn.claim("w2", limit=5, max_seconds=0) == []
    await conn.finish(claim)
    assert await raw.xlen(conn._work_key("s")) == 0
    assert await conn.claim("w1", limit=5, max_seconds=0) == []


async def test_a_blocked_claim_wakes_on_announce_without_stalling_other_calls(
    conn: RedisPubSubConnection,
) -> None:
    """A worker waiting in claim gets a later announcement; the connection serves other calls meanwhile."""
    got: list[Claim] = []

    async def worker() -> None:
        got.extend(await conn.claim("w", limit=3, max_seconds=30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            await anyio.wait_all_tasks_blocked()
            await conn.publish("other", [msg("a", 1)])
            assert len(await conn.apeek("other")) == 1
            await conn.announce("s")
    assert [c.state_id for c in got] == ["s"]


async def test_concurrent_workers_never_share_an_announcement(
    conn: RedisPubSubConnection, redis_url: str, redis_prefix: str
) -> None:
    """Workers claiming at the same time each get distinct announcements, and all of them are handed out."""
    ids = [f"s{i}" for i in range(40)]
    for sid in ids:
        await conn.announce(sid)
    taken: dict[str, list[str]] = {}

    async def worker(name: str) -> None:
        mine = taken.setdefault(name, [])
        async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as own:
            while True:
                got = await own.claim(name, limit=3, max_seconds=0.2)
                if not got:
                    return
                mine += (c.state_id for c in got)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(worker, f"w{n}")
    everything = [sid for mine in taken.values() for sid in mine]
    assert sorted(everything) == sorted(ids)
    assert sum(1 for mine in taken.values() if mine) >= 2


async def test_a_silent_worker_loses_its_claim_after_the_lease(
    short: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """A claim its worker stops renewing goes to another worker after the lease, and stays with it."""
    await short.announce("s")
    lost = await claim_one(short, "w1")
    assert await short.claim("w2", limit=1, max_seconds=0) == []
    started = time.monotonic()
    taken = await claim_one(short, "w2")
    assert taken.state_id == "s" and time.monotonic() - started >= 0.5
    # The silent worker's late finish does not touch what w2 now holds.
    await short.finish(lost)
    pending = await raw.xpending(short._work_key("s"), "workers")
    assert pending["pending"] == 1 and [c["name"] for c in pending["consumers"]] == [b"w2"]
    await short.finish(taken)
    assert await short.claim("w3", limit=5, max_seconds=0) == []


async def test_renewed_claims_outlive_the_lease(short: RedisPubSubConnection) -> None:
    """A worker that keeps renewing keeps its claim past several leases."""
    await short.announce("s")
    claim = await claim_one(short, "w1")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        await short.renew_claims("w1")
        # Waiting on the server (nothing announced), not synchronising tasks.
        assert await short.claim("w2", limit=1, max_seconds=0.25) == []
    await short.finish(claim)


async def test_a_claim_whose_reply_was_lost_is_not_renewed(
    short: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """An entry read for a worker but never handed to it (a cancelled claim) lapses despite renewals."""
    assert await short.claim("w1", limit=1, max_seconds=0) == []  # creates the group
    await short.announce("orphan")
    await raw.xreadgroup("workers", "w1", {short._work_key("orphan"): ">"}, count=1)
    await short.announce("kept")
    kept = await claim_one(short, "w1")
    assert kept.state_id == "kept"
    with anyio.fail_after(10):
        while True:
            await short.renew_claims("w1")
            got = await short.claim("w2", limit=5, max_seconds=0.2)
            if got:
                break
    assert [c.state_id for c in got] == ["orphan"]
    await short.finish(kept)
    await short.finish(got[0])


async def test_hand_back_makes_a_claim_available_at_once(conn: RedisPubSubConnection) -> None:
    """A claim handed back is claimable by another worker immediately, long before the lease."""
    await conn.announce("s")
    claim = await claim_one(conn, "w1")
    assert await conn.claim("w2", limit=1, max_seconds=0) == []
    await conn.finish(claim, hand_back=True)
    again = await conn.claim("w2", limit=1, max_seconds=0)
    assert [c.state_id for c in again] == ["s"]
    assert await conn.claim("w1", limit=1, max_seconds=0) == []


async def test_marks_are_set_read_cleared_by_announce_and_removed_by_delete(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str
) -> None:
    """Failure and stop marks read back, announce clears them, and adelete removes their keys."""
    assert await conn.failure("s") is None and not await conn.stop_requested("s")
    record: dict[str, object] = {"error": "ValueError", "message": "boom", "at": [1, 2]}
    await conn.mark_failed("s", record)
    await conn.request_stop("s")
    assert await conn.failure("s") == record and await conn.stop_requested("s")
    assert await conn.failure("other") is None and not await conn.stop_requested("other")
    await conn.announce("s")
    assert await conn.failure("s") is None and not await conn.stop_requested("s")
    await conn.mark_failed("s", record)
    await conn.request_stop("s")
    await conn.adelete("s")
    assert [k async for k in raw.scan_iter(match=f"{{{redis_prefix}:s}}*")] == []
    with pytest.raises(TypeError, match="'s'"):
        await conn.mark_failed("s", {"bad": object()})


async def test_marks_take_the_ttl(redis_url: str, redis_prefix: str, raw: Any) -> None:
    """With a ttl, failure and stop marks expire like the rest of the state id."""
    async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, ttl=60) as c:
        await c.mark_failed("s", {"error": "x"})
        await c.request_stop("s")
    for mark in ("failed", "stop"):
        assert 0 < await raw.pttl(f"{{{redis_prefix}:s}}:{mark}") <= 60_000
    await raw.delete(
        f"{{{redis_prefix}:s}}:failed", f"{{{redis_prefix}:s}}:stop", f"{{{redis_prefix}:s}}:chg"
    )


@pytest.mark.parametrize("mark", ["stop", "failure"])
async def test_marks_wake_wait_for_change(conn: RedisPubSubConnection, mark: str) -> None:
    """A waiter on a state id wakes when a stop is requested or a failure is marked for it."""
    await conn.outstanding("s", [])
    if mark == "stop":
        await wakes_a_waiter(conn, "s", lambda: conn.request_stop("s"))
    else:
        await wakes_a_waiter(conn, "s", lambda: conn.mark_failed("s", {"error": "x"}))


async def test_read_log_returns_what_follows_an_id(conn: RedisPubSubConnection) -> None:
    """read_log gives the messages after the given id (exclusive), or all of them without one."""
    stored = await conn.publish("s", [msg("a", n) for n in range(5)])
    assert [m.value for m in await conn.read_log("s", None)] == [0, 1, 2, 3, 4]
    after = await conn.read_log("s", stored[1].id)
    assert [m.value for m in after] == [2, 3, 4] and after[0].id == stored[2].id
    assert await conn.read_log("s", stored[-1].id) == []
    with pytest.raises(ValueError, match="'s'"):
        await conn.read_log("s", "not-an-id")


async def test_run_summaries_count_outstanding_and_order_by_update(conn: RedisPubSubConnection) -> None:
    """run_summaries lists every state id with its unacked total, most recently updated first."""
    await conn.register("old", [Subscription("p", "a"), Subscription("q", "a")])
    await conn.publish("old", [msg("a", 1), msg("a", 2)])
    await conn.register("new", [Subscription("p", "a")])
    await conn.publish("new", [msg("a", 1)])
    (delivery,) = await conn.fetch("new", "p", owner="o")
    await conn.commit(delivery, [], owner="o")
    await conn.announce("new")  # the work stream is not a state id
    summaries = await conn.arun_summaries()
    assert [(s["state_id"], s["outstanding"]) for s in summaries] == [("new", 0), ("old", 4)]
    newest, oldest = (s["updated_at"] for s in summaries)
    assert isinstance(newest, float) and isinstance(oldest, float)
    assert time.time() + 1 >= newest >= oldest > time.time() - 60


async def test_a_run_with_a_missing_key_is_quarantined_and_the_worker_serves_the_next(
    conn: RedisPubSubConnection, raw: Any, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose topic stream vanished fails its client once; the worker does not hand it back in a loop."""
    pubsub = PubSub(Topic.IN.subscribe() | (lambda x: x * 2) | Topic.OUT.publish(), connection=conn)
    client = pubsub.with_workers()
    (name,) = pubsub.process_names
    await conn.register("broken", [Subscription(name, "__in__")])
    await conn.publish("broken", [msg("__in__", 1)])
    await raw.delete(f"{{{redis_prefix}:broken}}:t:__in__")  # evicted, or deleted by hand
    worker = Worker(pubsub, name="w1")
    with caplog.at_level("INFO", logger="permflow.worker"), anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            with pytest.raises(PermflowError, match="missing"):
                await client.ainvoke(None, {"state_id": "broken"})
            assert await client.ainvoke(21, {"state_id": "healthy"}) == [42]
            worker.stop()
    quarantined = [r for r in caplog.records if "quarantined state id broken" in r.getMessage()]
    handed_back = [r for r in caplog.records if "hands back state id broken" in r.getMessage()]
    assert len(quarantined) == 1 and handed_back == []


async def test_a_stop_request_wakes_a_waiting_worker_and_refuses_the_runs_commits(
    conn: RedisPubSubConnection,
) -> None:
    """request_stop wakes wait_for_stop_requests at once, and the stopped run's commits are refused."""
    await conn.register("s", [Subscription("p", "a")])
    await conn.publish("s", [msg("a", 1)])
    (delivery,) = await conn.fetch("s", "p", owner="o")
    cursor = await conn.wait_for_stop_requests(None, 0.01)  # the cursor: nothing asked since
    with anyio.fail_after(3):  # well under the 5 s the wait below would otherwise last
        async with anyio.create_task_group() as tg:
            woke: list[object] = []

            async def watch() -> None:
                woke.append(await conn.wait_for_stop_requests(cursor, 5))

            tg.start_soon(watch)
            await anyio.wait_all_tasks_blocked()
            await conn.request_stop("s")
    assert woke and woke[0] != cursor
    assert await conn.commit(delivery, [msg("b", 2)], owner="o") is None
    assert [m.topic for m in await conn.apeek("s")] == ["a"]
    await conn.register("s", [Subscription("p", "a")])  # a run starting again clears the stop
    assert await conn.commit(delivery, [msg("b", 2)], owner="o") is not None


async def test_heartbeats_list_live_workers_by_server_time(conn: RedisPubSubConnection) -> None:
    """A worker that beat is alive until it says it stopped; one that never beat is not listed."""
    assert await conn.live_workers(5) == []
    await conn.heartbeat("w1")
    await conn.heartbeat("w2")
    assert await conn.live_workers(5) == ["w1", "w2"]
    await conn.heartbeat("w1", alive=False)
    assert await conn.live_workers(5) == ["w2"]
