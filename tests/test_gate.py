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
        token = await gate.enter_alone(30)
        assert token is not None
        order.append("suspect in")
        suspect_in.set()
        await release_suspect.wait()
        order.append("suspect out")
        gate.leave_alone(token)

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
        outcome.append(await gate.enter_alone(0.2))  # None: entered as an ordinary step
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
            assert outcome == [None] and gate.running == 3
            done.set()
    assert sorted(order) == ["late in", "suspect in"]


async def test_a_suspect_giving_up_leaves_the_gate_of_another_suspect_shut() -> None:
    """A suspect whose patience runs out while another runs alone does not let ordinary steps in beside it."""
    gate, order = Gate(), []
    first_in, release_first = anyio.Event(), anyio.Event()

    async def first_suspect() -> None:
        token = await gate.enter_alone(30)
        first_in.set()
        await release_first.wait()
        order.append("first suspect out")
        gate.leave_alone(token)

    async def impatient_suspect() -> None:
        assert await gate.enter_alone(0.05) is None  # gave up: waits as an ordinary step
        order.append("impatient suspect in")
        gate.leave()

    async def ordinary() -> None:
        await gate.enter()
        order.append("ordinary in")
        gate.leave()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_suspect)
            await first_in.wait()
            tg.start_soon(impatient_suspect)
            tg.start_soon(ordinary)
            with anyio.move_on_after(0.3):  # well past the impatient suspect's patience
                await anyio.sleep_forever()
            assert order == []  # nobody got in beside the suspect running alone
            release_first.set()
    assert order[0] == "first suspect out" and sorted(order[1:]) == ["impatient suspect in", "ordinary in"]
