"""One delivery of a run: its process runs on it, and what the process
published is committed together with the delivery's ack.

Before the process runs, a redelivery is logged (and dead-lettered after
``max_deliveries``), a suspect runs alone behind the gate, and ``when=``
filters the messages. The process runs directly when nothing guards it (no
step timeout, concurrency slot, trace or gate); a process of one function
and one publish runs without the frames of either. After the commit, the
stored messages are emitted and the processes reading them are fetched, so
that the task that committed carries on with one of them.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import anyio

from ._context import RUN_KEY, RunLimits, StepContext
from ._failures import dead_letter, step_failed
from ._filter import select, select_again
from ._gate import Gate
from ._lineage import check_repeat, depth_exceeded
from ._message import Delivery, Message

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._engine import Capacity, Settings
    from ._plan import Plan, Step
    from ._services import Services
    from .connections._base import PubSubConnection

__all__ = ["Delivering"]

_log = logging.getLogger("permflow.run")
#: Seconds a suspect delivery waits to run alone before it runs beside others.
_ALONE_PATIENCE = 10.0


class Delivering(ABC):
    """How a run handles one delivery (the base of ``Run``, which sets these
    attributes and fetches)."""

    plan: Plan
    conn: PubSubConnection
    state_id: str
    settings: Settings
    owner: str
    services: Services | None
    capacity: Capacity | None
    emit: Callable[[Message], None]
    failed_at: tuple[str, str] | None
    _held: int
    _fetched: bool
    _gate: Gate | None
    _steps: anyio.CapacityLimiter | None
    _limits: RunLimits
    _plain: bool

    @abstractmethod
    async def _fetch(self, step: Step, passed: Delivery | None = None) -> list[Delivery]:
        """The deliveries of ``step`` for this driver (``passed``: a delivery it
        had nothing to do with, acked in the same call); the run implements it."""

    async def _handle(
        self, step: Step, delivery: Delivery, *, checked: bool = False, entered: bool = False
    ) -> list[tuple[Step, Delivery]]:
        """Run ``step`` on ``delivery`` and commit what it published; what that
        gave the processes reading it. ``checked``: a redelivery whose checks
        were done (``entered``: inside the gate, alone)."""
        messages = delivery.messages
        source = max(messages, key=_depth) if len(messages) > 1 else messages[0]
        if not checked and (delivery.attempt > 1 or delivery.suspect):
            return await self._redelivered(step, delivery, source)
        if step.when is not None:
            # inline, before any slot, thread, span or step: a rejected message costs one call
            try:
                try:
                    kept = select(step.when, messages)
                except Exception as exc:  # the chain's with_retry policy covers its predicate
                    kept = await select_again(step.when, messages, step.process.retry, exc)
            except Exception as exc:
                value = [m.value for m in messages] if step.join else source.value
                errors = step_failed(self, step, delivery, source, value, exc)
                return await self.commit(step, delivery, self._outputs(step, source, source.trail, errors))
            if not kept:
                if step.join:  # a join fetches at idle only
                    return await self.commit(step, delivery, [])
                return [(step, d) for d in await self._fetch(step, passed=delivery)]
            if len(kept) < len(messages):  # a join joins the matching ones only
                messages = tuple(kept)
                source = max(messages, key=_depth)
        trail = source.trail
        if step.on_cycle:
            trail = (*trail, check_repeat(step.name, source, trail))
        value = [m.value for m in messages] if step.join else source.value
        outbox: list[tuple[str, Any]]
        fast = step.publishing
        if fast is not None and self._plain:
            # one function, then publish (the usual process): called without their frames
            try:
                if fast.direct is not None:
                    out = await fast.direct(value)
                elif fast.runner is not None and fast.runner.runs_inline:
                    out = fast.step.checked(fast.runner.call_inline(value))
                else:
                    ctx = StepContext(self._limits, self.services)
                    out = await fast.step.ainvoke(value, {RUN_KEY: ctx})
            except Exception as exc:
                outbox = step_failed(self, step, delivery, source, value, exc)
            else:
                if source.depth < self.settings.recursion_limit:  # else _outputs raises
                    now, depth = time.time(), source.depth + 1
                    output = Message(fast.topic, out, self.state_id, now, "", depth, trail)
                    return await self.commit(step, delivery, [output])
                outbox = [(fast.topic, out)]
        else:
            ctx = StepContext(self._limits, self.services)
            try:
                if self._plain:
                    await step.body.ainvoke(value, {RUN_KEY: ctx})
                else:
                    await self._invoke_guarded(step, value, ctx, source, entered)
            except Exception as exc:
                ctx.outbox[:] = step_failed(self, step, delivery, source, value, exc)
            outbox = ctx.outbox
        return await self.commit(step, delivery, self._outputs(step, source, trail, outbox) if outbox else [])

    async def _redelivered(
        self, step: Step, delivery: Delivery, source: Message
    ) -> list[tuple[Step, Delivery]]:
        """``delivery`` came before: dead-letter it after too many attempts; run
        a suspect alone."""
        settings = self.settings
        if delivery.attempt > 1:
            _log.info(
                "redelivering to %r a message of topic %r (state id %r), attempt %d",
                step.name,
                source.topic,
                self.state_id,
                delivery.attempt,
            )
            if delivery.attempt > settings.max_deliveries:
                return await dead_letter(self, step, delivery, source)
        gate = self._gate
        if delivery.suspect and gate is not None:
            # Its last holder vanished holding it: it may be what killed that holder.
            # Run it alone, and charge the attempt only now that it starts.
            token = await gate.enter_alone(_ALONE_PATIENCE)
            try:
                if not await self.conn.charge(delivery, owner=self.owner):
                    self._held -= 1
                    return []
                return await self._handle(step, delivery, checked=True, entered=True)
            finally:
                if token is not None:
                    gate.leave_alone(token)
                else:
                    gate.leave()
        return await self._handle(step, delivery, checked=True)

    def _outputs(
        self, step: Step, source: Message, trail: tuple[Any, ...], outbox: list[tuple[str, Any]]
    ) -> list[Message]:
        """``outbox`` (topic, value) as messages caused by ``source``."""
        limit = self.settings.recursion_limit
        if source.depth >= limit:
            raise depth_exceeded(step.name, source, limit, self.plan.cycles)
        now, depth, sid = time.time(), source.depth + 1, self.state_id
        return [Message(t, v, sid, now, "", depth, trail) for t, v in outbox]

    async def _invoke_guarded(
        self, step: Step, value: Any, ctx: StepContext, source: Message, entered: bool
    ) -> None:
        timeout, trace, gate = self.settings.step_timeout, self.settings.trace, self._gate
        # The gate first, then a slot, for every step (a suspect too): a step held back
        # at the gate holds no slot a suspect inside it would need.
        if gate is not None and not entered:
            await gate.enter()
        try:
            # a step's time starts once it has a concurrency slot
            async with self._steps if self._steps is not None else _no_slot():
                with anyio.move_on_after(timeout) as scope:
                    with trace(step.name, source) if trace is not None else nullcontext():
                        await step.body.ainvoke(value, {RUN_KEY: ctx})
        finally:
            if gate is not None and not entered:
                gate.leave()
        if scope.cancelled_caught:
            raise TimeoutError(
                f"process {step.name!r} took longer than step_timeout={timeout}s on a message "
                f"of topic {source.topic!r} (state id {self.state_id!r})"
            )

    async def commit(
        self, step: Step, delivery: Delivery, outputs: list[Message]
    ) -> list[tuple[Step, Delivery]]:
        stored = await self.conn.commit(delivery, outputs, owner=self.owner)
        self._held -= 1
        if stored is None:
            _log.info(
                "commit of %r refused: another driver of state id %r holds that delivery now "
                "(its outputs are stored once, by that driver)",
                step.name,
                self.state_id,
            )
            return []
        if not stored:
            return []
        return await self._fetch_readers(stored)

    async def _fetch_readers(self, stored: list[Message]) -> list[tuple[Step, Delivery]]:
        """Emit ``stored`` and fetch what it gave the processes reading it."""
        emit = self.emit
        for message in stored:
            emit(message)
        subscribers = self.plan.subscribers
        if len(stored) == 1:
            readers = subscribers.get(stored[0].topic, ())
        else:
            readers = tuple(dict.fromkeys(s for m in stored for s in subscribers.get(m.topic, ())))
        follow: list[tuple[Step, Delivery]] = []
        if self.capacity is not None:
            for reader in readers:
                follow.extend((reader, new) for new in await self._fetch(reader))
            return follow
        if readers:
            self._fetched = True
        conn, sid, owner = self.conn, self.state_id, self.owner
        for reader in readers:  # ``_fetch`` without a worker's limit, inline (the hot path)
            deliveries = await conn.fetch(sid, reader.name, owner=owner)
            self._held += len(deliveries)
            for new in deliveries:
                follow.append((reader, new))
        return follow


@asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield


def _depth(message: Message) -> int:
    return message.depth
