"""Conformance suite for connections, and switches for testing with permflow.

Any connection must pass the same suite. Subclass ``ConnectionSuite`` in a
test module and provide an async ``connection`` fixture (and, for stores that
only work on asyncio, an ``anyio_backend`` fixture returning ``"asyncio"``)::

    class TestMyConnection(ConnectionSuite):
        @pytest.fixture
        async def connection(self):
            async with MyConnection(...) as conn:
                yield conn

Requires pytest and anyio's pytest plugin. ``set_retry_waits(False)`` turns
retry back-off waits to zero for fast tests.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from ._errors import CycleError, DefinitionError, PoisonMessageError
from ._message import Message
from ._pubsub import PubSub
from ._retry import set_retry_waits
from ._topic import Topic, route
from .connections._base import PubSubConnection, Subscription

__all__ = ["ConnectionSuite", "set_retry_waits"]

BACKSTOP = 20  # seconds; a hung test fails instead of hanging CI


def _message(topic: str, value: Any, state_id: str) -> Message:
    return Message(topic, value, state_id, 0.0)


def _chain_abc(connection: PubSubConnection) -> PubSub:
    one = Topic("one")
    return PubSub(
        Topic.IN.subscribe() | (lambda x: x + "b") | one.publish(),
        one.subscribe() | (lambda x: x + "c") | Topic.OUT.publish(),
        connection=connection,
    )


class ConnectionSuite:
    """What every connection must do. Subclasses provide ``connection``."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def connection(self) -> PubSubConnection:  # pragma: no cover - overridden
        raise NotImplementedError("provide a `connection` fixture")

    # -- the protocol itself ----------------------------------------------

    async def test_publish_then_peek_keeps_global_order(self, connection: PubSubConnection) -> None:
        """Stored messages come back from peek in publish order, with growing ids."""
        with anyio.fail_after(BACKSTOP):
            await connection.publish("s", [_message("a", 1, "s"), _message("b", 2, "s")])
            await connection.publish("s", [_message("a", 3, "s")])
            log = await connection.apeek("s")
        assert [(m.topic, m.value) for m in log] == [("a", 1), ("b", 2), ("a", 3)]
        assert all(m.state_id == "s" for m in log)
        assert len({m.id for m in log}) == 3

    async def test_new_reader_sees_earlier_messages(self, connection: PubSubConnection) -> None:
        """A process registered after messages were published still gets them, in order."""
        with anyio.fail_after(BACKSTOP):
            await connection.publish("s", [_message("t", v, "s") for v in "xyz"])
            await connection.register("s", [Subscription("p", "t")])
            got = await connection.fetch("s", "p", owner="o1")
        assert [d.messages[0].value for d in got] == ["x", "y", "z"]
        assert all(d.attempt == 1 and d.process == "p" for d in got)

    async def test_in_flight_deliveries_are_not_handed_out_twice(self, connection: PubSubConnection) -> None:
        """While one owner holds a delivery, another fetch does not return it."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("p", "t")])
            await connection.publish("s", [_message("t", 1, "s")])
            first = await connection.fetch("s", "p", owner="o1")
            second = await connection.fetch("s", "p", owner="o2")
        assert len(first) == 1
        assert second == []

    async def test_commit_acks_and_stores_atomically(self, connection: PubSubConnection) -> None:
        """Commit stores the outputs and clears the delivery from outstanding work."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("p", "t"), Subscription("q", "u")])
            await connection.publish("s", [_message("t", 1, "s")])
            assert await connection.outstanding("s", ["p", "q"]) == {"p": 1, "q": 0}
            (delivery,) = await connection.fetch("s", "p", owner="o1")
            stored = await connection.commit(delivery, [_message("u", 2, "s")], owner="o1")
            counts = await connection.outstanding("s", ["p", "q", "unknown"])
            log = await connection.apeek("s")
        assert stored is not None and [m.value for m in stored] == [2]
        assert counts == {"p": 0, "q": 1, "unknown": 0}
        assert [m.value for m in log] == [1, 2]

    async def test_commit_by_a_stale_owner_stores_nothing(self, connection: PubSubConnection) -> None:
        """Once a delivery was released and taken by another owner, the old owner's commit is refused."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("p", "t")])
            await connection.publish("s", [_message("t", 1, "s")])
            (old,) = await connection.fetch("s", "p", owner="o1")
            await connection.release("s", "o1")
            (new,) = await connection.fetch("s", "p", owner="o2")
            refused = await connection.commit(old, [_message("u", "old", "s")], owner="o1")
            accepted = await connection.commit(new, [_message("u", "new", "s")], owner="o2")
            again = await connection.commit(new, [_message("u", "twice", "s")], owner="o2")
            log = await connection.apeek("s")
        assert refused is None and again is None
        assert accepted is not None
        assert [m.value for m in log] == [1, "new"]
        assert new.attempt == 2

    async def test_released_deliveries_are_redelivered(self, connection: PubSubConnection) -> None:
        """Release hands deliveries back; the next fetch gets them first, counting the attempt."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("p", "t")])
            await connection.publish("s", [_message("t", 1, "s")])
            await connection.fetch("s", "p", owner="o1")
            await connection.publish("s", [_message("t", 2, "s")])
            await connection.release("s", "o1")
            got = await connection.fetch("s", "p", owner="o2")
        assert [(d.messages[0].value, d.attempt) for d in got] == [(1, 2), (2, 1)]

    async def test_join_gets_everything_in_one_delivery(self, connection: PubSubConnection) -> None:
        """A join process gets all not-yet-joined messages of its topic as one delivery."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("j", "t", join=True)])
            await connection.publish("s", [_message("t", v, "s") for v in (1, 2, 3)])
            (delivery,) = await connection.fetch("s", "j", owner="o1")
            await connection.commit(delivery, [], owner="o1")
            await connection.publish("s", [_message("t", 4, "s")])
            (later,) = await connection.fetch("s", "j", owner="o1")
        assert [m.value for m in delivery.messages] == [1, 2, 3]
        assert [m.value for m in later.messages] == [4]

    async def test_register_rejects_a_changed_subscription(self, connection: PubSubConnection) -> None:
        """A process name already reading one topic cannot be re-registered on another."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("p", "t")])
            await connection.register("s", [Subscription("p", "t")])
            with pytest.raises(DefinitionError, match="'p'"):
                await connection.register("s", [Subscription("p", "other")])

    async def test_delete_forgets_a_state_id(self, connection: PubSubConnection) -> None:
        """After delete, peek is empty and nothing is outstanding; other state ids are untouched."""
        with anyio.fail_after(BACKSTOP):
            for sid in ("s", "keep"):
                await connection.register(sid, [Subscription("p", "t")])
                await connection.publish(sid, [_message("t", 1, sid)])
            await connection.adelete("s")
            await connection.adelete("never-existed")
            assert await connection.apeek("s") == []
            assert await connection.outstanding("s", ["p"]) == {"p": 0}
            assert [m.value for m in await connection.apeek("keep")] == [1]

    async def test_values_and_lineage_round_trip(self, connection: PubSubConnection) -> None:
        """JSON-like values, depth and trail come back exactly as published."""
        values = ["text ✓", 7, -2.5, True, None, [1, [2, "x"]], {"k": {"n": [None, False]}}]
        trail = (("proc", "abc123", "topic"),)
        with anyio.fail_after(BACKSTOP):
            await connection.publish("s", [Message("t", v, "s", 1.5, "", 3, trail) for v in values])
            log = await connection.apeek("s")
        assert [m.value for m in log] == values
        assert all(m.depth == 3 and m.trail == trail and m.published_at == 1.5 for m in log)

    async def test_wait_for_change_returns_after_its_time(self, connection: PubSubConnection) -> None:
        """wait_for_change with nothing happening returns by itself (it never hangs a run)."""
        with anyio.fail_after(BACKSTOP):
            await connection.wait_for_change("quiet", 0.01)

    # -- PubSub semantics over this connection ----------------------------

    async def test_seed_snippet(self, connection: PubSubConnection) -> None:
        """The two-chain program from the design brief returns ['abc']."""
        with anyio.fail_after(BACKSTOP):
            assert await _chain_abc(connection).ainvoke("a") == ["abc"]

    async def test_out_values_in_publish_order(self, connection: PubSubConnection) -> None:
        """invoke returns every OUT value of the call, in publish order."""
        pubsub = PubSub(
            Topic.IN.subscribe() | (lambda n: list(range(n))) | Topic.OUT.publish_each(),
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP):
            assert await pubsub.ainvoke(5) == [0, 1, 2, 3, 4]

    async def test_each_turn_sees_each_message_once(self, connection: PubSubConnection) -> None:
        """A second invoke on the same state id is a new turn: old messages are not reprocessed."""
        seen: list[str] = []

        def record(x: str) -> str:
            seen.append(x)
            return x.upper()

        pubsub = PubSub(Topic.IN.subscribe() | record | Topic.OUT.publish(), connection=connection)
        config = {"state_id": "turns"}
        with anyio.fail_after(BACKSTOP):
            assert await pubsub.ainvoke("a", config) == ["A"]
            assert await pubsub.ainvoke("b", config) == ["B"]
            assert await pubsub.ainvoke(None, config) == []
            log = await connection.apeek("turns")
        assert seen == ["a", "b"]
        assert [(m.topic, m.value) for m in log] == [
            ("__in__", "a"),
            ("__out__", "A"),
            ("__in__", "b"),
            ("__out__", "B"),
        ]

    async def test_second_pubsub_picks_up_where_the_first_stopped(self, connection: PubSubConnection) -> None:
        """A later PubSub on the same state id processes messages the first left unconsumed."""
        middle = Topic("middle")
        first = PubSub(Topic.IN.subscribe() | (lambda x: x * 2) | middle.publish(), connection=connection)
        second = PubSub(middle.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(), connection=connection)
        config = {"state_id": "handover"}
        with anyio.fail_after(BACKSTOP):
            assert await first.ainvoke(20, config) == []
            assert await second.ainvoke(None, config) == [41]
            assert await second.ainvoke(None, config) == []

    async def test_stream_yields_every_message_then_ends(self, connection: PubSubConnection) -> None:
        """stream yields IN, intermediate and OUT messages as they are published, then stops."""
        with anyio.fail_after(BACKSTOP):
            async with _chain_abc(connection).astream("a", {"state_id": "st"}) as stream:
                got = [(m.topic, m.value, m.state_id) async for m in stream]
        assert got == [("__in__", "a", "st"), ("one", "ab", "st"), ("__out__", "abc", "st")]

    async def test_break_out_and_resume_redelivers_only_unfinished(
        self, connection: PubSubConnection
    ) -> None:
        """Leaving a stream early cancels slow steps; resuming reruns only what had not finished."""
        ask, fast_calls, slow_calls = Topic("ask"), [], []
        blocker = anyio.Event()

        def fast(x: str) -> str:
            fast_calls.append(x)
            return f"question about {x}"

        async def slow(x: str) -> str:
            slow_calls.append(x)
            if len(slow_calls) == 1:
                await blocker.wait()  # never set: the first run is interrupted here
            return f"slow {x}"

        pubsub = PubSub(
            Topic.IN.subscribe(name="fast") | fast | ask.publish(),
            Topic.IN.subscribe(name="slow") | slow | Topic.OUT.publish(),
            connection=connection,
        )
        config = {"state_id": "hitl"}
        with anyio.fail_after(BACKSTOP):
            async with pubsub.astream("x", config) as stream:
                async for message in stream:
                    if message.topic == "ask":
                        break
            assert slow_calls == ["x"]
            assert await pubsub.ainvoke(None, config) == ["slow x"]
            log = await connection.apeek("hitl")
        assert fast_calls == ["x"] and slow_calls == ["x", "x"]
        assert sorted((m.topic, m.value) for m in log) == sorted(
            [("__in__", "x"), ("ask", "question about x"), ("__out__", "slow x")]
        )

    async def test_bare_break_out_of_astream_is_safe(self, connection: PubSubConnection) -> None:
        """A plain ``break`` (no aclosing) still stops the run, and the state id resumes."""
        ask = Topic("ask")
        calls: list[str] = []

        async def slow(x: str) -> str:
            calls.append(x)
            if len(calls) == 1:
                await anyio.Event().wait()  # never set: the first run is interrupted here
            return x.upper()

        pubsub = PubSub(
            Topic.IN.subscribe(name="ask") | (lambda x: x) | ask.publish(),
            Topic.IN.subscribe(name="slow") | slow | Topic.OUT.publish(),
            connection=connection,
        )
        config = {"state_id": "bare-break"}
        with anyio.fail_after(BACKSTOP):
            async for message in pubsub.astream("q", config):
                if message.topic == "ask":
                    break
            assert await pubsub.ainvoke(None, config) == ["Q"]
        assert calls == ["q", "q"]

    async def test_human_in_the_loop(self, connection: PubSubConnection) -> None:
        """A question is published, the consumer breaks out, and resumes the state id with an answer."""
        ask, answer = Topic("ask"), Topic("answer")
        pubsub = PubSub(
            Topic.IN.subscribe() | (lambda item: f"colour for {item}?") | ask.publish(),
            answer.subscribe() | (lambda colour: f"painted {colour}") | Topic.OUT.publish(),
            connection=connection,
        )
        config = {"state_id": "paint"}
        with anyio.fail_after(BACKSTOP):
            async with pubsub.astream("car", config) as stream:
                question = [m.value async for m in stream if m.topic == "ask"]
            assert question == ["colour for car?"]
            assert await pubsub.ainvoke("red", config, topic=answer) == ["painted red"]

    async def test_join_fires_once_per_idle_point(self, connection: PubSubConnection) -> None:
        """A join runs once with all fanned-out results, and what it publishes wakes the run."""
        parts, calls = Topic("parts"), []

        def total(values: list[int]) -> int:
            calls.append(sorted(values))
            return sum(values)

        pubsub = PubSub(
            Topic.IN.subscribe() | (lambda n: list(range(n))) | parts.publish_each(),
            parts.join() | total | Topic.OUT.publish(),
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP):
            assert await pubsub.ainvoke(10) == [45]
        assert calls == [list(range(10))]

    async def test_failing_step_fails_invoke_with_its_own_error(self, connection: PubSubConnection) -> None:
        """Without an error handler, invoke re-raises the step's exception type and message."""

        def boom(x: Any) -> Any:
            raise KeyError(f"no {x}")

        pubsub = PubSub(Topic.IN.subscribe() | boom | Topic.OUT.publish(), connection=connection)
        with anyio.fail_after(BACKSTOP), pytest.raises(KeyError, match="no thing"):
            await pubsub.ainvoke("thing")

    async def test_error_topic_receives_failures_and_run_continues(
        self, connection: PubSubConnection
    ) -> None:
        """With a Topic.ERROR subscriber, failures become messages and other work goes on."""

        def check(n: int) -> int:
            if n % 2:
                raise ValueError(f"odd {n}")
            return n

        errors: list[dict[str, Any]] = []
        numbers = Topic("numbers")
        pubsub = PubSub(
            Topic.IN.subscribe() | (lambda n: list(range(n))) | numbers.publish_each(),
            numbers.subscribe(name="check") | check | Topic.OUT.publish(),
            Topic.ERROR.subscribe() | errors.append,
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP):
            assert sorted(await pubsub.ainvoke(4)) == [0, 2]
        assert sorted(e["input"] for e in errors) == [1, 3]
        assert {(e["process"], e["topic"], e["error"]) for e in errors} == {
            ("check", "numbers", "ValueError")
        }
        assert {e["message"] for e in errors} == {"odd 1", "odd 3"}

    async def test_poison_message_is_dead_lettered(self, connection: PubSubConnection) -> None:
        """A delivery failing on every redelivery stops after max_deliveries instead of looping."""
        calls: list[int] = []

        def always_fails(x: int) -> int:
            calls.append(x)
            raise RuntimeError("bad input")

        pubsub = PubSub(Topic.IN.subscribe() | always_fails, connection=connection, max_deliveries=2)
        config = {"state_id": "poison"}
        with anyio.fail_after(BACKSTOP):
            for _ in range(2):
                with pytest.raises(RuntimeError):
                    await pubsub.ainvoke(None if calls else 1, config)
            with pytest.raises(PoisonMessageError, match="2 times"):
                await pubsub.ainvoke(None, config)
            assert await pubsub.ainvoke(None, config) == []
            log = await connection.apeek("poison")
        assert calls == [1, 1]
        assert [m.topic for m in log] == ["__in__", "__error__"]

    async def test_exact_repeat_fails_at_once(self, connection: PubSubConnection) -> None:
        """A process receiving an equal value again along one lineage raises CycleError naming the topics."""
        ping, pong = Topic("ping"), Topic("pong")
        pubsub = PubSub(
            Topic.IN.subscribe() | ping.publish(),
            ping.subscribe() | (lambda x: x) | pong.publish(),
            pong.subscribe() | (lambda x: x) | ping.publish(),
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP), pytest.raises(CycleError) as caught:
            await pubsub.ainvoke("same")
        assert isinstance(caught.value, RecursionError)
        assert set(caught.value.topics) == {"ping", "pong"}
        assert "ping" in str(caught.value) and "pong" in str(caught.value)

    async def test_runaway_loop_hits_the_recursion_limit(self, connection: PubSubConnection) -> None:
        """A loop that keeps changing its value fails with CycleError at recursion_limit."""
        loop = Topic("loop")
        pubsub = PubSub(
            Topic.IN.subscribe() | loop.publish(),
            loop.subscribe() | (lambda n: n + 1) | loop.publish(),
            connection=connection,
            recursion_limit=25,
        )
        with anyio.fail_after(BACKSTOP), pytest.raises(CycleError, match="recursion_limit=25"):
            await pubsub.ainvoke(0)

    async def test_legitimate_loop_ends(self, connection: PubSubConnection) -> None:
        """A draft/review loop that stops by itself runs to completion."""
        draft, review = Topic("draft"), Topic("review")
        pubsub = PubSub(
            Topic.IN.subscribe() | draft.publish(),
            draft.subscribe() | (lambda n: n + 1) | review.publish(),
            review.subscribe() | route(lambda n: Topic.OUT if n >= 5 else draft, topics=[Topic.OUT, draft]),
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP):
            assert await pubsub.ainvoke(0) == [5]

    async def test_concurrent_runs_are_isolated(self, connection: PubSubConnection) -> None:
        """Concurrent invokes with different state ids never see each other's messages."""
        pubsub = _chain_abc(connection)
        results: dict[str, list[Any]] = {}

        async def one(i: int) -> None:
            results[str(i)] = await pubsub.ainvoke(str(i), {"state_id": f"iso-{i}"})

        with anyio.fail_after(BACKSTOP):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(one, i)
            logs = [await connection.apeek(f"iso-{i}") for i in range(20)]
        assert results == {str(i): [f"{i}bc"] for i in range(20)}
        assert all(len(log) == 3 and {m.state_id for m in log} == {f"iso-{i}"} for i, log in enumerate(logs))

    async def test_two_drivers_on_one_state_id_store_outputs_once(self, connection: PubSubConnection) -> None:
        """Two runs resuming the same state id at once process each message exactly once."""
        calls: list[int] = []
        middle = Topic("middle")

        async def step(n: int) -> int:
            calls.append(n)
            await anyio.lowlevel.checkpoint()
            return n

        feeder = PubSub(
            Topic.IN.subscribe() | (lambda n: list(range(n))) | middle.publish_each(), connection=connection
        )
        worker = PubSub(middle.subscribe(name="worker") | step | Topic.OUT.publish(), connection=connection)
        config = {"state_id": "shared"}
        outs: list[list[Any]] = []

        async def drive() -> None:
            outs.append(await worker.ainvoke(None, config))

        with anyio.fail_after(BACKSTOP):
            await feeder.ainvoke(30, config)
            async with anyio.create_task_group() as tg:
                tg.start_soon(drive)
                tg.start_soon(drive)
            log = await connection.apeek("shared")
        assert sorted(outs[0] + outs[1]) == list(range(30))
        assert sorted(m.value for m in log if m.topic == "__out__") == list(range(30))
