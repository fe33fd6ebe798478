"""What a PubSub lends its steps besides their input, and closes with it."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._processes import ProcessPool

if TYPE_CHECKING:
    from .connections._base import PubSubConnection

__all__ = ["Services"]

Closer = Callable[[], Awaitable[None]]


class Services:
    """Lent to every step of a PubSub's runs through its ``StepContext``.

    It holds the connection the run stores into, the pool of worker processes
    of ``execution="process"`` steps (``process_pool()``, of ``max_processes``;
    None: the number of CPUs), and whatever a PubSub opens for its steps and
    must close again (``on_close``). ``aclose`` runs the closers in reverse
    order of registration; it never closes the connection, which belongs to
    whoever passed it in.
    """

    def __init__(self, connection: PubSubConnection, *, max_processes: int | None = None) -> None:
        self.connection = connection
        self.max_processes = max_processes
        self._closers: list[Closer] = []
        self._process_pool: ProcessPool | None = None
        self._lock = threading.Lock()

    def on_close(self, closer: Closer) -> None:
        """Have ``aclose`` call ``closer`` (last registered, first called)."""
        self._closers.append(closer)

    def process_pool(self) -> ProcessPool:
        """The pool of this PubSub's process steps, made on first use and shut
        down by ``aclose`` (a later use makes a new one)."""
        with self._lock:
            pool = self._process_pool
            if pool is not None:
                return pool
            pool = self._process_pool = ProcessPool(self.max_processes)

        async def close_pool() -> None:
            with self._lock:
                if self._process_pool is pool:
                    self._process_pool = None
            await pool.aclose()

        self.on_close(close_pool)
        return pool

    def with_connection(self, connection: PubSubConnection) -> Services:
        """Services for the same PubSub over another connection: the same
        settings, nothing opened yet."""
        return Services(connection, max_processes=self.max_processes)

    async def aclose(self) -> None:
        """Close everything opened for steps; the first error is raised after
        every closer has run."""
        failure: BaseException | None = None
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
