"""Conformance tests of filtered subscriptions (``subscribe(when=...)``) over a
connection: ``ack_and_fetch`` itself, and what a PubSub does with it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from .._errors import PoisonMessageError
from .._message import Message
from .._pubsub import PubSub
from .._topic import Topic
from ..connections._base import PubSubConnection, Subscription
from ._protocol import BACKSTOP

__all__ = ["FilterSuite"]


def _message(topic: str, value: Any, state_id: str) -> Message:
    return Message(topic, value, state_id, 0.0)


def _fan_out(target: Topic) -> Any:
    """``IN.subscribe() | range(n) | target.publish_each()``: n messages 0..n-1 on ``target``."""
    return Topic.IN.subscribe(name="fan") | (lambda n: list(range(n))) | target.publish_each()


async def _until_outstanding(connection: PubSubConnection, state_id: str, expected: dict[str, int]) -> None:
    """Return once ``outstanding`` is ``expected`` (waiting for changes, not sleeping)."""
    while await connection.outstanding(state_id, list(expected)) != expected:
        await connection.wait_for_change(state_id, 0.2)


class FilterSuite:
    """What every connection must do for filtered subscriptions."""

    pytestmark = pytest.mark.anyio

    async def test_ack_and_fetch_acks_and_hands_out_the_next(self, connection: PubSubConnection) -> None:
        """ack_and_fetch acks a delivery (storing nothing), then fetches the next ones up to limit."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("f", [Subscription("p", "t"), Subscription("q", "t")])
            await connection.publish("f", [_message("t", v, "f") for v in (1, 2, 3)])
            (first,) = await connection.fetch("f", "p", owner="o1", limit=1)
            one = await connection.ack_and_fetch(first, owner="o1", limit=1)
            assert one is not None and [d.messages[0].value for d in one] == [2]
            assert await connection.outstanding("f", ["p", "q"]) == {"p": 2, "q": 3}
            rest = await connection.ack_and_fetch(one[0], owner="o1")
            assert rest is not None and [(d.messages[0].value, d.attempt) for d in rest] == [(3, 1)]
            assert await connection.ack_and_fetch(rest[0], owner="o1") == []
            counts = await connection.outstanding("f", ["p", "q"])
            await connection.release("f", "o1")
            again = await connection.fetch("f", "p", owner="o2")
            log = await connection.apeek("f")
        assert counts == {"p": 0, "q": 3}  # the other reader of the topic still has all three
        assert again == []  # acked: never redelivered
        assert [m.value for m in log] == [1, 2, 3]  # nothing stored

    async def test_ack_and_fetch_by_a_stale_owner_is_refused(self, connection: PubSubConnection) -> None:
        """An ack of a delivery its owner no longer holds is refused like a commit: no ack, no fetch."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("g", [Subscription("p", "t")])
            await connection.publish("g", [_message("t", 1, "g")])
            (old,) = await connection.fetch("g", "p", owner="o1")
            await connection.release("g", "o1")
            (new,) = await connection.fetch("g", "p", owner="o2")
            await connection.publish("g", [_message("t", 2, "g")])
            assert await connection.ack_and_fetch(old, owner="o1") is None
            assert await connection.outstanding("g", ["p"]) == {"p": 2}
            later = await connection.fetch("g", "p", owner="o3")  # the refused call fetched nothing
            assert await connection.commit(new, [], owner="o2") == []  # o2 still held it
        assert [d.messages[0].value for d in later] == [2]

    async def test_filtered_subscription_runs_only_for_matching_messages(
        self, connection: PubSubConnection
    ) -> None:
        """The step runs for matching values only, the predicate saw each value once, another
        subscriber of the topic got every message, and nothing was published for the others."""
        numbers = Topic("numbers")
        seen: list[int] = []
        ran: list[int] = []
        every: list[int] = []

        def is_even(n: int) -> bool:
            seen.append(n)
            return n % 2 == 0

        def tenfold(n: int) -> int:
            ran.append(n)
            return n * 10

        pubsub = PubSub(
            _fan_out(numbers),
            numbers.subscribe(when=is_even) | tenfold | Topic.OUT.publish(),
            numbers.subscribe(name="every") | every.append,
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP):
            out = await pubsub.ainvoke(7, {"state_id": "evens"})
            log = await connection.apeek("evens")
            left = await connection.outstanding("evens", pubsub.process_names)
        assert sorted(out) == [0, 20, 40, 60]
        assert sorted(seen) == list(range(7))
        assert sorted(ran) == [0, 2, 4, 6]
        assert sorted(every) == list(range(7))
        assert sorted(m.value for m in log if m.topic == "__out__") == [0, 20, 40, 60]
        assert len(log) == 1 + 7 + 4  # the input, the numbers, one output per even number
        assert set(left.values()) == {0}

    async def test_resume_does_not_redeliver_rejected_messages(self, connection: PubSubConnection) -> None:
        """After a break-out, resuming redelivers the unfinished matching message only: the
        predicate does not see the messages it rejected again."""
        numbers = Topic("numbers")
        seen: list[int] = []
        ran: list[int] = []

        async def tenfold(n: int) -> int:
            ran.append(n)
            if n == 4 and ran.count(4) == 1:
                await anyio.Event().wait()  # never set: the first run is interrupted here
            return n * 10

        def is_even(n: int) -> bool:
            seen.append(n)
            return n % 2 == 0

        pubsub = PubSub(
            _fan_out(numbers),
            numbers.subscribe(name="evens", when=is_even) | tenfold | Topic.OUT.publish(),
            connection=connection,
        )
        config = {"state_id": "filtered-resume"}
        outs: list[int] = []
        with anyio.fail_after(BACKSTOP):
            async with pubsub.astream(6, config) as stream:
                async for message in stream:
                    if message.topic == "__out__":
                        outs.append(message.value)
                    if len(outs) == 2:  # 0 and 2 done; every odd number acked, 4 still running
                        await _until_outstanding(connection, "filtered-resume", {"evens": 1})
                        break
            assert sorted(seen) == list(range(6))
            assert await pubsub.ainvoke(None, config) == [40]
        assert sorted(outs) == [0, 20]
        assert sorted(seen) == [0, 1, 2, 3, 4, 4, 5]  # only 4 was seen again
        assert sorted(ran) == [0, 2, 4, 4]

    async def test_filtered_join_joins_matching_messages_only(self, connection: PubSubConnection) -> None:
        """A filtered join gets the matching values only; when none match, its step does not run."""
        numbers = Topic("numbers")
        joined: list[list[int]] = []

        def total(values: list[int]) -> int:
            joined.append(sorted(values))
            return sum(values)

        pubsub = PubSub(
            _fan_out(numbers),
            numbers.join(when=lambda n: n >= 3) | total | Topic.OUT.publish(),
            connection=connection,
        )
        config = {"state_id": "filtered-join"}
        with anyio.fail_after(BACKSTOP):
            assert await pubsub.ainvoke(6, config) == [3 + 4 + 5]
            assert await pubsub.ainvoke(3, config) == []  # 0, 1, 2: none matches
            assert await pubsub.ainvoke(5, config) == [3 + 4]  # the earlier ones are never joined
            left = await connection.outstanding("filtered-join", pubsub.process_names)
        assert joined == [[3, 4, 5], [3, 4]]
        assert set(left.values()) == {0}

    async def test_raising_predicate_fails_the_run_with_its_error(self, connection: PubSubConnection) -> None:
        """A predicate that raises fails the run like a failing step: invoke re-raises its type."""
        ran: list[int] = []

        def picky(n: int) -> bool:
            if n == 3:
                raise LookupError(f"cannot judge {n}")
            return True

        pubsub = PubSub(
            Topic.IN.subscribe(when=picky) | ran.append | Topic.OUT.publish(), connection=connection
        )
        with anyio.fail_after(BACKSTOP):
            with pytest.raises(LookupError, match="cannot judge 3"):
                await pubsub.ainvoke(3)
            assert await pubsub.ainvoke(4) == [None]
        assert ran == [4]

    async def test_raising_predicate_goes_to_the_error_topic(self, connection: PubSubConnection) -> None:
        """With a Topic.ERROR subscriber, a raising predicate gives an error record and the run goes on."""
        numbers = Topic("numbers")
        errors: list[dict[str, Any]] = []

        def small(n: int) -> bool:
            if n == 2:
                raise ValueError("two is undecidable")
            return n < 4

        pubsub = PubSub(
            _fan_out(numbers),
            numbers.subscribe(name="small", when=small) | (lambda n: -n) | Topic.OUT.publish(),
            Topic.ERROR.subscribe() | errors.append,
            connection=connection,
        )
        with anyio.fail_after(BACKSTOP):
            assert sorted(await pubsub.ainvoke(6)) == [-3, -1, 0]
        assert [(e["process"], e["topic"], e["input"], e["error"], e["attempt"]) for e in errors] == [
            ("small", "numbers", 2, "ValueError", 1)
        ]
        assert errors[0]["message"] == "two is undecidable"

    async def test_always_raising_predicate_is_dead_lettered(self, connection: PubSubConnection) -> None:
        """A predicate raising on every redelivery is dead-lettered after max_deliveries."""
        judged: list[int] = []

        def broken(n: int) -> bool:
            judged.append(n)
            raise RuntimeError("broken predicate")

        pubsub = PubSub(
            Topic.IN.subscribe(when=broken) | (lambda n: n) | Topic.OUT.publish(),
            connection=connection,
            max_deliveries=2,
        )
        config = {"state_id": "poison-predicate"}
        with anyio.fail_after(BACKSTOP):
            for value in (1, None):
                with pytest.raises(RuntimeError, match="broken predicate"):
                    await pubsub.ainvoke(value, config)
            with pytest.raises(PoisonMessageError, match="2 times"):
                await pubsub.ainvoke(None, config)
            assert await pubsub.ainvoke(None, config) == []
            log = await connection.apeek("poison-predicate")
        assert judged == [1, 1]
        assert [m.topic for m in log] == ["__in__", "__error__"]
