"""Keeping a run's leases while it lasts.

On a store whose leases run out (Redis), a run renews its leases every
``lease / 3``, or another driver would take its deliveries over. Most runs end
long before the first renewal is due, so on asyncio no task is started until
then: a timer starts the renewing task when the first renewal is due, and a run
that ends first only cancels the timer (a task group and a sleeping task per
run cost a sequential run on Redis about a fifth of its time). On trio, a task
of a task group renews from the start. Either way the renewing task belongs to
the run: it is cancelled and awaited before the run ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

__all__ = ["renewing"]

#: How long a run waits, at its end, for its cancelled renewing task to finish.
_STOP_SECONDS = 2.0


@asynccontextmanager
async def renewing(renew: Callable[[float], Awaitable[None]], interval: float) -> AsyncIterator[None]:
    """Run ``renew(first_wait)`` alongside the body once ``interval`` seconds
    have passed (on trio: from the start, waiting ``interval`` first)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio, the only other backend anyio runs on
        async with anyio.create_task_group() as tg:
            tg.start_soon(_in_scope, renew, interval, [])
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        return
    tasks: list[asyncio.Task[None]] = []
    scopes: list[anyio.CancelScope] = []

    def due() -> None:
        tasks.append(loop.create_task(_in_scope(renew, 0.0, scopes)))

    timer = loop.call_later(interval, due)
    try:
        yield
    finally:
        timer.cancel()
        if tasks:
            # through its cancel scope once it has one, so that the shields of what it
            # calls hold (handing a pooled connection back, say)
            if scopes:
                scopes[0].cancel()
            else:
                tasks[0].cancel()
            # Bounded: what the cancelled task may still do is shielded clean-up, itself
            # bounded (a pooled connection handed back within a second). Past that, it
            # ends on its own, cancelled.
            with anyio.CancelScope(shield=True):
                await asyncio.wait(tasks, timeout=_STOP_SECONDS)


async def _in_scope(
    renew: Callable[[float], Awaitable[None]], first_wait: float, scopes: list[anyio.CancelScope]
) -> None:
    with anyio.CancelScope() as scope:
        scopes.append(scope)
        await renew(first_wait)
