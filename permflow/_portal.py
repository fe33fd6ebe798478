"""The sync facade's event loop: one long-lived background loop, shared.

Connections hold loop-bound resources (a redis-py pool, events), so every sync
call (``invoke``, ``stream``, ``batch``) runs its async twin on one background
event loop (an anyio blocking portal on asyncio, started lazily on first use).
This works from plain scripts, from many threads at once, and from a thread
that runs its own event loop (a Jupyter cell).

Blocking on that loop deadlocks if the loop itself is blocked: a step running
on the loop's thread that calls a sync API. That call, and every sync call
made while it lasts, is served by a temporary loop in a fresh thread.

Handing a call to the background loop and back costs two thread wake-ups;
a call that needs nothing from that loop runs on the calling thread instead
(``permflow._here``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._execution import note_blocking_call

__all__ = ["portal", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_shared: BlockingPortal | None = None
_shared_thread: threading.Thread | None = None
_shared_blocked = 0
_shared_loop: asyncio.AbstractEventLoop | None = None


def _start_shared() -> BlockingPortal:
    global _shared, _shared_thread
    ready = threading.Event()
    box: list[BlockingPortal] = []

    def serve() -> None:
        import anyio

        async def main() -> None:
            global _shared_loop
            _shared_loop = asyncio.get_running_loop()
            async with BlockingPortal() as p:
                box.append(p)
                ready.set()
                await p.sleep_until_stopped()

        anyio.run(main)

    thread = threading.Thread(target=serve, name="permflow-loop", daemon=True)
    thread.start()
    ready.wait()
    _shared, _shared_thread = box[0], thread
    return box[0]


@contextmanager
def portal() -> Iterator[BlockingPortal]:
    """A portal to run async code from this thread without deadlocking.

    While a sync call blocks the shared loop's own thread (a step running on
    the loop called ``invoke``), every sync call, from any thread, gets a
    temporary loop instead: work nested in that call must never wait for
    the blocked loop.
    """
    global _shared_blocked
    note_blocking_call()
    on_shared = threading.current_thread() is _shared_thread
    if on_shared or _shared_blocked:
        if on_shared:
            with _lock:
                _shared_blocked += 1
        try:
            with start_blocking_portal("asyncio") as temporary:
                yield temporary
        finally:
            if on_shared:
                with _lock:
                    _shared_blocked -= 1
        return
    shared = _shared
    if shared is None:
        with _lock:
            shared = _shared or _start_shared()
    yield shared


def run_sync(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await func(*args)`` to completion from synchronous code.

    Ctrl-C (KeyboardInterrupt) while waiting cancels the call on the loop.
    """
    with portal() as p:
        if p is _shared and _shared_loop is not None:
            # one hand-off each way, instead of the portal's task-group round trip
            future: concurrent.futures.Future[T] = _submit(_shared_loop, func, *args)
        else:
            future = p.start_task_soon(func, *args)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


async def _as_coroutine(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await func(*args)


def _submit(
    loop: asyncio.AbstractEventLoop, func: Callable[..., Awaitable[T]], *args: Any
) -> concurrent.futures.Future[T]:
    """Start ``func(*args)`` as a task on ``loop`` from another thread.

    The task gets a fresh context: the caller's (say, a trio task's) must not
    leak into it, or async libraries would detect the wrong event loop.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    tasks: list[asyncio.Task[T]] = []

    def settle(task: asyncio.Task[T]) -> None:
        if future.done():
            return
        if task.cancelled():
            future.cancel()
        elif task.exception() is not None:
            future.set_exception(task.exception())
        else:
            future.set_result(task.result())

    def start() -> None:
        # The future stays pending (not "running") until settled, so that
        # future.cancel() from the caller (Ctrl-C) still works and cancels the task.
        if future.cancelled():
            return
        task = contextvars.Context().run(loop.create_task, _as_coroutine(func, *args))
        tasks.append(task)
        task.add_done_callback(settle)

    def cancel_task(done: concurrent.futures.Future[T]) -> None:
        if done.cancelled():
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])

    future.add_done_callback(cancel_task)
    loop.call_soon_threadsafe(start, context=contextvars.Context())
    return future
