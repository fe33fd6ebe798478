"""Workers in this process drive runs that a ``with_workers()`` client submits.

The client and the workers share one in-memory connection, so these tests run
on asyncio and trio; tests/test_worker_processes.py does the same across OS
processes on Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import permflow._remote as remote
from permflow import InMemoryPubSubConnection, NoWorkersError, PoisonMessageError, PubSub, Topic
from permflow._remote import WorkerRunError
from permflow._worker import Worker

pytestmark = pytest.mark.anyio

MIDDLE = Topic("middle")
QUESTION = Topic("question")
ANSWER = Topic("answer")
ITEMS = Topic("items")
DONE = Topic("done")


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run ``workers`` for the duration of the block, then stop them and wait."""
    async with anyio.create_task_group() as tg:
        for worker in workers:
            await tg.start(worker.run)
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()


def chain(connection: InMemoryPubSubConnection) -> PubSub:
    return PubSub(
        Topic.IN.subscribe() | (lambda x: x + "b") | MIDDLE.publish(),
        MIDDLE.subscribe() | (lambda x: x + "c") | Topic.OUT.publish(),
        connection=connection,
    )


async def test_ainvoke_on_workers_returns_what_a_local_ainvoke_returns() -> None:
    """A client's ainvoke gives the same OUT values as running the steps locally."""
    conn = InMemoryPubSubConnection()
    pubsub = chain(conn)
    local = await pubsub.ainvoke("a")
    with anyio.fail_after(10):
        async with running(Worker(pubsub, name="w1")):
            remote = await pubsub.with_workers().ainvoke("a")
    assert local == remote == ["abc"]


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
async def test_client_runs_no_step_itself() -> None:
    """Without a worker, nothing runs the steps: the client's run does not finish."""
    calls: list[str] = []
    pubsub = PubSub(Topic.IN.subscribe() | calls.append, connection=InMemoryPubSubConnection())
    with anyio.move_on_after(0.3) as scope:  # the deadline is the assertion here
        await pubsub.with_workers().ainvoke("x")
    assert scope.cancelled_caught
    assert calls == []


async def test_astream_yields_messages_as_workers_publish_them() -> None:
    """The client sees the middle message while a later step still waits for it."""
    conn = InMemoryPubSubConnection()
    seen_middle = anyio.Event()

    async def gated(x: str) -> str:
        await seen_middle.wait()  # only the client seeing "middle" lets this finish
        return x + "c"

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x: x + "b") | MIDDLE.publish(),
        MIDDLE.subscribe() | gated | Topic.OUT.publish(),
        connection=conn,
    )
    topics: list[tuple[str, Any]] = []
    with anyio.fail_after(10):
        async with running(Worker(pubsub, name="w1")):
            async with pubsub.with_workers().astream("a") as stream:
                async for message in stream:
                    topics.append((message.topic, message.value))
                    if message.topic == MIDDLE.name:
                        seen_middle.set()
    assert topics == [("__in__", "a"), ("middle", "ab"), ("__out__", "abc")]


async def test_a_builtin_exception_on_a_worker_is_raised_as_itself_in_the_client() -> None:
    """A ValueError raised by a worker's step comes back as ValueError with its message."""

    def broken(x: str) -> str:
        raise ValueError(f"cannot handle {x!r}")

    conn = InMemoryPubSubConnection()
    pubsub = PubSub(Topic.IN.subscribe() | broken | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10):
        async with running(Worker(pubsub, name="w1")):
            with pytest.raises(ValueError, match="cannot handle 'x'"):
                await pubsub.with_workers().ainvoke("x", {"state_id": "fails"})
    record = await conn.failure("fails")
    assert record is not None and record["error"] == "ValueError"


class QuotaExceeded(Exception):
    """An exception type a client cannot rebuild (not a builtin)."""


