"""What a PubSub lends its steps besides their input, and closes with it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._resources import Resources

if TYPE_CHECKING:
    from .connections._base import PubSubConnection

__all__ = ["Services"]

Closer = Callable[[], Awaitable[None]]


class Services:
    """Lent to every step of a PubSub's runs through its ``StepContext``.

    It holds the connection the run stores into, and whatever a PubSub opens
    for its steps and must close again (``on_close``). ``aclose`` runs the
    closers in reverse order of registration; it never closes the connection,
    which belongs to whoever passed it in.
    """

    def __init__(
        self, connection: PubSubConnection, *, resources: Mapping[str, Callable[[], Any]] | None = None
    ) -> None:
        self.connection = connection
        self._closers: list[Closer] = []
        #: The shared resources steps ask for (``PubSub(resources=...)``); None if none.
        self.resources = Resources(resources) if resources else None
        if self.resources is not None:
            self.on_close(self.resources.aclose)

    def on_close(self, closer: Closer) -> None:
        """Have ``aclose`` call ``closer`` (last registered, first called)."""
        self._closers.append(closer)

    def with_connection(self, connection: PubSubConnection) -> Services:
        """Services for the same PubSub over another connection: the same
        settings (resource factories), nothing opened yet."""
        return Services(connection, resources=self.resources.factories if self.resources else None)

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
