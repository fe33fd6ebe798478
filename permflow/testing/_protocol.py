"""Conformance tests of the connection protocol itself (fetch, commit, release, leases...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from .._errors import DefinitionError
from .._message import Message
from ..connections._base import PubSubConnection, Subscription

__all__ = ["BACKSTOP", "ProtocolSuite"]

BACKSTOP = 20  # seconds; a hung test fails instead of hanging CI


def _message(topic: str, value: Any, state_id: str) -> Message:
    return Message(topic, value, state_id, 0.0)


class ProtocolSuite:
    """What every connection's protocol methods must do."""

    pytestmark = pytest.mark.anyio

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

    async def test_release_hands_back_only_that_owners_deliveries(self, connection: PubSubConnection) -> None:
        """Releasing one owner leaves another owner's delivery held: its commit still counts."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("r", [Subscription("p", "a")])
            await connection.publish("r", [_message("a", 1, "r")])
            (first,) = await connection.fetch("r", "p", owner="o1", limit=1)
            await connection.publish("r", [_message("a", 2, "r")])
            (second,) = await connection.fetch("r", "p", owner="o2", limit=1)
            await connection.release("r", "o1")
            again = await connection.fetch("r", "p", owner="o3")
            assert [m.value for d in again for m in d.messages] == [1]
            assert await connection.commit(second, [_message("b", 2, "r")], owner="o2") is not None
            assert await connection.commit(first, [_message("b", 1, "r")], owner="o1") is None

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

    async def test_start_registers_publishes_and_hands_out_the_input(
        self, connection: PubSubConnection
    ) -> None:
        """start registers the processes and stores the input (with ids); the owner's
        next fetch gets it, whether or not the connection fetched it ahead."""
        with anyio.fail_after(BACKSTOP):
            subscriptions, first = [Subscription("p", "t")], [_message("t", 1, "s")]
            stored = await connection.start("s", subscriptions, first, owner="o1")
            (delivery,) = await connection.fetch("s", "p", owner="o1")
            assert await connection.fetch("s", "p", owner="o2") == []
            log = await connection.apeek("s")
        assert [(m.topic, m.value) for m in stored] == [("t", 1)] and stored[0].id
        assert [m.id for m in delivery.messages] == [stored[0].id] == [m.id for m in log]

    async def test_start_without_an_owner_fetches_nothing(self, connection: PubSubConnection) -> None:
        """start for a client of workers (owner None) stores the input and hands nothing
        out: the first fetch of any owner gets it."""
        with anyio.fail_after(BACKSTOP):
            await connection.start("s", [Subscription("p", "t")], [_message("t", 1, "s")], owner=None)
            (delivery,) = await connection.fetch("s", "p", owner="worker")
        assert [m.value for m in delivery.messages] == [1]

    async def test_a_start_with_a_changed_subscription_stores_nothing(
        self, connection: PubSubConnection
    ) -> None:
        """start with a process name reading another topic raises DefinitionError naming it,
        and its messages are not stored."""
        with anyio.fail_after(BACKSTOP):
            await connection.register("s", [Subscription("p", "t")])
            with pytest.raises(DefinitionError, match="'p'"):
                changed = [Subscription("p", "other")]
                await connection.start("s", changed, [_message("t", 1, "s")], owner="o1")
            assert await connection.apeek("s") == []

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
        """wait_for_change with nothing happening returns about when asked (it may return
        early, never much later), and creates no state."""
        with anyio.fail_after(BACKSTOP):
            start = anyio.current_time()
            await connection.wait_for_change("quiet", 0.2)
            waited = anyio.current_time() - start
            assert await connection.apeek("quiet") == []
        assert waited < 2.0  # an order of magnitude past its 0.2 s would hang a run's idle check

    @pytest.mark.parametrize("change", ["publish", "commit", "release"])
    async def test_a_change_wakes_a_waiter(self, connection: PubSubConnection, change: str) -> None:
        """A publish, a commit or a release wakes wait_for_change on that state id at once."""
        await connection.register("w", [Subscription("p", "a")])
        await connection.publish("w", [_message("a", 1, "w")])
        (delivery,) = await connection.fetch("w", "p", owner="o")
        actions: dict[str, Callable[[], Awaitable[object]]] = {
            "publish": lambda: connection.publish("w", [_message("a", 2, "w")]),
            "commit": lambda: connection.commit(delivery, [_message("b", 2, "w")], owner="o"),
            "release": lambda: connection.release("w", "o"),
        }
        woke = anyio.Event()

        async def waiter() -> None:
            await connection.wait_for_change("w", BACKSTOP * 2)
            woke.set()

        with anyio.fail_after(BACKSTOP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                await actions[change]()
                await woke.wait()