async def test_a_custom_exception_on_a_worker_is_raised_as_worker_run_error() -> None:
    """An exception type the client cannot rebuild arrives as WorkerRunError naming it."""

    def broken(x: str) -> str:
        raise QuotaExceeded("out of tokens")

    conn = InMemoryPubSubConnection()
    pubsub = PubSub(Topic.IN.subscribe() | broken | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10):
        async with running(Worker(pubsub, name="w1")):
            with pytest.raises(WorkerRunError) as info:
                await pubsub.with_workers().ainvoke("x")
    assert "QuotaExceeded" in str(info.value) and "out of tokens" in str(info.value)
    assert info.value.record["error"].endswith("QuotaExceeded")
    assert info.value.record["process"] == pubsub.process_names[0]


async def test_breaking_out_stops_the_workers_and_the_run_resumes_with_new_input() -> None:
    """Leaving the stream cancels a blocked step on the worker; resuming with an answer finishes the run."""
    conn = InMemoryPubSubConnection()
    started, cancelled = anyio.Event(), anyio.Event()
    calls: list[str] = []

    async def wait_for_human(question: str) -> str:
        calls.append(question)
        if len(calls) == 1:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise
        return f"{question}: resumed"

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x: f"approve {x}?") | QUESTION.publish(),
        QUESTION.subscribe() | wait_for_human | Topic.OUT.publish(),
        ANSWER.subscribe() | (lambda a: f"human said {a}") | Topic.OUT.publish(),
        inputs=[ANSWER],
        connection=conn,
    )
    client = pubsub.with_workers()
    config = {"state_id": "hitl"}
    with anyio.fail_after(10):
        async with running(Worker(pubsub, name="w1")):
            async with client.astream("deploy", config) as stream:
                async for message in stream:
                    if message.topic == QUESTION.name:
                        await started.wait()
                        break
            await cancelled.wait()
            assert await conn.outstanding("hitl", pubsub.process_names) != dict.fromkeys(
                pubsub.process_names, 0
            )
            out = await client.ainvoke("yes", config, topic=ANSWER)
    assert sorted(out) == ["approve deploy?: resumed", "human said yes"]
    assert calls == ["approve deploy?", "approve deploy?"]
    log = [(m.topic, m.value) for m in await conn.apeek("hitl")]
    assert log.count(("__out__", "approve deploy?: resumed")) == 1


async def test_once_the_stream_is_closed_the_workers_store_nothing_more() -> None:
    """After close() returns, the worker's steps are cancelled at once and the log never grows."""
    conn = InMemoryPubSubConnection()
    release = anyio.Event()
    started, ended = [0], [0]
    settled = [anyio.Event()]

    async def square(x: int) -> int:
        started[0] += 1
        try:
            await release.wait()  # held until after the client left
            return x * x
        finally:
            ended[0] += 1
            if ended[0] == started[0]:
                settled[0].set()

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda n: list(range(n))) | ITEMS.publish_each(),
        ITEMS.subscribe() | square | DONE.publish(),
        DONE.join() | sum | Topic.OUT.publish(),
        connection=conn,
    )
    client = pubsub.with_workers()
    # the fallback poll is 5 s: a stop noticed well within that was pushed
    with anyio.fail_after(3):
        async with running(Worker(pubsub, name="w1", concurrency=30)):
            async with client.astream(30, {"state_id": "fan"}) as stream:
                async for message in stream:
                    if message.topic == ITEMS.name:
                        await anyio.wait_all_tasks_blocked()  # the worker's steps are waiting
                        break
            stored = len(await conn.apeek("fan"))
            release.set()  # steps a late stop left running would now finish and commit
            await settled[0].wait()
            assert len(await conn.apeek("fan")) == stored
    assert started[0] > 0 and ended[0] == started[0]
    assert [m.topic for m in await conn.apeek("fan")].count(DONE.name) == 0


