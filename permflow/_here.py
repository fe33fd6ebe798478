"""Sync calls run on the calling thread's own event loop (``run_here``).

Handing a sync call to the shared background loop and back costs two thread
wake-ups. A call that needs nothing from that loop (a PubSub over the
in-memory connection whose steps are plain functions already running on the
event loop) runs instead on an event loop of the calling thread, kept for the
thread's later calls, when that thread runs no event loop of its own.

Such a run almost never waits: each of its steps is ready as soon as the
previous one ends. So the loop first runs the ready steps of the call's task
one after another, without a full loop iteration (no poll for I/O, no timer
bookkeeping); only a run that does wait (a timer, a thread) is handed to
``run_forever``. Either way the loop counts as running on this thread
meanwhile (``asyncio.get_running_loop()``, ``loop.is_running()``), and the
callbacks the task's end scheduled (a worker thread told to stop, say) run
before the call returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any, TypeVar

from ._execution import note_blocking_call
from ._portal import run_sync

__all__ = ["run_here"]

T = TypeVar("T")


class _OwnLoop:
    """A thread's own event loop for ``run_here``, closed with the thread (when
    the thread's locals are dropped)."""

    __slots__ = ("loop", "ready")

    def __init__(self) -> None:
        # A selector loop whatever the policy: its ready queue is what ``_step`` runs.
        self.loop = asyncio.SelectorEventLoop()
        ready = getattr(self.loop, "_ready", None)
        #: The loop's queue of ready callbacks, None where it has none to step through.
        self.ready: deque[asyncio.Handle] | None = ready if isinstance(ready, deque) else None

    def __del__(self) -> None:
        if not self.loop.is_closed():
            self.loop.close()


_here = threading.local()


def _own_loop() -> _OwnLoop:
    own: _OwnLoop | None = getattr(_here, "own", None)
    if own is None or own.loop.is_closed():
        own = _here.own = _OwnLoop()
    return own


def _no_loop_running() -> bool:
    """Whether this thread runs no event loop (asyncio's, trio's) right now."""
    if asyncio._get_running_loop() is not None:
        return False
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # no trio run in this thread
            return True
        return False
    return True


def run_here(func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """``run_sync``, but on this thread's own event loop when it runs none
    (no hand-off to the background loop and back): for calls that hold
    nothing bound to one loop and wait for nothing another thread must do.

    Ctrl-C (KeyboardInterrupt) cancels the call before it is raised.
    """
    if not _no_loop_running():
        return run_sync(func, *args)
    note_blocking_call()
    own = _own_loop()
    loop = own.loop
    # a fresh context, as on the background loop: the caller's must not leak into the run
    task: asyncio.Task[T] = contextvars.Context().run(loop.create_task, func(*args))
    try:
        if own.ready is not None:
            _step(loop, own.ready, task)
        if not task.done() or _has_timers(loop):
            _run_until_done(loop, task)
    except KeyboardInterrupt:
        if not task.done():  # interrupted between steps of the run: cancel it, let it clean up
            task.cancel()
            with suppress(BaseException):  # the interrupt is what the caller must see
                _run_until_done(loop, task)
        raise
    return task.result()


def _run(handle: asyncio.Handle) -> None:
    """Run a ready callback as the loop would: a cancelled one is skipped."""
    if not handle.cancelled():
        handle._run()


def _step(loop: asyncio.AbstractEventLoop, ready: deque[asyncio.Handle], task: asyncio.Task[Any]) -> None:
    """Run ``loop``'s ready callbacks while ``task`` is not done, then once more
    those that its end scheduled; the loop runs on this thread meanwhile."""
    hooks = sys.get_asyncgen_hooks()
    base: Any = loop  # the parts of a BaseEventLoop that run_forever sets up
    base._thread_id = threading.get_ident()
    sys.set_asyncgen_hooks(firstiter=base._asyncgen_firstiter_hook, finalizer=base._asyncgen_finalizer_hook)
    asyncio._set_running_loop(loop)
    try:
        while ready and not task.done():
            _run(ready.popleft())
        if task.done():
            for _ in range(len(ready)):
                _run(ready.popleft())
    finally:
        asyncio._set_running_loop(None)
        sys.set_asyncgen_hooks(*hooks)
        base._thread_id = None


def _has_timers(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` holds timers (cancelled ones too: only a full iteration
    drops them, and a run stepped through may leave some behind)."""
    return bool(getattr(loop, "_scheduled", ()))


def _run_until_done(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Run ``loop`` until ``task`` is done and the callbacks its end scheduled ran."""
    if task.done():
        loop.call_soon(loop.stop)
    else:
        task.add_done_callback(lambda _: loop.stop())
    loop.run_forever()
