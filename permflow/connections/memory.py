"""The embedded default connection: everything in this process's memory."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import final

import anyio

from .._errors import DefinitionError
from .._message import Delivery, Message, MessageList
from .._serialization import Serializer, resolve_serializer
from ._base import Claim, PubSubConnection, Subscription
from ._memory_cache import DEFAULT_CACHE_SIZE, MemoryCache

__all__ = ["InMemoryPubSubConnection"]


#: Waiters on other threads (or event loops) are not woken directly; they wait
#: at most this long before looking again.
_CROSS_THREAD_POLL = 0.05


def _wake(waiters: list[tuple[int, anyio.Event]]) -> list[tuple[int, anyio.Event]]:
    """Set the events of this thread's waiters; return the others'."""
    if not waiters:
        return waiters
    me = threading.get_ident()
    for thread, event in waiters:
        if thread == me:
            event.set()
    return [w for w in waiters if w[0] != me]


class _Pending:
    __slots__ = ("attempts", "owner")

    def __init__(self, owner: str | None, attempts: int) -> None:
        self.owner = owner
        self.attempts = attempts


class _Group:
    """One process's view of its topic: a cursor and what is in flight."""

    __slots__ = ("cursor", "free", "join", "pending", "topic")

    def __init__(self, topic: str, join: bool) -> None:
        self.topic = topic
        self.join = join
        self.cursor = 0
        self.pending: dict[int, _Pending] = {}
        self.free = 0  # pending entries nobody holds (released): a fetch scans only if any


class _State:
    """One state id: its log, its topics, and each registered process's
    subscription (``readers``) and progress (``groups``, made on first use:
    a run of a long chain need not make one for each process up front)."""

    __slots__ = ("groups", "log", "readers", "topics", "waiters")

    def __init__(self) -> None:
        self.log: list[Message] = []
        self.topics: dict[str, list[Message]] = {}
        self.readers: dict[str, Subscription] = {}
        self.groups: dict[str, _Group] = {}
        self.waiters: list[tuple[int, anyio.Event]] = []

    def group(self, process: str) -> _Group:
        """The progress of registered ``process`` (KeyError if it is not)."""
        group = self.groups.get(process)
        if group is None:
            sub = self.readers[process]
            group = self.groups[process] = _Group(sub.topic, sub.join)
        return group


