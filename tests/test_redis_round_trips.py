"""Round trips of a run on Redis: what a run costs, call by call.

A run starts with one script (START: register, publish the input, fetch for its
readers), makes one COMMIT per step, and its last commit answers what the engine
asks next (what is outstanding). These tests count the exchanges with Redis, and
check that the shortcuts change nothing a run promises.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import anyio
import pytest

from permflow import DefinitionError, PubSub, Topic

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio"])

ONE, TWO = Topic("one"), Topic("two")


def three_steps() -> list[Any]:
    return [
        Topic.IN.subscribe() | (lambda x: x + 1) | ONE.publish(),
        ONE.subscribe() | (lambda x: x * 10) | TWO.publish(),
        TWO.subscribe() | (lambda x: x - 1) | Topic.OUT.publish(),
    ]


async def test_a_run_costs_one_start_and_one_commit_per_step(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """A 3-step run without a state id: START, three COMMITs, DELETE; nothing else, one
    script per exchange."""
    pubsub = PubSub(*three_steps(), connection=redis_conn)
    with anyio.fail_after(10):
        await pubsub.ainvoke(0)  # the scripts are loaded: no call is sent again for NOSCRIPT
        round_trips.clear()
        assert await pubsub.ainvoke(1) == [19]
    assert round_trips == [["START"], ["COMMIT"], ["COMMIT"], ["COMMIT"], ["DELETE"]]


async def test_a_resumed_run_starts_from_its_stored_state(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """START on a state id that has finished runs (compact) and new input: the new input
    runs once, and the log keeps every earlier message in order."""
    pubsub = PubSub(*three_steps(), connection=redis_conn)
    with anyio.fail_after(10):
        await pubsub.ainvoke(0)  # the scripts are loaded: no call is sent again for NOSCRIPT
        round_trips.clear()
        assert await pubsub.ainvoke(1, {"state_id": "again"}) == [19]
        assert await pubsub.ainvoke(2, {"state_id": "again"}) == [29]
        assert await pubsub.ainvoke(None, {"state_id": "again"}) == []
        log = [(m.topic, m.value) for m in await pubsub.apeek("again")]
    assert log == [
        ("__in__", 1), ("one", 2), ("two", 20), ("__out__", 19),
        ("__in__", 2), ("one", 3), ("two", 30), ("__out__", 29),
    ]  # fmt: skip
    assert Counter(name for trip in round_trips for name in trip)["START"] == 2


async def test_the_last_commit_answers_what_is_outstanding(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """A run that ends on a commit with nothing to fetch asks Redis nothing more: the
    counts came with that commit, and they are right (zero everywhere)."""
    pubsub = PubSub(*three_steps(), connection=redis_conn)
    with anyio.fail_after(10):
        await pubsub.ainvoke(5, {"state_id": "counted"})
        names = Counter(name for trip in round_trips for name in trip)
        assert "OUTSTANDING" not in names
        round_trips.clear()
        left = await redis_conn.outstanding("counted", pubsub.process_names)
    assert round_trips == [["OUTSTANDING"]]  # asked again later: a real question
    assert set(left.values()) == {0}


async def test_counts_of_a_commit_are_not_reused_after_another_call(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """Counts a commit brought back answer the next question with no round trip, but only
    when no other call of the run came between: after a publish, outstanding asks Redis
    and sees the new message."""
    from permflow import Message, Subscription

    with anyio.fail_after(10):
        await redis_conn.register("stale", [Subscription("p", "t")])
        await redis_conn.publish("stale", [Message("t", 1, "stale", 0.0)])
        (delivery,) = await redis_conn.fetch("stale", "p", owner="o")
        await redis_conn.commit(delivery, [], owner="o")  # nothing to fetch next: counts come back
        round_trips.clear()
        assert await redis_conn.outstanding("stale", ["p"]) == {"p": 0}
        assert round_trips == []
        await redis_conn.publish("stale", [Message("t", 2, "stale", 0.0)])
        (delivery,) = await redis_conn.fetch("stale", "p", owner="o")
        await redis_conn.commit(delivery, [], owner="o")  # counts come back: p has 0 left
        await redis_conn.publish("stale", [Message("t", 3, "stale", 0.0)])  # now it has 1
        round_trips.clear()
        assert await redis_conn.outstanding("stale", ["p"]) == {"p": 1}
    assert round_trips == [["OUTSTANDING"]]


async def test_a_start_that_conflicts_stores_nothing(anyio_backend: str, redis_conn: Any) -> None:
    """START with a process name known for another mode (here a join) raises
    DefinitionError naming it, and the input is not stored."""
    first = PubSub(Topic.IN.subscribe(name="p") | (lambda x: x) | Topic.OUT.publish(), connection=redis_conn)
    second = PubSub(Topic.IN.join(name="p") | (lambda x: x) | Topic.OUT.publish(), connection=redis_conn)
    with anyio.fail_after(10):
        await first.ainvoke(1, {"state_id": "clash"})
        before = await first.apeek("clash")
        with pytest.raises(DefinitionError, match="'p'"):
            await second.ainvoke(2, {"state_id": "clash"})
        after = await first.apeek("clash")
    assert [m.value for m in after] == [m.value for m in before] == [1, 1]


@pytest.mark.parametrize("keep", [True, False])
async def test_a_run_deleted_when_it_ends_is_not_made_compact_first(
    anyio_backend: str, redis_conn: Any, raw: Any, keep: bool
) -> None:
    """A finished run is made compact (its log one string) unless its caller said it will
    delete it (``keep=False``): then its last commit leaves it as it is, and its results
    are the same."""
    from permflow import Message, Subscription

    sid = f"fleeting-{keep}"
    with anyio.fail_after(10):
        stored = await redis_conn.start(
            sid, [Subscription("p", "t")], [Message("t", 1, sid, 0.0)], owner="o", keep=keep
        )
        (delivery,) = await redis_conn.fetch(sid, "p", owner="o")
        out = await redis_conn.commit(delivery, [Message("__out__", 2, sid, 0.0)], owner="o")
        kind = await raw.type(f"{{{redis_conn.prefix}:{sid}}}:log")
        log = [(m.topic, m.value) for m in await redis_conn.apeek(sid)]
    assert [m.value for m in stored] == [1] and [m.value for m in out or []] == [2]
    assert kind == (b"string" if keep else b"stream")
    assert log == [("t", 1), ("__out__", 2)]


def test_a_script_call_is_packed_as_the_redis_protocol_says(anyio_backend: str) -> None:
    """EVALSHA, the key count, then every key and argument as a bulk string: text as UTF-8,
    numbers as their repr, bytes (and their subclasses) as they are; a bool is refused."""
    from permflow.connections.redis._client import _pack

    class Raw(bytes):
        pass

    packed = _pack("a" * 40, ["k", "ключ"], [0, 2.5, b"\x00\r\n", Raw(b"r"), "é"])
    parts = [b"EVALSHA", b"a" * 40, b"2", b"k", "ключ".encode()]
    parts += [b"0", b"2.5", b"\x00\r\n", b"r", "é".encode()]
    expected = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    assert packed == expected
    with pytest.raises(TypeError, match="bool"):
        _pack("a" * 40, [], [True])


async def test_a_worker_gets_each_next_delivery_with_the_commit_before_it(
    anyio_backend: str, redis_url: str, redis_prefix: str, round_trips: list[list[str]]
) -> None:
    """A worker driving a 3-step run fetches once (the input); each next delivery comes
    with the commit before it, and the last commit answers what is outstanding."""
    from permflow import RedisPubSubConnection
    from permflow._worker import Worker

    client_conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=5.0)
    worker_conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=5.0)
    try:
        worker = Worker(PubSub(*three_steps(), connection=worker_conn), name="w1")
        client = PubSub(*three_steps(), connection=client_conn).with_workers()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                assert await client.ainvoke(1) == [19]  # scripts loaded, worker warm
                round_trips.clear()
                assert await client.ainvoke(2) == [29]
                worker.stop()
    finally:
        await client_conn.aclose()
        await worker_conn.aclose()
    scripts = Counter(name for trip in round_trips for name in trip)
    assert scripts["COMMIT"] == 3
    # the input's delivery, sent once: the worker knew the run's topics' keys to declare;
    # the other deliveries came with the commits
    assert scripts["FETCH"] == 1
    assert scripts["OUTSTANDING"] == 1  # the worker's look at what its claim brought
    assert scripts["START"] == 1 and "REGISTER" not in scripts  # the client's one call to begin


async def test_a_call_larger_than_the_socket_takes_at_once_is_sent_whole(
    anyio_backend: str, redis_conn: Any
) -> None:
    """A script call of several MB (the socket's buffer fills: the write waits for it) reaches
    Redis whole, and the connection goes on serving calls."""
    from permflow import Message

    big = "x" * (8 * 1024 * 1024)
    with anyio.fail_after(20):
        await redis_conn.publish("big", [Message("t", big, "big", 0.0)])
        await redis_conn.publish("big", [Message("t", "small", "big", 0.0)])
        log = await redis_conn.apeek("big")
    assert [m.value for m in log] == [big, "small"]


async def test_a_start_whose_reply_never_came_leaves_nothing_held(
    anyio_backend: str, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A START that ran but whose reply was lost (the call failed) handed the run's driver its
    input: the failed run hands it back, so a resume runs it at once, even with leases that
    never run out."""
    import math

    from permflow import ConnectionFailedError, RedisPubSubConnection

    conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=math.inf)
    original = type(conn).start

    async def cut_off(self: Any, *args: Any, **kwargs: Any) -> Any:
        await original(self, *args, **kwargs)  # it ran...
        self._client().ahead.clear()  # ...and its reply, with the fetched input, was lost
        raise ConnectionFailedError("the reply was lost")

    try:
        pubsub = PubSub(*three_steps(), connection=conn)
        monkeypatch.setattr(type(conn), "start", cut_off)
        with anyio.fail_after(10), pytest.raises(ConnectionFailedError):
            await pubsub.ainvoke(1, {"state_id": "cut"})
        monkeypatch.undo()
        with anyio.fail_after(10):
            assert await pubsub.ainvoke(None, {"state_id": "cut"}) == [19]
    finally:
        await conn.aclose()


