"""Submitting runs to workers: the client side of ``PubSub.with_workers()``.

The client stores the input, announces the state id to the workers and
follows the run's log until the connection reports nothing outstanding. It
runs no step itself. Leaving early (a ``break``, Ctrl-C) asks the workers to
stop the run; its unfinished deliveries stay pending for the next call.
"""

from __future__ import annotations

import builtins
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._engine import CLEANUP_SECONDS
from ._errors import ConnectionFailedError, PermflowError, PoisonMessageError, RunTimeoutError
from ._message import Message
from ._outage import Outage
from ._worker import HEARTBEAT_SECONDS

if TYPE_CHECKING:
    from ._engine import Settings
    from ._plan import Plan
    from .connections._base import PubSubConnection

__all__ = ["NO_WORKERS_SECONDS", "NoWorkersError", "RemoteRun", "WorkerRunError", "rebuild_error"]

_POLL_SECONDS = 1.0
#: Seconds a client of workers keeps following a run through a store outage
#: (workers ride it out too) before it fails with ConnectionFailedError.
OUTAGE_SECONDS = 30.0
#: Seconds a client of workers waits, with no live worker at all, before it
#: fails with NoWorkersError (the run stays stored; a worker started later takes it).
NO_WORKERS_SECONDS = 10.0
_PAGE = 1000  # log messages a connection may return per progress call
_log = logging.getLogger("permflow.run")


