"""A task tied to an async iterator's lifetime instead of a task group.

``async for message in pubsub.astream(...): break`` must be safe even
without ``aclosing``: Python then closes the generator later, from another
task, where exiting a task group's cancel scope would be an error. So
``astream`` runs its run in a helper task whose lifetime the generator
controls (it cancels and awaits it when closed), and never holds a cancel
scope across a ``yield``. The run's own tasks still live in a task group.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["Detached"]

_running: set[asyncio.Task[None]] = set()


class Detached:
    """Runs ``func()`` in a helper task; ``stop()`` cancels and awaits it."""

    def __init__(self, func: Callable[[], Awaitable[None]]) -> None:
        self._func = func
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()

    def start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio
            import trio

            trio.lowlevel.spawn_system_task(self._main, context=contextvars.copy_context())
        else:
            task = loop.create_task(self._main())
            _running.add(task)
            task.add_done_callback(_running.discard)

    async def _main(self) -> None:
        try:
            with self._scope:
                await self._func()
        finally:
            self._done.set()

    async def stop(self) -> None:
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()
