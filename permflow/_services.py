"""What a PubSub lends its steps besides their input, and closes with it."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._processes import ProcessPool
from ._resources import Resources

if TYPE_CHECKING:
    from .connections._base import PubSubConnection

__all__ = ["Services"]

Closer = Callable[[], Awaitable[None]]


class Services:
    """Lent to every step of a PubSub's runs through its ``StepContext``.

    It holds the connection the run stores into, the shared resources steps
    ask for (``PubSub(resources=...)``), the pool of worker processes of
    ``execution="process"`` steps (``process_pool()``, of ``max_processes``;
    None: the number of CPUs), and whatever else is opened for steps and must
    be closed again (``on_close``). ``aclose`` runs the closers in reverse
    order of registration (resources before the pool); it never closes the
    connection, which belongs to whoever passed it in. Closed services open
    anew on next use.
    """

    def __init__(
        self,
        connection: PubSubConnection,
        *,
        resources: Mapping[str, Callable[[], Any]] | None = None,
        max_processes: int | None = None,
    ) -> None:
        self.connection = connection
        self.max_processes = max_processes
        self._closers: list[Closer] = []
        self._process_pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self.on_close(self._close_process_pool)
        #: The shared resources steps ask for; None if the PubSub has none.
        self.resources = Resources(resources) if resources else None
        if self.resources is not None:
            self.on_close(self.resources.aclose)

    def on_close(self, closer: Closer) -> None:
        """Have every ``aclose`` call ``closer`` (last registered, first called)."""
        self._closers.append(closer)

    def process_pool(self) -> ProcessPool:
        """The pool of this PubSub's process steps, made on first use and shut
        down by ``aclose`` (a later use makes a new one)."""
        with self._lock:
            if self._process_pool is None:
                self._process_pool = ProcessPool(self.max_processes)
            return self._process_pool

    async def _close_process_pool(self) -> None:
        with self._lock:
            pool, self._process_pool = self._process_pool, None
        if pool is not None:
            await pool.aclose()

    def with_connection(self, connection: PubSubConnection) -> Services:
        """Services for the same PubSub over another connection: the same
        settings (resource factories, pool size), nothing opened yet."""
        factories = self.resources.factories if self.resources else None
        return Services(connection, resources=factories, max_processes=self.max_processes)

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
