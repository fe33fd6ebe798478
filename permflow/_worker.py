"""Workers: drive the runs of a PubSub for any state id that has work.

A worker claims state ids announced on its connection (by clients of
``PubSub.with_workers()``, or by other workers asking for help), runs each to
idle with the same engine as a local ``invoke``, and finishes the claim. Many
workers share the work: claims go to one worker each, and workers driving the
same state id share its deliveries through the connection. A worker that
dies holds its claims and deliveries only until its lease runs out.

Faults: a worker outlives its store. While the store is unreachable it backs
off (``_outage``) and hands its runs back; when the store returns it claims
again. A run that cannot be driven at all (corrupt keys) is quarantined: marked
failed, logged once, and dropped, while the worker goes on with the others.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio

from ._engine import CLEANUP_SECONDS, Capacity, Run
from ._errors import ConfigError, ConnectionFailedError
from ._failures import describe as _describe
from ._gate import Gate
from ._outage import Outage
from ._serialization import CorruptEntryError
from .connections._base import Claim

if TYPE_CHECKING:
    from ._pubsub import PubSub

__all__ = ["Worker"]

log = logging.getLogger("permflow.worker")

_STOP_POLL_SECONDS = 5.0  # a fallback: stop requests wake the worker at once
_HAND_BACK_SECONDS = 0.05
#: Seconds between a worker's heartbeats; clients count a worker alive for three.
HEARTBEAT_SECONDS = 2.0


class Worker:
    """Runs ``pubsub``'s processes for every announced state id.

    ``concurrency`` bounds both the runs driven at once and the steps running
    at once across them. ``run()`` works until ``stop()`` is called; then it
    takes no new work, gives running runs ``grace`` seconds to finish, and
    cancels and hands back the rest.

    Steps get the PubSub's shared resources, made in this process on first
    use. ``run()`` leaves them open (the PubSub may serve others); close them
    when the worker is done: ``async with pubsub: await worker.run()`` (the
    ``permflow worker`` command does so on shutdown).
    """

    def __init__(
        self,
        pubsub: PubSub,
        *,
        concurrency: int = 10,
        name: str | None = None,
        grace: float = 10.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency!r}")
        self.pubsub = pubsub
        self.connection = pubsub.connection
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}.{os.getpid()}"
        self.grace = grace
        self.runs_done = 0
        self._running = 0
        self._driving: dict[str, int] = {}
        self._runs: dict[Run, anyio.CancelScope] = {}  # runs being driven, for renewal and stops
        self._room = anyio.Event()
        self._stopping: anyio.Event | None = None
        self._stop_asked = False
        # What could not be handed back while the store was away: claims to hand
        # back and (state id, owner) deliveries to release once it answers again.
        self._unfinished: list[tuple[Claim, bool]] = []
        self._unreleased: list[tuple[str, str]] = []
        self._outage = Outage(f"worker {self.name}", log)

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop_asked

    def stop(self) -> None:
        """Stop taking work; running runs get ``grace`` seconds to finish.
        Calling it before ``run()`` has started makes ``run()`` return at once."""
        self._stop_asked = True
        if self._stopping is not None:
            self._stopping.set()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Work until ``stop()``; then finish or hand back what is running."""
        self._stopping = stopping = anyio.Event()
        if self._stop_asked:
            stopping.set()
        runs = anyio.CapacityLimiter(self.concurrency)
        capacity = Capacity(
            anyio.CapacityLimiter(self.concurrency), self._call_for_help, self.connection.mark_failed, Gate()
        )
        outage = self._outage
        log.info("worker %s started (concurrency %d) on %r", self.name, self.concurrency, self.connection)
        async with anyio.create_task_group() as drivers:
            await self._beat()  # clients see this worker from the start
            drivers.start_soon(self._heartbeats)
            if self.connection.lease != math.inf:
                drivers.start_soon(self._renew)
            drivers.start_soon(self._watch_stops)
            task_status.started()
            while not stopping.is_set():
                # claim only what can start now: runs free and step slots free
                free = int(min(runs.available_tokens, capacity.limiter.available_tokens))
                if not free:
                    self._room = anyio.Event()
                    with anyio.move_on_after(0.05):  # step slots free up without a signal
                        await self._room.wait()
                    continue
                try:
                    claimed = await self.connection.claim(self.name, limit=free, max_seconds=0.5)
                except ConnectionFailedError as exc:
                    await outage.failed(exc, stopping)
                    continue
                outage.recovered()
                if self._unfinished or self._unreleased:
                    await self._hand_back_left()
                for claim in claimed:
                    borrower = object()  # a claim can come back equal to one held
                    runs.acquire_on_behalf_of_nowait(borrower)
                    self._running += 1
                    drivers.start_soon(self._drive, claim, capacity, runs, borrower)
            with anyio.move_on_after(self.grace):
                while self._running:
                    self._room = anyio.Event()
                    await self._room.wait()
            drivers.cancel_scope.cancel()
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_SECONDS
            await self._beat(alive=False)
        log.info("worker %s stopped after %d runs", self.name, self.runs_done)

    async def _heartbeats(self) -> None:
        """Tell clients this worker is alive, every ``HEARTBEAT_SECONDS``."""
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            await self._beat()

    async def _beat(self, *, alive: bool = True) -> None:
        try:
            await self.connection.heartbeat(self.name, alive=alive)
        except Exception as exc:  # the store is away: the claim loop reports the outage
            log.debug("worker %s could not send its heartbeat: %r", self.name, exc)

    async def _renew(self) -> None:
        """Keep the claims and the runs' deliveries alive: one task for all runs.
        A failed renewal is tried again next time: the lease outlasts two."""
        while True:
            await anyio.sleep(self.connection.lease / 3)
            try:
                await self.connection.renew_claims(self.name)
                for run in list(self._runs):
                    await self.connection.renew(run.state_id, run.owner)
            except ConnectionFailedError as exc:
                log.debug("worker %s could not renew its leases: %s", self.name, exc)
            except Exception as exc:  # one run's keys are broken: its own driver finds out
                log.debug("worker %s could not renew a lease: %r", self.name, exc)

    async def _watch_stops(self) -> None:
        """Cancel the runs whose client asked to stop (one task for all runs):
        woken by each stop request, and every few seconds in any case."""
        cursor: object = None
        while True:
            try:
                cursor = await self.connection.wait_for_stop_requests(cursor, _STOP_POLL_SECONDS)
            except Exception as exc:  # the store is away: the claim loop reports the outage
                log.debug("worker %s could not wait for stop requests: %r", self.name, exc)
                await anyio.sleep(_STOP_POLL_SECONDS)
            for run, scope in list(self._runs.items()):
                try:
                    asked = not scope.cancel_called and await self.connection.stop_requested(run.state_id)
                except Exception as exc:  # the store is away, or the run's keys are broken
                    log.debug("worker %s could not check for stop requests: %r", self.name, exc)
                    break
                if asked:
                    log.info("worker %s stops state id %s on request", self.name, run.state_id)
                    scope.cancel()

    async def _hand_back_left(self) -> None:
        """Hand back what an outage kept this worker from handing back, so that
        its runs resume now rather than after their leases."""
        unreleased, self._unreleased = self._unreleased, []
        unfinished, self._unfinished = self._unfinished, []
        for sid, owner in unreleased:
            try:
                await self.connection.release(sid, owner)
            except Exception as exc:  # away again, or that run's keys are broken: the lease will do
                log.debug("worker %s could not hand back the deliveries of %s: %r", self.name, sid, exc)
        for claim, hand_back in unfinished:
            try:
                await self.connection.finish(claim, hand_back=hand_back)
            except Exception as exc:
                log.debug("worker %s could not finish its claim on %s: %r", self.name, claim.state_id, exc)

    async def _call_for_help(self, state_id: str) -> None:
        await self.connection.announce(state_id, help=True)

    async def _drive(
        self, claim: Claim, capacity: Capacity, runs: anyio.CapacityLimiter, borrower: object
    ) -> None:
        conn, sid, plan = self.connection, claim.state_id, self.pubsub._plan
        finished = False
        self._driving[sid] = self._driving.get(sid, 0) + 1
        try:
            # a call for help this worker made itself is of no use to it: hand it back
            helping_myself = self._driving[sid] > 1
            try:
                # a call for help for a run its client has left since is of no use either
                stale = claim.help and not helping_myself and await conn.stop_requested(sid)
                counts = {} if helping_myself or stale else await conn.outstanding(sid, plan.names)
                if any(counts.values()):
                    log.debug("worker %s drives state id %s", self.name, sid)
                    await self._run(sid, counts, capacity)
                    self.runs_done += 1
            except ConnectionFailedError as exc:
                # The store went away: the run stays as stored. Back off, then hand the
                # claim back (or let it lapse) so that a worker takes it up when it returns.
                log.info("worker %s hands back state id %s: %s", self.name, sid, exc)
                await self._outage.failed(exc, self._stopping)
                return
            except Exception as exc:
                await self._quarantine(sid, exc)
            if helping_myself:  # hand it back, after a moment so others can take it
                await anyio.sleep(_HAND_BACK_SECONDS)
            finished = not helping_myself
        finally:
            self._driving[sid] -= 1
            if not self._driving[sid]:
                del self._driving[sid]
            runs.release_on_behalf_of(borrower)  # the slot is free: finishing needs none
            self._room.set()
            try:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + CLEANUP_SECONDS
                    await conn.finish(claim, hand_back=not finished)
                if scope.cancelled_caught:  # the store did not answer in time
                    self._unfinished.append((claim, not finished))
            except Exception as exc:  # the store is away: try again when it is back
                log.debug("worker %s could not finish its claim on %s: %r", self.name, sid, exc)
                if isinstance(exc, ConnectionFailedError):
                    self._unfinished.append((claim, not finished))
            finally:
                self._running -= 1
                self._room.set()

    async def _run(self, sid: str, counts: dict[str, int], capacity: Capacity) -> None:
        """Drive ``sid`` to idle; a failed run is marked failed for its client."""
        pubsub = self.pubsub
        run = Run(pubsub._plan, self.connection, sid, pubsub.settings, _ignore, capacity, pubsub.services)
        with anyio.CancelScope() as scope:
            self._runs[run] = scope
            try:
                await run.execute(None, None, counts=counts)
            except (ConnectionFailedError, CorruptEntryError):
                raise  # the store, not the run: handed back or quarantined by the caller
            except Exception as exc:
                record = run.failure_record(exc)
                log.warning("run %s failed on worker %s: %s", sid, self.name, record)
                await self.connection.mark_failed(sid, record)
            finally:
                del self._runs[run]
                if not run.released:
                    self._unreleased.append((sid, run.owner))

    async def _quarantine(self, sid: str, exc: Exception) -> None:
        """``sid`` cannot be driven (its keys are corrupt, say): say so once, mark
        it failed if its keys allow, and let it go. Other runs are untouched."""
        log.warning("worker %s quarantined state id %s: %r", self.name, sid, exc)
        try:
            await self.connection.mark_failed(sid, {"process": None, "topic": None, **_describe(exc)})
        except Exception as mark_exc:
            log.warning("worker %s could not mark state id %s failed: %r", self.name, sid, mark_exc)


def _ignore(message: object) -> None:
    return None
