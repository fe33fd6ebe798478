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
        self._solo = False
        self._changed: anyio.Event | None = None

    async def enter(self) -> None:
        while self._solo:
            await self._wait()
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._notify()

    async def enter_alone(self, patience: float) -> bool:
        """Wait until no other step is inside, holding new ones back; False (and
        entered as an ordinary step) if that took more than ``patience`` seconds."""
        with anyio.move_on_after(patience):
            while self._solo:
                await self._wait()
            self._solo = True
            try:
                while self.running:
                    await self._wait()
            except BaseException:
                self.leave_alone()
                raise
            return True
        if self._solo:
            self.leave_alone()
        await self.enter()
        return False

    def leave_alone(self) -> None:
        self._solo = False
        self._notify()

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
