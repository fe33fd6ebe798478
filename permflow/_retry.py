"""Retry and timeout wrappers for runnables (and whole processes)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import anyio

from ._context import step_context
from ._errors import ConfigError
from ._runnable import Config, Runnable

__all__ = ["RunnableRetry", "RunnableTimeout", "retry_waits_disabled", "set_retry_waits"]

_waits_enabled = True
_log = logging.getLogger("permflow.retry")
#: How a retry waits (tests replace it to record the schedule instead of sleeping).
_sleep = anyio.sleep


def set_retry_waits(enabled: bool) -> None:
    """Turn retry back-off waits on or off process-wide (off is for tests)."""
    global _waits_enabled
    _waits_enabled = enabled


def retry_waits_disabled() -> bool:
    return not _waits_enabled


class RunnableRetry(Runnable):
    """Runs ``inner`` again when it raises a retryable exception.

    Each attempt starts from a clean slate: messages it published are
    discarded if it fails, so only the successful attempt's publishes are
    stored.
    """

    def __init__(
        self,
        inner: Runnable,
        *,
        attempts: int,
        jitter: bool,
        retry_on: tuple[type[BaseException], ...],
        initial_wait: float,
        max_wait: float,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(f"stop_after_attempt must be an integer of at least 1, got {attempts!r}")
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on
        ):
            raise ConfigError(
                f"retry_if_exception_type must be an exception class or a tuple of them, got {retry_on!r}"
            )
        for label, wait in (("initial_wait", initial_wait), ("max_wait", max_wait)):
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
                raise ConfigError(f"{label} must be a number of seconds >= 0, got {wait!r}")
        self.inner = inner
        self.attempts = attempts
        self.jitter = jitter
        self.retry_on = retry_on
        self.initial_wait = initial_wait
        self.max_wait = max_wait

    @property
    def name(self) -> str:
        return self.inner.name

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt + 1``."""
        if not _waits_enabled:
            return 0.0
        wait = min(self.max_wait, self.initial_wait * 2.0 ** (attempt - 1))
        if self.jitter:
            wait += random.uniform(0, wait)
        return min(wait, self.max_wait)

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        ctx = step_context(config)
        for attempt in range(1, self.attempts + 1):
            # each attempt publishes apart: a failed one's messages are dropped
            # without touching what steps running beside it published
            part = ctx.child() if ctx else None
            try:
                result = await self.inner.ainvoke(input, config if part is None else part.config(config))
            except self.retry_on as exc:
                if attempt == self.attempts:
                    raise
                wait = self.wait_before(attempt)
                # One line per retry; the traceback only for whoever asked for DEBUG.
                _log.warning(
                    "retrying %r in %.3fs (attempt %d of %d failed: %s: %s)",
                    self.name,
                    wait,
                    attempt,
                    self.attempts,
                    type(exc).__name__,
                    exc,
                    exc_info=_log.isEnabledFor(logging.DEBUG),
                )
            else:
                if ctx is not None and part is not None:
                    ctx.adopt(part)
                return result
            await _sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _publishes(self) -> Iterator[str | None]:
        return self.inner._publishes()


class RunnableTimeout(Runnable):
    """Fails with ``TimeoutError`` when one call of ``inner`` takes too long."""

    def __init__(self, inner: Runnable, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {seconds!r}")
        self.inner = inner
        self.seconds = seconds

    @property
    def name(self) -> str:
        return self.inner.name

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        with anyio.move_on_after(self.seconds) as scope:
            return await self.inner.ainvoke(input, config)
        if scope.cancelled_caught:
            raise TimeoutError(f"step {self.name!r} took longer than {self.seconds}s")
        raise AssertionError("unreachable")  # pragma: no cover

    def _publishes(self) -> Iterator[str | None]:
        return self.inner._publishes()
