"""``run_here``: sync calls run on the calling thread's own event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from helpers import call_with_deadline

from permflow._here import _own_loop, run_here


def test_a_run_that_never_waits_runs_on_the_callers_own_loop() -> None:
    """The call's task runs on this thread, with its loop running and current."""

    async def where() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        return loop, loop.is_running(), threading.current_thread(), asyncio.current_task() is not None

    loop, running, thread, in_task = run_here(where)
    assert (running, in_task) == (True, True)
    assert thread is threading.current_thread()
    assert loop is _own_loop().loop and not loop.is_running()


def test_a_run_that_waits_for_a_timer_finishes() -> None:
    """A run that sleeps (nothing ready for a while) is finished by the loop."""

    async def nap(x: int) -> int:
        await anyio.sleep(0.001)
        await anyio.lowlevel.checkpoint()
        return x + 1

    assert call_with_deadline(lambda: [run_here(nap, i) for i in range(3)]) == [1, 2, 3]


def test_timers_of_a_run_are_dropped_when_it_ends() -> None:
    """A deadline set and left within a run leaves no timer behind on the loop."""

    async def bounded(x: int) -> int:
        with anyio.move_on_after(60):
            await anyio.lowlevel.checkpoint()
        return x

    assert [run_here(bounded, i) for i in range(50)] == list(range(50))
    assert not _own_loop().loop._scheduled  # type: ignore[attr-defined]


def test_worker_threads_of_a_run_stop_when_it_ends() -> None:
    """A worker thread a run started is told to stop once the run ends (the
    callbacks of the run's end run before the call returns), so a script
    that made such a call can exit."""
    before = set(threading.enumerate())

    async def hop(x: int) -> int:
        return int(await anyio.to_thread.run_sync(lambda: x + 1))

    assert run_here(hop, 1) == 2
    started = [t for t in threading.enumerate() if t not in before]
    assert started, "the run used no worker thread"
    for thread in started:
        thread.join(20)
    assert not any(t.is_alive() for t in started)


def test_an_exception_of_the_run_is_raised() -> None:
    """The run's own exception reaches the caller, and the loop serves the next call."""

    async def fail() -> None:
        raise ValueError("boom")

    async def ok() -> str:
        return "ok"

    try:
        run_here(fail)
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("no exception")
    assert run_here(ok) == "ok"