class NoWorkersError(PermflowError):
    """No worker has been alive to take a run submitted with ``with_workers()``
    for ``NO_WORKERS_SECONDS``: start one (``python -m permflow worker ...``)."""


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
    exception types and permflow's own errors come back as themselves, others
    as ``WorkerRunError``."""
    name = str(record.get("error"))
    kind = getattr(builtins, name, None)
    if kind is None and name.startswith("permflow."):
        kind = _permflow_errors().get(name.rpartition(".")[2])
    text = str(record.get("message", ""))
    where = f"in process {record.get('process')!r} on a worker (state id {state_id!r})"
    if isinstance(kind, type) and issubclass(kind, Exception):
        error = _construct(kind, text)
        if error is not None:
            if hasattr(error, "add_note"):
                error.add_note(f"permflow: raised {where}")
            return error
    return WorkerRunError(f"{record.get('error')}: {text} ({where})", dict(record))


def _permflow_errors() -> dict[str, type[Exception]]:
    import permflow

    from ._serialization import CorruptEntryError

    found = {n: getattr(permflow, n) for n in permflow.__all__}
    found["CorruptEntryError"] = CorruptEntryError
    return {n: k for n, k in found.items() if isinstance(k, type) and issubclass(k, PermflowError)}


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
        self.resumable = True  # False when the caller deletes the state id after a failure
        self._stop_on_exit = True  # ask the workers to stop the run if this call ends early
        self._live: set[str] = set()
        self._alone_since: float | None = None
        self._next_check = -math.inf

    async def execute(self, topic: str | None, value: Any) -> None:
        finished = announced = False
        try:
            with anyio.move_on_after(self.settings.timeout) as deadline:
                after = await self._submit(topic, value)
                announced = True
                await self._follow(after)
                finished = True
        finally:
            if announced and not finished and self._stop_on_exit:
                # left early, failed or timed out: stop the workers' run
                await self._request_stop()
        if deadline.cancelled_caught:
            raise RunTimeoutError(
                f"run {self.state_id!r} did not finish on the workers within "
                f"timeout={self.settings.timeout}s; {self.left_behind()}"
            )

    def left_behind(self) -> str:
        """What a run that did not finish leaves, and how to go on from it."""
        if self.resumable:
            return "its unfinished deliveries stay pending: invoke the same state id again to resume"
        return "its state was deleted (no state_id was given): pass config={'state_id': ...} to resume runs"

    async def _submit(self, topic: str | None, value: Any) -> str | None:
        """Register, store the input and announce the run; the last log id seen."""
        conn, sid, subscriptions = self.conn, self.state_id, self.plan.subscriptions
        if topic is None:
            await conn.register(sid, subscriptions)
            log = await conn.read_log(sid, None)
            after = log[-1].id if log else None
        else:
            message = Message(topic, value, sid, time.time())
            stored = await conn.start(sid, subscriptions, [message], owner=None)  # no step runs here
            for message in stored:
                self.emit(message)
            after = stored[-1].id
        await conn.announce(sid)
        return after

    async def _request_stop(self) -> None:
        """Ask the workers to stop the run, within the cleanup bound; a store
        that does not answer must not hide why the call ended."""
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_SECONDS
            try:
                await self.conn.request_stop(self.state_id)
            except Exception as exc:
                _log.warning("could not ask the workers to stop state id %r: %s", self.state_id, exc)

    async def _check_workers(self) -> None:
        """Fail once no worker has been alive for ``NO_WORKERS_SECONDS``; say
        when a worker vanished (its work waits for its lease to run out)."""
        now = anyio.current_time()
        if now < self._next_check:
            return
        self._next_check = now + HEARTBEAT_SECONDS
        try:
            live = set(await self.conn.live_workers(3 * HEARTBEAT_SECONDS))
        except NotImplementedError:  # a connection without heartbeats: nothing to go by
            self._next_check = math.inf
            return
        except ConnectionFailedError:  # the next progress call reports the outage
            return
        for gone in sorted(self._live - live):
            _log.info(
                "worker %s stopped sending heartbeats; what it held of state id %r is taken over "
                "once its lease (%gs) runs out",
                gone,
                self.state_id,
                self.conn.lease,
            )
        self._live = live
        if live:
            self._alone_since = None
            return
        if self._alone_since is None:
            self._alone_since = now
            _log.info("no worker is alive to take state id %r; waiting up to %gs", self.state_id,
                      NO_WORKERS_SECONDS)  # fmt: skip
        elif now - self._alone_since >= NO_WORKERS_SECONDS:
            raise NoWorkersError(
                f"no worker has been alive for {NO_WORKERS_SECONDS:g}s to take state id {self.state_id!r} "
                f"on {self.conn!r}: start one with 'python -m permflow worker MODULE:ATTR --redis URL "
                "--prefix PREFIX' (the same PubSub and connection); the run stays stored and a worker "
                "started later takes it up"
            )

    async def _follow(self, after: str | None) -> None:
        conn, sid, names = self.conn, self.state_id, self.plan.names
        # one line per client call: INFO (the workers report the outage at WARNING)
        outage = Outage(f"client of state id {sid}", _log, level=logging.INFO)
        while True:
            try:
                messages, counts, record = await conn.progress(sid, after, names)
            except ConnectionFailedError as exc:
                # Reading is safe to retry: ride out the outage as the workers do.
                if outage.down_for >= OUTAGE_SECONDS:
                    raise
                await outage.failed(exc)
                continue
            outage.recovered()
            after = self._emit_new(messages, after)
            if record is not None:
                error = rebuild_error(sid, record)
                if isinstance(error, PoisonMessageError):
                    # The worker reports a dead letter before committing it (so that
                    # this call fails rather than ends as idle): a stop now would
                    # refuse that commit and leave the message pending.
                    self._stop_on_exit = False
                raise error
            if not any(counts.values()):
                while len(messages) >= _PAGE:  # the rest of a long log
                    messages = await conn.read_log(sid, after)
                    after = self._emit_new(messages, after)
                return
            if not messages:  # nothing moved since the last look: is anyone there?
                await self._check_workers()
            try:
                await conn.wait_for_change(sid, _POLL_SECONDS)
            except ConnectionFailedError as exc:
                await outage.failed(exc)

    def _emit_new(self, messages: list[Message], after: str | None) -> str | None:
        for message in messages:
            self.emit(message)
            after = message.id
        return after
