"""A run keeps the leases of what it holds while it lasts, on every backend.

A connection whose leases run out (``lease`` finite) is renewed every
``lease / 3`` while a run holds deliveries; a run that ends before the first
renewal is due renews nothing (and, on asyncio, starts no task for it).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from permflow import ConnectionFailedError, InMemoryPubSubConnection, PubSub, Topic

pytestmark = pytest.mark.anyio


class Leasing(InMemoryPubSubConnection):
    """The in-memory connection with a finite lease, counting renewals."""

    def __init__(self, lease: float, fail_renewals: bool = False) -> None:
        super().__init__()
        self.lease = lease
        self.renewals: list[tuple[str, str]] = []
        self.renewed = anyio.Event()
        self._fail = fail_renewals

    async def renew(self, state_id: str, owner: str) -> None:
        self.renewals.append((state_id, owner))
        if len(self.renewals) >= 2:
            self.renewed.set()
        if self._fail:
            raise ConnectionFailedError("the store is away")


async def test_a_long_step_is_renewed_while_it_runs() -> None:
    """A step that outlasts two renewals sees them happen (the run's own owner, its state id)."""
    conn = Leasing(lease=0.06)

    async def waits_for_renewals(x: int) -> int:
        await conn.renewed.wait()
        return x + 1

    pubsub = PubSub(Topic.IN.subscribe() | waits_for_renewals | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10):
        assert await pubsub.ainvoke(1, {"state_id": "long"}) == [2]
    assert {sid for sid, _ in conn.renewals} == {"long"}
    assert len({owner for _, owner in conn.renewals}) == 1


async def test_a_short_run_renews_nothing() -> None:
    """Runs far shorter than a third of the lease make no renewal at all."""
    conn = Leasing(lease=60.0)
    pubsub = PubSub(Topic.IN.subscribe() | (lambda x: x * 2) | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10):
        for i in range(20):
            assert await pubsub.ainvoke(i) == [i * 2]
    assert conn.renewals == []


async def test_renewals_failing_for_a_whole_lease_fail_the_run() -> None:
    """A store that refuses renewals until the lease would lapse fails the run with its error,
    and the step holding the delivery is cancelled rather than left running."""
    conn = Leasing(lease=0.06, fail_renewals=True)
    cancelled: list[bool] = []

    async def never_ends(x: Any) -> Any:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    pubsub = PubSub(Topic.IN.subscribe() | never_ends | Topic.OUT.publish(), connection=conn)
    with anyio.fail_after(10), pytest.raises(ConnectionFailedError, match="away"):
        await pubsub.ainvoke(1, {"state_id": "lapsed"})
    assert cancelled == [True]
    assert conn.renewals