@final
class InMemoryPubSubConnection(PubSubConnection):
    """Keeps runs in memory. Values are stored by reference, never copied.

    Safe to share between threads and event loops. State of a state id lives
    until ``delete`` (PubSub deletes the state of runs it named itself once
    they finish).

    Cached step results (``Runnable.with_cache``) are kept as bytes made by
    ``cache_serializer`` (``"json"``, or ``"pickle"`` for any picklable
    result), at most ``cache_size`` of them (10,000 by default): storing one
    more forgets the least recently used.
    """

    lease = math.inf

    def __init__(
        self, *, cache_size: int = DEFAULT_CACHE_SIZE, cache_serializer: str | Serializer = "json"
    ) -> None:
        self._cache_store = MemoryCache(cache_size)
        self.cache_serializer = resolve_serializer(cache_serializer)
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()
        # work distribution (workers in this process)
        self._announced: deque[tuple[int, str, bool]] = deque()
        self._claimed: dict[int, tuple[str, str]] = {}
        self._claim_ids = itertools.count(1)
        self._failed: dict[str, dict[str, object]] = {}
        self._stopping: set[str] = set()
        self._stops = 0  # stop requests so far: the cursor of wait_for_stop_requests
        self._heartbeats: dict[str, float] = {}
        self._stop_waiters: list[tuple[int, anyio.Event]] = []
        self._claim_waiters: list[tuple[int, anyio.Event]] = []

    def _state(self, state_id: str) -> _State:
        state = self._states.get(state_id)
        if state is None:
            state = self._states[state_id] = _State()
        return state

    async def register(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        with self._lock:
            self._stopping.discard(state_id)  # a run starting here is no longer stopped
            state = self._state(state_id)
            readers = state.readers
            if not readers:  # a fresh state id: the usual case
                readers.update((sub.process, sub) for sub in subscriptions)
                if len(readers) == len(subscriptions):
                    return
                readers.clear()
            for sub in subscriptions:
                known = readers.get(sub.process)
                if known is None:
                    readers[sub.process] = sub
                elif (known.topic, known.join) != (sub.topic, sub.join):
                    raise DefinitionError(
                        f"process {sub.process!r} is registered in state {state_id!r} as "
                        f"reading topic {known.topic!r}; it cannot now read {sub.topic!r}. "
                        "Give the new chain another name."
                    )

    def _store(self, state: _State, state_id: str, messages: Sequence[Message]) -> list[Message]:
        stored = []
        log, topics = state.log, state.topics
        for m in messages:
            msg = Message(m.topic, m.value, state_id, m.published_at, str(len(log)), m.depth, m.trail)
            log.append(msg)
            per_topic = topics.get(m.topic)
            if per_topic is None:
                topics[m.topic] = [msg]
            else:
                per_topic.append(msg)
            stored.append(msg)
        return stored

    def _notify(self, state: _State) -> None:
        if state.waiters:
            state.waiters = _wake(state.waiters)

    async def publish(self, state_id: str, messages: Sequence[Message]) -> list[Message]:
        with self._lock:
            state = self._state(state_id)
            stored = self._store(state, state_id, messages)
            self._notify(state)
            return stored

    async def fetch(
        self, state_id: str, process: str, *, owner: str, limit: int | None = None
    ) -> list[Delivery]:
        with self._lock:
            state = self._states.get(state_id)
            if state is None:
                return []
            return self._fetch(state, state_id, process, owner, limit)

    def _fetch(
        self, state: _State, state_id: str, process: str, owner: str, limit: int | None
    ) -> list[Delivery]:
        """Hand ``owner`` what ``process`` has not finished (under the lock)."""
        group = state.groups.get(process) or state.group(process)
        messages = state.topics.get(group.topic, ())
        if not group.free and not group.join and limit is None:
            # only new messages, each its own delivery (the hot path)
            cursor, end = group.cursor, len(messages)
            if cursor == end:
                return []
            group.cursor = end
            held = group.pending
            fresh = []
            for p in range(cursor, end):
                held[p] = _Pending(owner, 1)
                fresh.append(Delivery(state_id, process, (messages[p],), 1, (p,)))
            return fresh
        positions: list[int] = []
        if group.free:
            for position, pending in group.pending.items():
                if pending.owner is None:
                    pending.owner = owner
                    pending.attempts += 1
                    positions.append(position)
            group.free = 0
        while group.cursor < len(messages):
            group.pending[group.cursor] = _Pending(owner, 1)
            positions.append(group.cursor)
            group.cursor += 1
        if not positions:
            return []
        if group.join:
            attempt = max(group.pending[p].attempts for p in positions)
            batch = tuple(messages[p] for p in positions)
            return [Delivery(state_id, process, batch, attempt, tuple(positions))]
        if limit is not None and len(positions) > limit:
            for p in positions[limit:]:
                group.pending[p].owner = None
                group.free += 1
                group.pending[p].attempts -= 1
            positions = positions[:limit]
        return [
            Delivery(state_id, process, (messages[p],), group.pending[p].attempts, (p,)) for p in positions
        ]

    async def commit(
        self, delivery: Delivery, messages: Sequence[Message], *, owner: str
    ) -> list[Message] | None:
        with self._lock:
            state = self._ack(delivery, owner)
            if state is None:
                return None
            stored = self._store(state, delivery.state_id, messages)
            self._notify(state)
            return stored

    async def ack_and_fetch(
        self, delivery: Delivery, *, owner: str, limit: int | None = None
    ) -> list[Delivery] | None:
        with self._lock:
            state = self._ack(delivery, owner)
            if state is None:
                return None
            self._notify(state)
            return self._fetch(state, delivery.state_id, delivery.process, owner, limit)

    def _ack(self, delivery: Delivery, owner: str) -> _State | None:
        """Ack ``delivery`` if ``owner`` holds it (under the lock); its state, else None."""
        state = self._states.get(delivery.state_id)
        if state is None or delivery.state_id in self._stopping:
            return None  # a stopped run (its client left) stores nothing more
        group = state.groups.get(delivery.process)
        if group is None:
            return None
        pending = group.pending
        for position in delivery.handle:
            entry = pending.get(position)
            if entry is None or entry.owner != owner:
                return None
        for position in delivery.handle:
            del pending[position]
        return state

    async def release(self, state_id: str, owner: str) -> None:
        with self._lock:
            state = self._states.get(state_id)
            if state is None:
                return
            for group in state.groups.values():
                for entry in group.pending.values():
                    if entry.owner == owner:
                        entry.owner = None
                        group.free += 1
            self._notify(state)

    async def outstanding(self, state_id: str, processes: Sequence[str]) -> dict[str, int]:
        with self._lock:
            state = self._states.get(state_id)
            counts = dict.fromkeys(processes, 0)
            if state is None:
                return counts
            groups, readers, topics = state.groups, state.readers, state.topics
            for name in processes:
                group = groups.get(name)
                if group is not None:
                    backlog = len(topics.get(group.topic, ())) - group.cursor
                    counts[name] = backlog + len(group.pending)
                elif name in readers:  # registered, never fetched: all of its topic waits
                    counts[name] = len(topics.get(readers[name].topic, ()))
            return counts

    async def apeek(self, state_id: str) -> list[Message]:
        with self._lock:
            state = self._states.get(state_id)
            return MessageList(state.log if state else ())

    async def wait_for_change(self, state_id: str, max_seconds: float) -> None:
        event = anyio.Event()
        with self._lock:
            self._state(state_id).waiters.append((threading.get_ident(), event))
        with anyio.move_on_after(min(max_seconds, _CROSS_THREAD_POLL)):
            await event.wait()

    async def adelete(self, state_id: str) -> None:
        with self._lock:
            self._states.pop(state_id, None)
            self._failed.pop(state_id, None)
            self._stopping.discard(state_id)

    # -- work distribution ---------------------------------------------------

    async def announce(self, state_id: str, *, help: bool = False) -> None:
        with self._lock:
            if not help:
                self._failed.pop(state_id, None)
                self._stopping.discard(state_id)
            self._announced.append((next(self._claim_ids), state_id, help))
            self._claim_waiters = _wake(self._claim_waiters)

    async def claim(self, worker: str, *, limit: int, max_seconds: float) -> list[Claim]:
        with anyio.move_on_after(max_seconds):
            while True:
                with self._lock:
                    claims: list[Claim] = []
                    while self._announced and len(claims) < limit:
                        number, state_id, help = self._announced.popleft()
                        self._claimed[number] = (worker, state_id)
                        claims.append(Claim(state_id, number, help))
                    if not claims:
                        event = anyio.Event()
                        self._claim_waiters.append((threading.get_ident(), event))
                if claims:
                    return claims
                with anyio.move_on_after(_CROSS_THREAD_POLL):
                    await event.wait()
        return []

    async def finish(self, claim: Claim, *, hand_back: bool = False) -> None:
        with self._lock:
            entry = self._claimed.pop(claim.handle, None)  # type: ignore[call-overload]
            if hand_back and entry is not None:
                self._announced.appendleft((next(self._claim_ids), claim.state_id, claim.help))
                self._claim_waiters = _wake(self._claim_waiters)

    async def mark_failed(self, state_id: str, record: dict[str, object]) -> None:
        with self._lock:
            self._failed[state_id] = dict(record)
            state = self._states.get(state_id)
            if state is not None:
                self._notify(state)

    async def failure(self, state_id: str) -> dict[str, object] | None:
        with self._lock:
            return self._failed.get(state_id)

    async def request_stop(self, state_id: str) -> None:
        with self._lock:
            self._stopping.add(state_id)
            self._stops += 1
            self._stop_waiters = _wake(self._stop_waiters)

    async def wait_for_stop_requests(self, after: object, max_seconds: float) -> object:
        event = anyio.Event()
        with self._lock:
            if after is not None and after != self._stops:
                return self._stops
            self._stop_waiters.append((threading.get_ident(), event))
        with anyio.move_on_after(min(max_seconds, _CROSS_THREAD_POLL)):
            await event.wait()
        with self._lock:
            return self._stops

    async def heartbeat(self, worker: str, *, alive: bool = True) -> None:
        with self._lock:
            if alive:
                self._heartbeats[worker] = time.monotonic()
            else:
                self._heartbeats.pop(worker, None)

    async def live_workers(self, within: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return sorted(w for w, beat in self._heartbeats.items() if now - beat <= within)

    async def stop_requested(self, state_id: str) -> bool:
        with self._lock:
            return state_id in self._stopping

    def __repr__(self) -> str:
        count = len(self._states)
        return f"<InMemoryPubSubConnection: {count} state id{'' if count == 1 else 's'} kept>"

    def state_ids(self) -> list[str]:
        """State ids currently kept (for inspection and retention tests)."""
        with self._lock:
            return list(self._states)
