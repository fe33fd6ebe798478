"""Riding out an unreachable store: back off, log the outage once, carry on.

Waits grow exponentially from ``first`` to ``cap`` seconds, each drawn between
half and all of its step (jitter, so that a fleet does not reconnect in step).
The first failure of an outage is logged at WARNING (or the ``level`` given),
the recovery at INFO with how long it lasted; failures in between at DEBUG.
"""

from __future__ import annotations

import logging
import random

import anyio

__all__ = ["Outage"]


class Outage:
    """The back-off and the log lines of one component (a worker, a client)."""

    def __init__(
        self,
        who: str,
        log: logging.Logger,
        *,
        first: float = 0.1,
        cap: float = 2.0,
        level: int = logging.WARNING,
    ) -> None:
        self.who = who
        self.log = log
        self.level = level
        self.first = first
        self.cap = cap
        self.failures = 0
        self.since: float | None = None

    def next_wait(self) -> float:
        step = min(self.cap, self.first * 2**self.failures)
        return random.uniform(step / 2, step)

    async def failed(self, exc: BaseException, stop: anyio.Event | None = None) -> None:
        """Note a failure and wait before the next try (less if ``stop`` is set)."""
        if self.since is None:
            self.since = anyio.current_time()
            self.log.log(
                self.level, "%s lost its connection to the store, retrying with back-off: %s", self.who, exc
            )
        else:
            self.log.debug("%s: store still unreachable: %s", self.who, exc)
        wait = self.next_wait()
        self.failures += 1
        with anyio.move_on_after(wait):
            await (stop.wait() if stop is not None else anyio.sleep_forever())

    def recovered(self) -> None:
        """Note a success: log the end of an outage, if there was one."""
        if self.since is not None:
            self.log.info("%s reconnected after %.1fs", self.who, anyio.current_time() - self.since)
            self.since = None
            self.failures = 0

    @property
    def down_for(self) -> float:
        """Seconds since the outage began (0 when there is none)."""
        return 0.0 if self.since is None else anyio.current_time() - self.since