async def test_a_join_over_a_fan_out_on_two_workers_fires_exactly_once() -> None:
    """Fifty messages handled by both of two workers are joined once, with every value."""
    conn = InMemoryPubSubConnection()
    joined: list[list[int]] = []
    running_now = 0
    both_workers_busy = anyio.Event()

    async def square(x: int) -> int:
        nonlocal running_now
        running_now += 1
        if running_now >= 3:
            both_workers_busy.set()
        await both_workers_busy.wait()  # each worker runs at most 2 steps at once: 3 need both
        running_now -= 1
        return x * x

    def total(values: list[int]) -> int:
        joined.append(values)
        return sum(values)

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda n: list(range(n))) | ITEMS.publish_each(),
        ITEMS.subscribe() | square | DONE.publish(),
        DONE.join() | total | Topic.OUT.publish(),
        connection=conn,
    )
    with anyio.fail_after(20):
        workers = Worker(pubsub, name="w1", concurrency=2), Worker(pubsub, name="w2", concurrency=2)
        async with running(*workers):
            out = await pubsub.with_workers().ainvoke(50, {"state_id": "fan"})
    assert all(w.runs_done for w in workers)
    assert out == [sum(x * x for x in range(50))]
    assert len(joined) == 1 and sorted(joined[0]) == [x * x for x in range(50)]
    assert [m.topic for m in await conn.apeek("fan")].count("__out__") == 1


async def test_stop_with_grace_lets_a_running_run_finish() -> None:
    """After stop(), a run already running completes within the grace period and is not cancelled."""
    conn = InMemoryPubSubConnection()
    started, release = anyio.Event(), anyio.Event()
    cancelled: list[bool] = []

    async def slow(x: str) -> str:
        started.set()
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise
        return x + "!"

    pubsub = PubSub(Topic.IN.subscribe() | slow | Topic.OUT.publish(), connection=conn)
    worker = Worker(pubsub, name="w1", grace=30)
    left_claim_loop = anyio.Event()
    claim = conn.claim

    async def observed_claim(name: str, *, limit: int, max_seconds: float) -> Any:
        claims = await claim(name, limit=limit, max_seconds=max_seconds)
        if worker.stopping:  # the worker checks stopping next and takes no more work
            left_claim_loop.set()
        return claims

    conn.claim = observed_claim  # type: ignore[method-assign]
    out: list[Any] = []

    async def client() -> None:
        out.extend(await pubsub.with_workers().ainvoke("run"))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            tg.start_soon(client)
            await started.wait()
            worker.stop()
            await left_claim_loop.wait()
            release.set()
    assert out == ["run!"]
    assert cancelled == []
    assert worker.runs_done == 1


async def test_a_run_outlasting_the_grace_period_is_handed_back_to_another_worker() -> None:
    """A run still going when the grace period ends is cancelled and finished by another worker."""
    conn = InMemoryPubSubConnection()
    started = anyio.Event()
    calls: list[str] = []

    async def slow(x: str) -> str:
        calls.append(x)
        if len(calls) == 1:
            started.set()
            await anyio.sleep_forever()
        return x + "!"

    pubsub = PubSub(Topic.IN.subscribe() | slow | Topic.OUT.publish(), connection=conn)
    first, second = Worker(pubsub, name="w1", grace=0.01), Worker(pubsub, name="w2")
    first_stopped, finished = anyio.Event(), anyio.Event()
    out: list[Any] = []

    async def run_first() -> None:
        await first.run()
        first_stopped.set()

    async def client() -> None:
        out.extend(await pubsub.with_workers().ainvoke("run"))
        finished.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_first)
            tg.start_soon(client)
            await started.wait()
            first.stop()
            await first_stopped.wait()
            assert not finished.is_set()
            async with running(second):
                await finished.wait()
    assert out == ["run!"]
    assert len(calls) == 2
    assert second.runs_done == 1


