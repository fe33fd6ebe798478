"""Conformance tests of leases: what happens to the deliveries of a silent owner.

A connection declares its leases with ``lease`` (seconds; ``math.inf`` for a
store that dies with its owners). With a finite lease, a silent owner's
deliveries go to the next owner that fetches once the lease ran out, the
silent owner's late commit stores nothing, and renewing keeps a delivery for
as long as its owner is alive. With an infinite lease, nothing is ever taken
from a silent owner: only ``release`` hands its deliveries back.

These tests use the ``lease_connection`` fixture, which defaults to
``connection``; a suite for a store with leases overrides it with a
connection whose lease is short (under a second), so the tests stay fast.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

from .._message import Delivery, Message
from ..connections._base import PubSubConnection, Subscription
from ._protocol import BACKSTOP

__all__ = ["LeaseSuite"]


def _message(topic: str, value: Any, state_id: str) -> Message:
    return Message(topic, value, state_id, 0.0)


async def _seeded(conn: PubSubConnection, state_id: str) -> Delivery:
    await conn.register(state_id, [Subscription("p", "a")])
    await conn.publish(state_id, [_message("a", 1, state_id)])
    (delivery,) = await conn.fetch(state_id, "p", owner="silent")
    return delivery


class LeaseSuite:
    """What every connection must do with the deliveries of owners that fall silent."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def lease_connection(self, connection: PubSubConnection) -> PubSubConnection:
        """The connection the lease tests use: override with a short-lease one."""
        return connection

    async def test_a_silent_owners_delivery_goes_to_the_next_owner_once(
        self, lease_connection: PubSubConnection
    ) -> None:
        """After the lease, another owner gets the delivery; the silent owner's late commit stores nothing."""
        conn = lease_connection
        held = await _seeded(conn, "reclaim")
        with anyio.fail_after(BACKSTOP):
            if math.isinf(conn.lease):  # never taken away: only a release hands it back
                await conn.wait_for_change("reclaim", 0.2)
                assert await conn.fetch("reclaim", "p", owner="next") == []
                await conn.release("reclaim", "silent")
            taken: list[Delivery] = []
            while not taken:  # the lease running out is what this waits for
                taken = await conn.fetch("reclaim", "p", owner="next")
                if not taken:
                    await conn.wait_for_change("reclaim", conn.lease / 4)
            (again,) = taken
            assert again.attempt == 2 and [m.value for m in again.messages] == [1]
            assert await conn.commit(held, [_message("b", "late", "reclaim")], owner="silent") is None
            stored = await conn.commit(again, [_message("b", "once", "reclaim")], owner="next")
            assert stored is not None and [m.value for m in stored] == ["once"]
            log = await conn.apeek("reclaim")
        assert [(m.topic, m.value) for m in log] == [("a", 1), ("b", "once")]
        assert await conn.outstanding("reclaim", ["p"]) == {"p": 0}

    async def test_renewing_keeps_a_delivery_past_its_lease(self, lease_connection: PubSubConnection) -> None:
        """An owner that renews every lease/3 keeps its delivery for twice the lease, then commits it."""
        conn = lease_connection
        held = await _seeded(conn, "renew")
        period = 0.2 if math.isinf(conn.lease) else conn.lease / 3
        with anyio.fail_after(BACKSTOP):
            for _ in range(6):  # two leases' worth of renewals
                await conn.wait_for_change("renew", period)
                await conn.renew("renew", "silent")
                assert await conn.fetch("renew", "p", owner="other") == []
            stored = await conn.commit(held, [_message("b", 2, "renew")], owner="silent")
        assert stored is not None
        assert [m.topic for m in await conn.apeek("renew")] == ["a", "b"]
