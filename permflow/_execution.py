"""How plain (sync) functions run: in a worker thread or on the event loop.

A blocking sync step (an HTTP call, an LLM client) must not stall the event
loop, so it runs in a worker thread. But a thread hop costs ~90 µs, far more
than a trivial step such as ``lambda x: x + 1``. The ``"auto"`` policy gets
both:

* a sync step runs in a worker thread until it has finished in under
  ``FAST_SECONDS`` (100 µs) ``WARMUP_RUNS`` (3) times in a row;
* from then on it runs inline on the event loop;
* if ``SLOW_RUNS`` (2) inline runs in a row take longer than ``SLOW_SECONDS``
  (1 ms) each, or the step calls a sync permflow API (a nested ``invoke``),
  it goes back to worker threads for good. One slow run alone (a garbage
  collection, the thread descheduled on a busy machine) does not demote a
  fast step; a step that blocks has stalled the loop twice at most.

Observations are shared by all steps made from the same function code, so
100 lambdas built in one loop learn together. ``execution="thread"`` and
``execution="inline"`` pin a step to one side. ``execution="process"`` runs
it in a pool of worker processes instead (``permflow._processes``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

import anyio.to_thread

from ._context import StepContext
from ._errors import ConfigError

__all__ = ["Execution", "SyncRunner", "note_blocking_call"]

Execution = Literal["auto", "thread", "inline", "process"]

FAST_SECONDS = 0.0001
SLOW_SECONDS = 0.001
SLOW_RUNS = 2
WARMUP_RUNS = 3


class _Profile:
    __slots__ = ("fast_runs", "pinned", "slow_runs")

    def __init__(self) -> None:
        self.fast_runs = 0
        #: inline runs in a row that took longer than SLOW_SECONDS
        self.slow_runs = 0
        self.pinned = False


class _Local(threading.local):
    #: the profile of the sync step running in this thread, if any
    profile: _Profile | None = None


_local = _Local()


_profiles: weakref.WeakKeyDictionary[Any, _Profile] = weakref.WeakKeyDictionary()
_profiles_lock = threading.Lock()


def _profile_for(func: Callable[..., Any]) -> _Profile:
    key = getattr(func, "__code__", func)
    try:
        with _profiles_lock:
            profile = _profiles.get(key)
            if profile is None:
                profile = _profiles[key] = _Profile()
            return profile
    except TypeError:  # neither hashable nor weak-referenceable: own profile
        return _Profile()


def note_blocking_call() -> None:
    """Pin the sync step running in this thread (if any) to worker threads.

    Called by the sync facade: a step that calls ``invoke()`` must never run
    on the event loop thread, where a blocking call could deadlock.
    """
    profile = _local.profile
    if profile is not None:
        profile.pinned = True


class SyncRunner:
    """Runs one sync function according to an execution policy."""

    __slots__ = ("_func", "_mode", "_profile")

    def __init__(self, func: Callable[..., Any], mode: Execution = "auto") -> None:
        if mode not in ("auto", "thread", "inline"):
            raise ConfigError(f"execution must be 'auto', 'thread', 'inline' or 'process', not {mode!r}")
        self._func = func
        self._mode = mode
        self._profile = _profile_for(func) if mode == "auto" else _Profile()

    @property
    def runs_inline(self) -> bool:
        """Whether the next call will run on the event loop thread."""
        if self._mode != "auto":
            return self._mode == "inline"
        profile = self._profile
        return not profile.pinned and profile.fast_runs >= WARMUP_RUNS

    async def run(self, value: Any, ctx: StepContext | None, extra: dict[str, Any] | None = None) -> Any:
        """Call the function on ``value`` (and keyword arguments ``extra``); in a
        worker thread, within the limiter of threads of ``ctx``'s run, if any."""
        if self.runs_inline:
            return self.call_inline(value, extra)
        limiter = ctx.limiter if ctx is not None else None
        return await anyio.to_thread.run_sync(
            self._in_thread, value, extra, abandon_on_cancel=True, limiter=limiter
        )

    def call_inline(self, value: Any, extra: dict[str, Any] | None = None) -> Any:
        """Call the function here, on the event loop's thread (when ``runs_inline``);
        ``SLOW_RUNS`` slow calls in a row send it back to worker threads for good."""
        if self._mode == "inline":
            return self._func(value) if extra is None else self._func(value, **extra)
        started = time.perf_counter()
        try:
            return self._func(value) if extra is None else self._func(value, **extra)
        finally:
            profile = self._profile
            if time.perf_counter() - started <= SLOW_SECONDS:
                profile.slow_runs = 0
            else:
                profile.slow_runs += 1
                if profile.slow_runs >= SLOW_RUNS:
                    profile.pinned = True

    def _in_thread(self, value: Any, extra: dict[str, Any] | None) -> Any:
        profile = self._profile
        _local.profile = profile
        started = time.perf_counter()
        try:
            result = self._func(value) if extra is None else self._func(value, **extra)
        finally:
            _local.profile = None
        if time.perf_counter() - started < FAST_SECONDS:
            profile.fast_runs += 1
        else:
            profile.fast_runs = 0
        return result
