"""The run engine: drives one run (state id) of a PubSub until it is idle.

A run fetches deliveries from the connection, runs each process's chain on
them, and commits each delivery's published messages together with its ack
(``_delivery``). After a commit, the same task fetches for the subscribers of
what it just published and carries on with one of the new deliveries itself,
so a linear chain costs no task spawn per hop. While at most one delivery is
ready, the run needs no task group at all: it runs in the caller's task.

The other deliveries of a fan-out are queued: a task of the run that is done
takes the next one, and a task is started for each one still queued as soon
as the event loop gets control (all tasks are then waiting, and a queued
delivery must not wait for them). Fast steps thus start no task per delivery.

When no task is running, the run asks the connection what is outstanding:
work held elsewhere is waited for; joins fire when nothing else is left;
when joins have nothing new either, the run is idle and ends.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import checkpoint

from ._context import RunLimits
from ._delivery import Delivering
from ._errors import ConnectionFailedError, RunTimeoutError
from ._failures import describe
from ._gate import Gate
from ._leases import renewing
from ._message import Delivery, Message

if TYPE_CHECKING:
    from ._plan import Plan, Step
    from ._services import Services
    from .connections._base import PubSubConnection

__all__ = ["Capacity", "Run", "Settings"]

_HOPS_BETWEEN_CHECKPOINTS = 32
_DEFAULT_THREADS = 40
_log = logging.getLogger("permflow.run")

#: ``trace(process_name, message)`` returns a context manager entered around
#: each step execution (e.g. an OpenTelemetry span); see ``PubSub(trace=...)``.
Tracer = Callable[[str, Message], AbstractContextManager[Any]]
_HELP_INTERVAL = 0.2  # seconds between a worker's calls for help on one run
#: Seconds the cleanup after a failed, timed-out or cancelled run may take (handing
#: deliveries back). A store that does not answer by then is left to the lease,
#: and the connection hands them back before its next run of the state id.
CLEANUP_SECONDS = 0.25
_OWNER_TAG = uuid.uuid4().hex[:12]
_owner_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Settings:
    recursion_limit: int = 1000
    max_concurrency: int | None = None
    timeout: float | None = None
    step_timeout: float | None = None
    max_deliveries: int = 5
    #: Process steps of one run at once (None: as many as the pool has processes).
    max_processes: int | None = None
    poll_interval: float = 1.0
    trace: Tracer | None = None


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a worker lends its runs: a step limiter shared by all of them, and
    a way to call other workers in when a run has more work than it can take."""

    limiter: anyio.CapacityLimiter
    call_for_help: Callable[[str], Awaitable[None]]
    report_failure: Callable[[str, dict[str, Any]], Awaitable[None]]
    #: Where suspects run alone: one gate for every run of the worker.
    gate: Gate