async def test_a_round_sent_after_a_need_reply_finds_what_an_earlier_send_stored(
    anyio_backend: str, redis_conn: Any
) -> None:
    """A script that stores, sent again because it lacked the keys of some topics, goes in its
    twin's form (which finds what a send whose reply was lost stored): never stored twice."""
    from permflow.connections.redis import _scripts as lua

    sent: list[str] = []

    class Replies:
        async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
            sent.append(name)
            return [lua.NEED, b"more"] if len(sent) == 1 else [b"1-0"]

    for name, twin in [("COMMIT", "RECOMMIT"), ("PUBLISH", "REPUBLISH"), ("START", "RESTART")]:
        sent.clear()
        keys, args = redis_conn._keys("need")
        await redis_conn._call(Replies(), name, "need", keys, args)
        assert sent == [name, twin]
    sent.clear()
    await redis_conn._call(Replies(), "FETCH", "need", *redis_conn._keys("need"))
    assert sent == ["FETCH", "FETCH"]  # stores nothing: sent as it is


async def test_a_worker_fetches_ahead_only_what_its_commit_stored(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """Where a worker drives (assume_registered), a commit fetches ahead for a reader at most as
    many deliveries as it stored, even with more waiting; the counts stay exact."""
    from permflow import Message, Subscription

    subscriptions = [Subscription("a", "in"), Subscription("b", "t")]
    with anyio.fail_after(10):
        await redis_conn.register("w", subscriptions)
        await redis_conn.publish("w", [Message("t", v, "w", 0.0) for v in range(5)])  # waiting for b
        await redis_conn.publish("w", [Message("in", "go", "w", 0.0)])
        redis_conn.assume_registered("w", subscriptions)
        (delivery,) = await redis_conn.fetch("w", "a", owner="worker", limit=10)
        await redis_conn.commit(delivery, [Message("t", 5, "w", 0.0)], owner="worker")
        round_trips.clear()
        ahead = await redis_conn.fetch("w", "b", owner="worker", limit=10)
        assert round_trips == []  # it came with the commit
        assert [d.messages[0].value for d in ahead] == [0]  # one, the oldest waiting
        assert await redis_conn.outstanding("w", ["b"]) == {"b": 6}
        rest = await redis_conn.fetch("w", "b", owner="worker", limit=10)
    assert [d.messages[0].value for d in rest] == [1, 2, 3, 4, 5]


async def test_a_commit_of_a_run_deleted_at_its_end_declares_only_its_topics(
    anyio_backend: str, redis_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a 20-step chain without a state id (no ttl), each commit declares the keys of the
    topics it touches (its delivery's and its output's), not those of all 21 topics; with a
    state id the run is kept (and made compact at its end), so its commits declare them all."""
    from permflow.connections.redis._client import Bound

    declared: list[tuple[str, int]] = []
    original = Bound._write_read

    async def counting(self: Bound, calls: list[Any], *args: Any, **kwargs: Any) -> None:
        declared.extend((name, len(keys)) for name, keys, _ in calls)
        await original(self, calls, *args, **kwargs)

    monkeypatch.setattr(Bound, "_write_read", counting)
    topics = [Topic.IN, *(Topic(f"s{i}") for i in range(19)), Topic.OUT]
    chain = [a.subscribe() | (lambda x: x + 1) | b.publish() for a, b in itertools.pairwise(topics)]
    pubsub = PubSub(*chain, connection=redis_conn)
    with anyio.fail_after(20):
        assert await pubsub.ainvoke(0) == [20]
        fleeting = [n for name, n in declared if name == "COMMIT"]
        declared.clear()
        assert await pubsub.ainvoke(0, {"state_id": "kept"}) == [20]
        kept = [n for name, n in declared if name == "COMMIT"]
    assert len(fleeting) == 20 and max(fleeting) <= 6 + 2 * 2  # base keys, stop mark, 2 topics
    assert min(kept) >= 6 + 2 * 20  # every topic the run has readers of
