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


class _Opened:
    """What is opened for a PubSub's steps, shared by its clones over other
    connections (``with_connection``): the resources, the process pool, and
    whatever else registered a closer."""

    def __init__(self, resources: Mapping[str, Callable[[], Any]] | None, max_processes: int | None) -> None:
        self.max_processes = max_processes
        self.closers: list[Closer] = []
        self.lock = threading.Lock()
        self.pool: ProcessPool | None = None
        self.closers.append(self.close_pool)
        self.resources = Resources(resources) if resources else None
        if self.resources is not None:
            self.closers.append(self.resources.aclose)

    async def close_pool(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            await pool.aclose()


class Services:
    """Lent to every step of a PubSub's runs through its ``StepContext``.

    It holds the connection the run stores into, the shared resources steps
    ask for (``PubSub(resources=...)``), the pool of worker processes of
    ``execution="process"`` steps (``process_pool()``, of ``max_processes``;
    None: the number of CPUs), and whatever else is opened for steps and must
    be closed again (``on_close``). ``aclose`` runs the closers in reverse
    order of registration (resources before the pool); it never closes the
    connection, which belongs to whoever passed it in. Closed services open
    anew on next use. A PubSub moved to another connection shares all but the
    connection with the original (one pool, one set of resources), so closing
    either closes both.
    """

    def __init__(
        self,
        connection: PubSubConnection,
        *,
        resources: Mapping[str, Callable[[], Any]] | None = None,
        max_processes: int | None = None,
        _opened: _Opened | None = None,
    ) -> None:
        self.connection = connection
        self._opened = _opened if _opened is not None else _Opened(resources, max_processes)

    @property
    def resources(self) -> Resources | None:
        """The shared resources steps ask for; None if the PubSub has none."""
        return self._opened.resources

    @property
    def max_processes(self) -> int | None:
        """The size of the process pool (None: the number of CPUs)."""
        return self._opened.max_processes

    def on_close(self, closer: Closer) -> None:
        """Have every ``aclose`` call ``closer`` (last registered, first called)."""
        self._opened.closers.append(closer)

    def process_pool(self) -> ProcessPool:
        """The pool of this PubSub's process steps, made on first use and shut
        down by ``aclose`` (a later use makes a new one)."""
        opened = self._opened
        with opened.lock:
            if opened.pool is None:
                opened.pool = ProcessPool(opened.max_processes)
            return opened.pool

    def with_connection(self, connection: PubSubConnection) -> Services:
        """The same services over another connection: what is opened is shared."""
        return Services(connection, _opened=self._opened)

    async def aclose(self) -> None:
        """Close everything opened for steps; the first error is raised after
        every closer has run."""
        failure: BaseException | None = None
        for closer in reversed(self._opened.closers):
            try:
                await closer()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
