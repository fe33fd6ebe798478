"""The gate suspect deliveries pass alone (permflow._gate)."""

from __future__ import annotations

import anyio
import pytest

from permflow._gate import Gate

pytestmark = pytest.mark.anyio


async def test_a_suspect_waits_for_running_steps_and_holds_new_ones_back() -> None:
    """A suspect enters only once the running step left, and a step arriving meanwhile waits for it."""
    gate, order = Gate(), []
    release_first, suspect_in, release_suspect = anyio.Event(), anyio.Event(), anyio.Event()

    async def first() -> None:
        await gate.enter()
        order.append("first in")
        await release_first.wait()
        order.append("first out")
        gate.leave()

    async def suspect() -> None:
        assert await gate.enter_alone(30)
        order.append("suspect in")
        suspect_in.set()
        await release_suspect.wait()
        order.append("suspect out")
        gate.leave_alone()

    async def late() -> None:
        await gate.enter()
        order.append("late in")
        gate.leave()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(suspect)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(late)
            await anyio.wait_all_tasks_blocked()
            assert order == ["first in"]  # neither the suspect nor the late step got in
            release_first.set()
            await suspect_in.wait()
            await anyio.wait_all_tasks_blocked()
            assert order == ["first in", "first out", "suspect in"]  # the late step still waits
            release_suspect.set()
    assert order == ["first in", "first out", "suspect in", "suspect out", "late in"]
    assert gate.running == 0


async def test_a_suspect_that_cannot_get_in_alone_runs_beside_the_others() -> None:
    """Past its patience a suspect enters as an ordinary step and lets the steps it held back through."""
    gate, order, outcome = Gate(), [], []
    done, late_in = anyio.Event(), anyio.Event()

    async def stuck() -> None:  # e.g. waits for a nested run whose steps need the gate
        await gate.enter()
        await done.wait()
        gate.leave()

    async def suspect() -> None:
        outcome.append(await gate.enter_alone(0.2))
        order.append("suspect in")

    async def late() -> None:
        await gate.enter()
        order.append("late in")
        late_in.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(suspect)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(late)
            await anyio.wait_all_tasks_blocked()
            assert order == []  # the suspect holds the late step back while it waits
            await late_in.wait()  # its patience ran out: both go in beside the stuck step
            assert outcome == [False] and gate.running == 3
            done.set()
    assert sorted(order) == ["late in", "suspect in"]
