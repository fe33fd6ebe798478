"""Submitting runs to workers: the client side of ``PubSub.with_workers()``.

The client stores the input, announces the state id to the workers and
follows the run's log until the connection reports nothing outstanding. It
runs no step itself. Leaving early (a ``break``, Ctrl-C) asks the workers to
stop the run; its unfinished deliveries stay pending for the next call.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import PermflowError, RunTimeoutError
from ._message import Message

if TYPE_CHECKING:
    from ._engine import Settings
    from ._plan import Plan
    from .connections._base import PubSubConnection

__all__ = ["RemoteRun", "WorkerRunError", "rebuild_error"]

_POLL_SECONDS = 1.0
_PAGE = 1000  # log messages a connection may return per progress call


class WorkerRunError(PermflowError):
    """A run failed on a worker with an exception permflow cannot rebuild here.

    ``record`` is what the worker stored: ``process``, ``topic``, ``error``
    (the exception's qualified type name) and ``message``.
    """

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


def rebuild_error(state_id: str, record: dict[str, Any]) -> Exception:
    """The worker's exception as close to the original as can be: builtin
    exception types come back as themselves, others as ``WorkerRunError``."""
    kind = getattr(builtins, str(record.get("error")), None)
    text = str(record.get("message", ""))
    where = f"in process {record.get('process')!r} on a worker (state id {state_id!r})"
    if isinstance(kind, type) and issubclass(kind, Exception):
        error = _construct(kind, text)
        if error is not None:
            if hasattr(error, "add_note"):
                error.add_note(f"permflow: raised {where}")
            return error
    return WorkerRunError(f"{record.get('error')}: {text} ({where})", dict(record))


def _construct(kind: type[Exception], text: str) -> Exception | None:
    """``kind(text)``, or None for a type whose constructor wants more."""
    try:
        return kind(text)
    except Exception:
        return None


class RemoteRun:
    """Follows one run driven by workers, from input to idle."""

    def __init__(
        self,
        plan: Plan,
        connection: PubSubConnection,
        state_id: str,
        settings: Settings,
        emit: Callable[[Message], None],
    ) -> None:
        self.plan = plan
        self.conn = connection
        self.state_id = state_id
        self.settings = settings
        self.emit = emit

    async def execute(self, topic: str | None, value: Any) -> None:
        conn, sid = self.conn, self.state_id
        await conn.register(sid, self.plan.subscriptions)
        if topic is None:
            log = await conn.read_log(sid, None)
            after = log[-1].id if log else None
        else:
            stored = await conn.publish(sid, [Message(topic, value, sid, time.time())])
            for message in stored:
                self.emit(message)
            after = stored[-1].id
        await conn.announce(sid)
        finished = False
        try:
            with anyio.move_on_after(self.settings.timeout) as deadline:
                await self._follow(after)
                finished = True
        finally:
            if not finished:  # left early, failed or timed out: stop the workers' run
                with anyio.CancelScope(shield=True):
                    await conn.request_stop(sid)
        if deadline.cancelled_caught:
            raise RunTimeoutError(
                f"run {sid!r} did not finish on the workers within timeout={self.settings.timeout}s; "
                "its unfinished deliveries stay pending: invoke the same state id again to resume"
            )

    async def _follow(self, after: str | None) -> None:
        conn, sid, names = self.conn, self.state_id, self.plan.names
        while True:
            messages, counts, record = await conn.progress(sid, after, names)
            after = self._emit_new(messages, after)
            if record is not None:
                raise rebuild_error(sid, record)
            if not any(counts.values()):
                while len(messages) >= _PAGE:  # the rest of a long log
                    messages = await conn.read_log(sid, after)
                    after = self._emit_new(messages, after)
                return
            await conn.wait_for_change(sid, _POLL_SECONDS)

    def _emit_new(self, messages: list[Message], after: str | None) -> str | None:
        for message in messages:
            self.emit(message)
            after = message.id
        return after
