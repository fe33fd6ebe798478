"""Conformance tests of PubSub semantics over a connection (invoke, resume, joins...)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from .._errors import CycleError, PermflowWarning, PoisonMessageError
from .._pubsub import PubSub
from .._topic import Topic, route
from ..connections._base import PubSubConnection
from ._protocol import BACKSTOP

__all__ = ["RunSuite"]


def _chain_abc(connection: PubSubConnection) -> PubSub:
    one = Topic("one")
    return PubSub(
        Topic.IN.subscribe() | (lambda x: x + "b") | one.publish(),
        one.subscribe() | (lambda x: x + "c") | Topic.OUT.publish(),
        connection=connection,
    )


class RunSuite:
    """What PubSub must do over every connection."""

    pytestmark = pytest.mark.anyio

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
        with pytest.warns(PermflowWarning, match="Topic.OUT"):  # the first gives no result itself
            first = PubSub(Topic.IN.subscribe() | (lambda x: x * 2) | middle.publish(), connection=connection)
        second = PubSub(
            middle.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(),
            connection=connection,
            inputs=[middle],
        )
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
            inputs=[answer],  # the human's answer comes from outside
        )
        config = {"state_id": "paint"}
        with anyio.fail_after(BACKSTOP):
            async with pubsub.astream("car", config) as stream:
                question = [m.value async for m in stream if m.topic == "ask"]
            assert question == ["colour for car?"]
            assert await pubsub.ainvoke("red", config, topic=answer) == ["painted red"]

    async def test_join_waits_for_every_part_even_from_a_slow_step(
        self, connection: PubSubConnection
    ) -> None:
        """Parts committed one by one, while one step is still running, are joined once, all together."""
        items, parts, calls = Topic("items"), Topic("parts"), []
        slow_started, release = anyio.Event(), anyio.Event()

        async def part(n: int) -> int:
            if n == 0:  # the others' parts are stored, one delivery each, while this one runs
                slow_started.set()
                await release.wait()
            return n * 10

        def total(values: list[int]) -> int:
            calls.append(sorted(values))
            return sum(values)

        pubsub = PubSub(
            Topic.IN.subscribe() | (lambda n: list(range(n))) | items.publish_each(),
            items.subscribe() | part | parts.publish(),
            parts.join() | total | Topic.OUT.publish(),
            connection=connection,
        )
        outs: list[Any] = []

        async def run() -> None:
            outs.extend(await pubsub.ainvoke(5))

        with anyio.fail_after(BACKSTOP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await slow_started.wait()
                await anyio.wait_all_tasks_blocked()  # an eager join would have fired by now
                release.set()
        assert calls == [[0, 10, 20, 30, 40]] and outs == [100]

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

        pubsub = PubSub(
            Topic.IN.subscribe() | always_fails | Topic.OUT.publish(), connection=connection, max_deliveries=2
        )
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
        calls: list[str] = []

        def hop(name: str) -> Any:
            def step(x: Any) -> Any:
                calls.append(name)
                return x

            return step

        with pytest.warns(PermflowWarning, match="Topic.OUT"):  # a loop that never ends anywhere
            pubsub = PubSub(
                Topic.IN.subscribe() | ping.publish(),
                ping.subscribe() | hop("ping") | pong.publish(),
                pong.subscribe() | hop("pong") | ping.publish(),
                connection=connection,
            )
        with anyio.fail_after(BACKSTOP), pytest.raises(CycleError) as caught:
            await pubsub.ainvoke("same", {"state_id": "echo"})
        assert isinstance(caught.value, RecursionError)
        assert set(caught.value.topics) == {"ping", "pong"}
        assert "ping" in str(caught.value) and "pong" in str(caught.value)
        # at once: the first time 'same' comes round again, not at the depth limit
        assert calls == ["ping", "pong"]
        assert [m.topic for m in await connection.apeek("echo")] == ["__in__", "ping", "pong", "ping"]

    async def test_runaway_loop_hits_the_recursion_limit(self, connection: PubSubConnection) -> None:
        """A loop that keeps changing its value fails with CycleError at recursion_limit."""
        loop = Topic("loop")
        with pytest.warns(PermflowWarning, match="Topic.OUT"):  # a loop that never ends anywhere
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

        with pytest.warns(PermflowWarning, match="Topic.OUT"):  # the feeder gives no result itself
            feeder = PubSub(
                Topic.IN.subscribe() | (lambda n: list(range(n))) | middle.publish_each(),
                connection=connection,
            )
        worker = PubSub(
            middle.subscribe(name="worker") | step | Topic.OUT.publish(),
            connection=connection,
            inputs=[middle],
        )
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

    async def test_two_drivers_interleaved_store_each_output_once(self, connection: PubSubConnection) -> None:
        """Two drivers holding one delivery each of one state id at once store each output once."""
        middle = Topic("middle")
        a_holds, b_stepped, calls = anyio.Event(), anyio.Event(), []

        async def step(n: int) -> int:
            calls.append(n)
            if n == 1:  # driver A holds this one until driver B has run its step on the other
                a_holds.set()
                await b_stepped.wait()
            else:
                b_stepped.set()
            return n

        with pytest.warns(PermflowWarning, match="Topic.OUT"):  # the feeder gives no result itself
            feeder = PubSub(Topic.IN.subscribe() | middle.publish(), connection=connection)
        worker = PubSub(
            middle.subscribe(name="worker") | step | Topic.OUT.publish(),
            connection=connection,
            inputs=[middle],
        )
        config = {"state_id": "interleaved"}
        outs: dict[str, list[Any]] = {}

        async def drive(who: str) -> None:
            outs[who] = await worker.ainvoke(None, config)

        with anyio.fail_after(BACKSTOP):
            await feeder.ainvoke(1, config)
            async with anyio.create_task_group() as tg:
                tg.start_soon(drive, "A")
                await a_holds.wait()  # A is mid-step on message 1
                await feeder.ainvoke(2, config)  # message 2 arrives while A holds message 1
                tg.start_soon(drive, "B")
            log = await connection.apeek("interleaved")
        assert outs == {"A": [1], "B": [2]}  # truly split: each driver did one
        assert sorted(calls) == [1, 2]
        assert sorted(m.value for m in log if m.topic == "__out__") == [1, 2]
