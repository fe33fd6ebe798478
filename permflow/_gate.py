"""The gate suspects pass alone.

A delivery whose previous holder vanished mid-lease may be what killed it (a
step that crashes its process on one input). Such a suspect runs alone: the
gate lets ordinary steps pass side by side, and a suspect only once no other
step is inside, holding the others back until it is done. If it kills its
process again, nothing else was running to be charged with the crash.

A suspect waits at most ``patience`` seconds for the others to leave: a step
that is waiting for work of its own to get through the gate (a nested run on
the same workers) must not deadlock it. After that it runs beside them.
"""

from __future__ import annotations

import anyio

__all__ = ["Gate"]


class Gate:
    """Steps pass side by side; a suspect passes alone."""

    __slots__ = ("_changed", "_solo", "running")

    def __init__(self) -> None:
        self.running = 0
        self._solo: object | None = None  # the suspect inside (or waiting to be), if any
        self._changed: anyio.Event | None = None

    async def enter(self) -> None:
        while self._solo is not None:
            await self._wait()
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._notify()

    async def enter_alone(self, patience: float) -> object | None:
        """Wait until no other step is inside, holding new ones back; a token for
        ``leave_alone``. None (and entered as an ordinary step: ``leave``) if
        that took more than ``patience`` seconds."""
        token = object()
        with anyio.move_on_after(patience):
            while self._solo is not None:
                await self._wait()
            self._solo = token
            try:
                while self.running:
                    await self._wait()
            except BaseException:
                self.leave_alone(token)
                raise
            return token
        self.leave_alone(token)  # only if it was this suspect's: another may hold the gate
        await self.enter()
        return None

    def leave_alone(self, token: object) -> None:
        if self._solo is token:
            self._solo = None
            self._notify()

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