class Run(Delivering):
    """One execution of a plan on one state id, from input to idle.

    With a ``capacity`` (worker mode) the run fetches only as many deliveries
    as the worker can start, so that other workers driving the same state id
    get the rest.
    """

    def __init__(
        self,
        plan: Plan,
        connection: PubSubConnection,
        state_id: str,
        settings: Settings,
        emit: Callable[[Message], None],
        capacity: Capacity | None = None,
        services: Services | None = None,
    ) -> None:
        self.plan = plan
        self.conn = connection
        self.services = services
        self.state_id = state_id
        self.settings = settings
        self.emit = emit
        self.owner = f"{_OWNER_TAG}.{os.getpid()}.{next(_owner_numbers)}"
        self._active = 0
        self._held = 0
        self._fetched = False
        self._counts: dict[str, int] | None = None
        self._quiet: anyio.Event | None = None
        self._failure: BaseException | None = None
        self.failed_at: tuple[str, str] | None = None  # (process, topic) of a failed step
        self.released = True  # False if handing back at the end failed (the store was away)
        self.resumable = True  # False when the caller deletes the state id after a failure
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None  # around the run, where leases are renewed
        self._queue: deque[tuple[Step, Delivery]] = deque()  # started, not yet taken by a task
        self._spawning = False  # a task is to start tasks for what stays queued
        self._pausing = 0  # tasks letting others run between deliveries (not waiting in a step)
        limit = settings.max_concurrency
        self.capacity = capacity
        self._more = False  # a capped fetch may have left deliveries behind
        self._called_for_help = -math.inf
        if capacity is not None:
            self._steps: anyio.CapacityLimiter | None = capacity.limiter
        else:
            self._steps = anyio.CapacityLimiter(limit) if limit else None
        # worker threads, and process steps, of this run at once: process calls beyond
        # it wait here, where cancelling the run cancels them, not in the pool's queue
        processes = settings.max_processes or (services.max_processes if services else None)
        self._limits = RunLimits(limit or _DEFAULT_THREADS, processes)
        # Suspects exist only where leases run out (stores that outlive drivers).
        self._gate: Gate | None = None
        if capacity is not None:
            self._gate = capacity.gate
        elif connection.lease != math.inf:
            self._gate = Gate()
        # no timeout, slot, trace or gate around steps: call them directly (the hot path)
        self._plain = (
            settings.step_timeout is None
            and self._steps is None
            and settings.trace is None
            and self._gate is None
        )

    async def execute(self, topic: str | None, value: Any, *, counts: dict[str, int] | None = None) -> None:
        """Publish ``value`` on ``topic`` (unless topic is None), run to idle.

        ``counts``: outstanding counts the caller just read (a worker, whose
        client registered the processes); the run then neither registers again
        nor reads them once more before its first fetch.
        """
        conn, sid = self.conn, self.state_id
        self._counts = counts
        if counts is not None:
            conn.assume_registered(sid, self.plan.subscriptions)
        timeout = self.settings.timeout
        deadline = anyio.move_on_after(timeout) if timeout is not None else nullcontext()
        clean = False
        try:
            with deadline:
                if counts is None and topic is None:
                    await conn.register(sid, self.plan.subscriptions)
                await self._run_group(topic, value, register=counts is None)
            timed_out = isinstance(deadline, anyio.CancelScope) and deadline.cancelled_caught
            clean = self._failure is None and not timed_out
        finally:
            if self._held or (self._fetched and not clean):
                await self._release(keep_quiet=not clean)
        if self._failure is not None:
            raise self._failure
        if timed_out:
            raise RunTimeoutError(
                f"run {sid!r} did not finish within timeout={timeout}s; {self.left_behind()}"
            )

    def left_behind(self) -> str:
        """What a run that did not finish leaves, and how to go on from it."""
        if self.resumable:
            return "its unfinished deliveries stay pending: invoke the same state id again to resume"
        return "its state was deleted (no state_id was given): pass config={'state_id': ...} to resume runs"

    async def _release(self, *, keep_quiet: bool) -> None:
        """Hand back what this run may hold (also deliveries a cancelled fetch
        may have taken), within ``CLEANUP_SECONDS``. When the run already
        failed, a failing release must not hide that error: the lease (or the
        connection's next run of this state id) hands them back instead."""
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_SECONDS
            try:
                await self.conn.release(self.state_id, self.owner)
            except Exception:
                self.released = False
                if not keep_quiet:
                    raise
                _log.info("could not hand back the deliveries of state id %r; the lease will", self.state_id)
        if scope.cancelled_caught:
            self.released = False
        if scope.cancelled_caught and not keep_quiet:
            raise ConnectionFailedError(
                f"the store did not answer within {CLEANUP_SECONDS}s while handing back the "
                f"deliveries of state id {self.state_id!r}"
            )

    async def _run_group(self, topic: str | None, value: Any, *, register: bool) -> None:
        """Publish ``value`` on ``topic`` (registering the processes first if
        ``register``: one call, ``start``) and drive the run to idle, keeping
        the leases of what it fetched meanwhile where they run out."""
        first: list[tuple[Step, Delivery]] = []
        conn, sid = self.conn, self.state_id
        try:
            if topic is not None:
                message = Message(topic, value, sid, time.time())
                if register:
                    # a start cut off on the wire may still have handed us its fetch
                    self._fetched = True
                    subscriptions = self.plan.subscriptions
                    keep = self.resumable  # else deleted when it ends
                    stored = await conn.start(sid, subscriptions, [message], owner=self.owner, keep=keep)
                else:
                    stored = await conn.publish(sid, [message])
                first = await self._fetch_readers(stored)
        except Exception as exc:  # the store failed
            self._fail(exc)
            return
        if conn.lease == math.inf or self.capacity is not None:  # a worker renews for all its runs
            await self._drive_to_idle(first)
            return
        with anyio.CancelScope() as scope:
            self._scope = scope  # what a failed renewal cancels
            async with renewing(self._renew_leases, conn.lease / 3):
                await self._drive_to_idle(first)

    async def _drive_to_idle(self, first: list[tuple[Step, Delivery]]) -> None:
        """Run ``first`` and what follows: alone in this task while one delivery
        at a time is ready, then in a task group."""
        try:
            ready = await self._drive_alone(first)
        except Exception as exc:  # a step, or the store outside any step, failed
            self._fail(exc)
            return
        if ready is None:
            return
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self._drive(ready)
            except Exception as exc:  # the store failed outside any step
                self._fail(exc)

    def failure_record(self, exc: BaseException) -> dict[str, Any]:
        """How this run failed, for a client of workers: where (when a step
        failed) and what."""
        process, topic = self.failed_at or (None, None)
        return {"process": process, "topic": topic, **describe(exc)}

    async def _renew_leases(self, first_wait: float) -> None:
        """Renew every ``lease / 3``, the first time after ``first_wait``; ride
        out a failing store until the lease would run out, then fail the run
        with the store's error."""
        lease = self.conn.lease
        interval = lease / 3
        renewed = anyio.current_time() - (interval - first_wait)  # when the leases were taken
        wait = first_wait
        while True:
            await anyio.sleep(wait)
            try:
                await self.conn.renew(self.state_id, self.owner)
            except ConnectionFailedError as exc:
                retry = min(interval, 0.5)
                if anyio.current_time() - renewed + retry >= lease:
                    self._fail(exc)
                    return
                _log.info("renewing the leases of state id %r failed, retrying: %s", self.state_id, exc)
                wait = retry
            except Exception as exc:
                self._fail(exc)
                return
            else:
                renewed = anyio.current_time()
                wait = interval

    async def _drive_alone(self, ready: list[tuple[Step, Delivery]]) -> list[tuple[Step, Delivery]] | None:
        """Run deliveries one at a time in this task while no more than one is
        ready (a chain needs no task group); hand over to ``_drive`` the ready
        ones once there are several. None: the run went idle."""
        hops = 0
        while True:
            if len(ready) > 1:
                return ready
            if ready:
                ready = await self._handle(*ready[0])
                hops += 1
                if hops % _HOPS_BETWEEN_CHECKPOINTS == 0:
                    await checkpoint()
                continue
            found = await self._ready_at_idle()
            if found is None:
                return None
            ready = found

    async def _drive(self, ready: list[tuple[Step, Delivery]]) -> None:
        """Run ``ready`` (the last one in this task), then whatever the
        connection reports outstanding, until the run is idle."""
        while self._failure is None:
            if ready:
                for extra in ready[:-1]:
                    self._start(*extra)
                self._active += 1
                await self._work(*ready[-1])
                ready = []
                continue
            if self._active:
                self._quiet = anyio.Event()
                await self._quiet.wait()
                if not self._more:
                    continue
                self._more = False
            found = await self._ready_at_idle()
            if found is None:
                return
            ready = found

    async def _ready_at_idle(self) -> list[tuple[Step, Delivery]] | None:
        """What the connection has outstanding for this run, fetched, once no
        task of it is busy (or a capped fetch left some behind): subscribers
        first, joins only when nothing else is left. Waits for a change when
        all of it is held elsewhere. None: the run is idle."""
        plan, conn, sid = self.plan, self.conn, self.state_id
        counts, self._counts = self._counts, None
        if counts is None:
            counts = await conn.outstanding(sid, plan.names)
        waiting = [s for s in plan.subscribers_all if counts[s.name]]
        if not waiting:
            waiting = [s for s in plan.joins if counts[s.name]]
            if not waiting:
                return None
        ready: list[tuple[Step, Delivery]] = []
        for step in waiting:
            ready.extend((step, d) for d in await self._fetch(step))
        if not ready and not self._active:
            await conn.wait_for_change(sid, self.settings.poll_interval)
        return ready

    async def _fetch(self, step: Step, passed: Delivery | None = None) -> list[Delivery]:
        """Deliveries of ``step`` for this run, as many as a worker can start.
        ``passed``: a delivery of ``step`` its predicate rejected, acked in the
        same call (and so in the same round trip where the store allows)."""
        self._fetched = True
        capacity = self.capacity
        limit = None if capacity is None else max(1, int(capacity.limiter.available_tokens))
        if passed is None:
            deliveries = await self.conn.fetch(self.state_id, step.name, owner=self.owner, limit=limit)
        else:
            fetched = await self.conn.ack_and_fetch(passed, owner=self.owner, limit=limit)
            self._held -= 1
            if fetched is None:
                _log.info(
                    "ack of %r refused: another driver of state id %r holds that delivery now",
                    step.name,
                    self.state_id,
                )
                return []
            deliveries = fetched
        self._held += len(deliveries)
        if capacity is None or limit is None:
            return deliveries
        if len(deliveries) >= limit and not step.join:
            # capped: is more waiting? (a single delivery at one free slot is the usual case)
            waiting = await self.conn.outstanding(self.state_id, [step.name])
            if waiting[step.name] <= len(deliveries):
                return deliveries
            self._more = True
            now = time.monotonic()
            if now - self._called_for_help >= _HELP_INTERVAL:
                self._called_for_help = now
                await capacity.call_for_help(self.state_id)
        return deliveries

    def _start(self, step: Step, delivery: Delivery) -> None:
        """Queue ``delivery`` for the next task of this run that is free, and make
        sure that a task is started for it as soon as the event loop gets
        control: then every task is waiting, and it must not wait for them."""
        self._queue.append((step, delivery))
        if not self._spawning:  # not counted as active: tasks drain the queue before they end
            assert self._tg is not None
            self._spawning = True
            self._tg.start_soon(self._spawn_queued)

    async def _spawn_queued(self) -> None:
        """Start a task for each delivery still queued. Deliveries whose steps
        finish without waiting are taken by tasks already running, so a
        fan-out of fast steps starts no task per delivery."""
        queue, tg = self._queue, self._tg
        assert tg is not None
        while self._pausing and queue:
            await checkpoint()  # a task only let others run: it goes on taking the queue
        self._spawning = False
        while queue:
            self._active += 1
            tg.start_soon(self._work, *queue.popleft())

    async def _work(self, step: Step, delivery: Delivery) -> None:
        hops = 0
        queue = self._queue
        try:
            while True:
                follow = await self._handle(step, delivery)
                if follow:
                    for extra in follow[:-1]:
                        self._start(*extra)
                    step, delivery = follow[-1]
                elif queue:  # take a queued delivery no task has started yet
                    step, delivery = queue.popleft()
                else:
                    return
                hops += 1
                if hops % _HOPS_BETWEEN_CHECKPOINTS == 0:
                    self._pausing += 1
                    try:
                        await checkpoint()
                    finally:
                        self._pausing -= 1
        except Exception as exc:
            self._fail(exc)
        finally:
            self._done_one()

    def _done_one(self) -> None:
        self._active -= 1
        if (not self._active or self._more) and self._quiet is not None:
            self._quiet.set()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self._scope is not None:
            self._scope.cancel()