async def test_two_workers_share_the_runs_of_a_batch() -> None:
    """Both workers drive some of ten runs: four slow steps run at once, two per worker at most."""
    conn = InMemoryPubSubConnection()
    running_now = 0
    four_at_once = anyio.Event()

    async def slow(x: int) -> int:
        nonlocal running_now
        running_now += 1
        if running_now >= 4:
            four_at_once.set()
        await four_at_once.wait()  # needs both workers: each runs at most 2 steps
        running_now -= 1
        return x * 10

    pubsub = PubSub(Topic.IN.subscribe() | slow | Topic.OUT.publish(), connection=conn)
    workers = Worker(pubsub, name="w1", concurrency=2), Worker(pubsub, name="w2", concurrency=2)
    with anyio.fail_after(20):
        async with running(*workers):
            results = await pubsub.with_workers().abatch(list(range(10)))
    assert results == [[x * 10] for x in range(10)]
    assert all(w.runs_done > 0 for w in workers)
    assert sum(w.runs_done for w in workers) >= 10


async def test_stop_before_run_has_started_is_honoured() -> None:
    """A worker told to stop before its run() started returns from run() at once."""
    worker = Worker(chain(InMemoryPubSubConnection()), name="early")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            worker.stop()
    assert worker.stopping and worker.runs_done == 0


async def test_a_poison_message_on_a_worker_fails_the_client() -> None:
    """A delivery dead-lettered on a worker fails the client's call instead of looking finished."""
    conn = InMemoryPubSubConnection()

    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    pubsub = PubSub(Topic.IN.subscribe() | boom | Topic.OUT.publish(), connection=conn, max_deliveries=1)
    client = pubsub.with_workers()
    with anyio.fail_after(20):
        async with running(Worker(pubsub, name="w1")):
            with pytest.raises(ValueError, match="bad 1"):
                await client.ainvoke(1, {"state_id": "poison"})
            with pytest.raises(PoisonMessageError, match="1 times") as info:
                await client.ainvoke(None, {"state_id": "poison"})
            assert type(info.value) is PoisonMessageError  # permflow's own type, not WorkerRunError


async def test_a_client_with_no_live_worker_fails_clearly_and_the_run_waits_for_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no live worker the client raises NoWorkersError saying how to start one; a later one runs it."""
    monkeypatch.setattr(remote, "NO_WORKERS_SECONDS", 0.2)
    monkeypatch.setattr(remote, "HEARTBEAT_SECONDS", 0.05)
    conn = InMemoryPubSubConnection()
    pubsub = chain(conn)
    client = pubsub.with_workers()
    await conn.heartbeat("ghost")  # a worker that then stops beating
    with caplog.at_level("INFO", logger="permflow.run"), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def ghost_leaves() -> None:
                await anyio.wait_all_tasks_blocked()
                await conn.heartbeat("ghost", alive=False)

            tg.start_soon(ghost_leaves)
            with pytest.raises(
                NoWorkersError, match=r"no worker has been alive .* start one with 'python -m"
            ):
                await client.ainvoke("a", {"state_id": "alone"})
        assert any("worker ghost stopped sending heartbeats" in r.getMessage() for r in caplog.records)
        async with running(Worker(pubsub, name="w1")):
            assert await client.ainvoke(None, {"state_id": "alone"}) == ["abc"]


async def test_heartbeats_say_which_workers_are_alive() -> None:
    """A running worker is listed as alive, and is gone once it stopped."""
    conn = InMemoryPubSubConnection()
    worker = Worker(chain(conn), name="w1")
    with anyio.fail_after(10):
        async with running(worker):
            assert await conn.live_workers(1.0) == ["w1"]
    assert await conn.live_workers(1.0) == []


async def test_a_stopped_runs_commits_are_refused_until_it_starts_again() -> None:
    """After request_stop the in-memory store refuses the run's commits; a new register clears the stop."""
    from permflow import Message, Subscription

    conn = InMemoryPubSubConnection()
    await conn.register("s", [Subscription("p", "a")])
    await conn.publish("s", [Message("a", 1, "s", 0.0)])
    (delivery,) = await conn.fetch("s", "p", owner="o")
    await conn.request_stop("s")
    assert await conn.commit(delivery, [Message("b", 2, "s", 0.0)], owner="o") is None
    assert [m.topic for m in await conn.apeek("s")] == ["a"]
    await conn.register("s", [Subscription("p", "a")])
    assert await conn.commit(delivery, [Message("b", 2, "s", 0.0)], owner="o") is not None
