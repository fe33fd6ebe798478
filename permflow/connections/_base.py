"""The connection protocol: everything the engine asks of a store.

A connection owns the truth about a run (state id): the log of messages, the
cursor of every process on every topic it reads, and which deliveries are in
flight and with whom. The engine owns nothing durable; it fetches deliveries,
runs steps, and commits each delivery's outputs together with its ack.

Owners are opaque strings naming one live driver (one run of one PubSub, or
one worker). A delivery belongs to its owner until it is committed, released,
or (for stores that outlive processes) its lease expires.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

import anyio

from .._message import Delivery, Message, MessageList
from .._serialization import JsonSerializer, Serializer
from ._memory_cache import MemoryCache

__all__ = ["Claim", "Progress", "PubSubConnection", "Subscription"]

_lazy = threading.Lock()


@dataclass(frozen=True, slots=True)
class Subscription:
    """Process ``process`` reads ``topic``: once per message, or joined."""

    process: str
    topic: str
    join: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A state id announced to workers, held by one worker until ``finish``."""

    state_id: str
    handle: object = None
    #: The announcement was a worker calling others in (``announce(help=True)``).
    help: bool = False


class Progress(NamedTuple):
    """Where a run stands, as a client of workers sees it."""

    messages: list[Message]
    outstanding: dict[str, int]
    failure: dict[str, object] | None


class PubSubConnection(ABC):
    """The async interface between the engine and a store.

    Implementations must pass ``permflow.testing.ConnectionSuite``.
    Every method may raise ``ConnectionFailedError`` when the store cannot be
    reached.
    """

    #: Seconds after which deliveries held by a silent owner may be reclaimed
    #: by ``fetch``. ``math.inf`` for stores that die with their owners.
    lease: float

    #: How cached step results (``Runnable.with_cache``) are turned into bytes.
    cache_serializer: Serializer = JsonSerializer()
    _cache_store: MemoryCache | None = None

    @abstractmethod
    async def register(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        """Declare readers of ``state_id``. A process seen for the first time
        starts at the beginning of its topic (it will see earlier messages).
        Registering again is a no-op. Raises ``DefinitionError`` if a known
        process name is registered with another topic or mode."""

    @abstractmethod
    async def publish(self, state_id: str, messages: Sequence[Message]) -> list[Message]:
        """Store ``messages`` (not caused by any delivery); return them with ids.
        Raises ``SerializationError`` (storing nothing) for unstorable values."""

    async def start(
        self,
        state_id: str,
        subscriptions: Sequence[Subscription],
        messages: Sequence[Message],
        *,
        owner: str | None,
        keep: bool = True,
    ) -> list[Message]:
        """``register`` then ``publish``: the beginning of a run that ``owner``
        drives (None: nobody here, as for a client of workers). A connection
        may do both in one round trip and fetch, for ``owner``, what
        ``messages`` gave their readers (its next ``fetch`` of them then costs
        nothing). ``keep=False``: the caller deletes the
        state id when the run ends, so a connection need not tidy up its
        finished state. Raises what those two raise; on a ``DefinitionError``,
        nothing is stored."""
        await self.register(state_id, subscriptions)
        return await self.publish(state_id, messages)

    def assume_registered(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:  # noqa: B027
        """Note that ``subscriptions`` are registered for ``state_id`` (by a
        worker's client, say), sending nothing: a connection may then fetch
        ahead for those processes and count them, as after ``register``."""

    @abstractmethod
    async def fetch(
        self, state_id: str, process: str, *, owner: str, limit: int | None = None
    ) -> list[Delivery]:
        """Hand ``owner`` the deliveries ``process`` has not finished: released or
        lease-expired ones first, then new messages, in publish order. A join
        process gets all of them as one delivery. Raises ``KeyError`` if the
        process is not registered."""

    @abstractmethod
    async def commit(
        self, delivery: Delivery, messages: Sequence[Message], *, owner: str
    ) -> list[Message] | None:
        """Atomically store ``messages`` and ack ``delivery``. Returns the stored
        messages, or None (storing nothing) if ``owner`` no longer holds the
        delivery. Raises ``SerializationError`` (storing nothing) for
        unstorable values."""

    async def ack_and_fetch(
        self, delivery: Delivery, *, owner: str, limit: int | None = None
    ) -> list[Delivery] | None:
        """Ack ``delivery`` with no outputs (its process rejected it: a filtered
        subscription), then ``fetch`` the process's next deliveries for
        ``owner`` (``limit`` as for ``fetch``). Returns None, acking and
        fetching nothing, if ``owner`` no longer holds the delivery (as
        ``commit`` refuses). Stores that can should do both in one round trip;
        this default makes two calls."""
        if await self.commit(delivery, [], owner=owner) is None:
            return None
        return await self.fetch(delivery.state_id, delivery.process, owner=owner, limit=limit)

    async def charge(self, delivery: Delivery, *, owner: str) -> bool:
        """Count ``delivery.attempt`` against a suspect delivery (see
        ``Delivery.suspect``) right before its step starts, so that a crash
        during that step is charged to it alone. False if ``owner`` no longer
        holds it. Stores whose fetch never returns suspects keep this default."""
        return True

    @abstractmethod
    async def release(self, state_id: str, owner: str) -> None:
        """Hand back every delivery of ``state_id`` held by ``owner`` so that the
        next ``fetch`` redelivers it."""

    async def renew(self, state_id: str, owner: str) -> None:  # noqa: B027
        """Keep the leases of ``owner``'s deliveries alive (stores with leases)."""

    @abstractmethod
    async def outstanding(self, state_id: str, processes: Sequence[str]) -> dict[str, int]:
        """For each process: messages it has not yet acked (in flight or not
        yet fetched). Unknown processes count 0."""

    @abstractmethod
    async def apeek(self, state_id: str) -> list[Message]:
        """Every stored message of ``state_id``, in global publish order."""

    @abstractmethod
    async def wait_for_change(self, state_id: str, max_seconds: float) -> None:
        """Return when ``state_id`` may have changed (a commit, publish or
        release), or after ``max_seconds``."""

    @abstractmethod
    async def adelete(self, state_id: str) -> None:
        """Forget everything about ``state_id``. Deleting an unknown id is a no-op."""

    # -- cached step results: used by ``Runnable.with_cache``.
    # Optional: these defaults keep them in this process's memory (a bounded LRU).

    async def cache_get(self, name: str, key: str) -> bytes | None:
        """The bytes stored under ``key`` for the cached step ``name``, or None
        if there are none (never stored, expired, forgotten or evicted)."""
        return self._default_cache().get(name, key)

    async def cache_set(self, name: str, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` under ``key`` for the cached step ``name``, replacing
        what was there; it expires after ``ttl`` seconds (None: never). Stores
        may forget entries earlier (a bounded store evicts the least recently
        used)."""
        self._default_cache().set(name, key, value, ttl)

    async def aclear_cache(self, name: str | None = None) -> None:
        """Forget the cached results of the step ``name``, or of every step."""
        self._default_cache().clear(name)

    def clear_cache(self, name: str | None = None) -> None:
        """Sync twin of ``aclear_cache``."""
        from .._portal import run_sync

        run_sync(self.aclear_cache, name)

    def _default_cache(self) -> MemoryCache:
        store = self._cache_store
        if store is None:
            with _lazy:
                if self._cache_store is None:
                    self._cache_store = MemoryCache()
                store = self._cache_store
        return store

    async def read_log(self, state_id: str, after: str | None) -> list[Message]:
        """Messages of ``state_id`` stored after the one with id ``after``
        (all of them when ``after`` is None), in publish order."""
        log = await self.apeek(state_id)
        if after is None:
            return log
        for i, message in enumerate(log):
            if message.id == after:
                return log[i + 1 :]
        return log

    async def progress(self, state_id: str, after: str | None, processes: Sequence[str]) -> Progress:
        """New log messages after ``after``, the outstanding counts of
        ``processes`` and the recorded failure, in one call. Every message
        stored before the counts were read is included (stores may return a
        first page only: up to 1,000 messages; read again from the last)."""
        counts = await self.outstanding(state_id, processes)
        failure = await self.failure(state_id)
        return Progress(await self.read_log(state_id, after), counts, failure)

    # -- work distribution: used by ``permflow worker`` and ``PubSub.with_workers()``.
    # Optional: connections that do not support workers keep these defaults.

    async def announce(self, state_id: str, *, help: bool = False) -> None:
        """Tell workers that ``state_id`` has work. A client's announcement
        clears the failure and stop marks; a worker calling others in
        (``help=True``) keeps them. Raises ``NotImplementedError`` if the
        connection has no workers."""
        raise self._no_workers()

    async def claim(self, worker: str, *, limit: int, max_seconds: float) -> list[Claim]:
        """Up to ``limit`` announced state ids for ``worker`` to drive: those of
        workers silent for ``lease`` first, then new ones. Waits up to
        ``max_seconds`` when there are none."""
        raise self._no_workers()

    async def renew_claims(self, worker: str) -> None:  # noqa: B027
        """Keep ``worker``'s claims alive (stores with leases)."""

    async def finish(self, claim: Claim, *, hand_back: bool = False) -> None:
        """Done with ``claim``; with ``hand_back`` another worker may take it now."""
        raise self._no_workers()

    async def mark_failed(self, state_id: str, record: dict[str, object]) -> None:
        """Record that the run of ``state_id`` failed (JSON-compatible ``record``)."""
        raise self._no_workers()

    async def failure(self, state_id: str) -> dict[str, object] | None:
        """The failure recorded for ``state_id`` since its last announcement."""
        raise self._no_workers()

    async def request_stop(self, state_id: str) -> None:
        """Ask the workers driving ``state_id`` to stop it (a client left early)."""
        raise self._no_workers()

    async def heartbeat(self, worker: str, *, alive: bool = True) -> None:
        """Record that ``worker`` is alive now (``alive=False``: it stopped)."""
        raise self._no_workers()

    async def live_workers(self, within: float) -> list[str]:
        """Workers whose last heartbeat is at most ``within`` seconds old."""
        raise self._no_workers()

    async def stop_requested(self, state_id: str) -> bool:
        """Whether a stop was requested since the last announcement (or the last
        ``register``). A stopped run's commits are refused."""
        raise self._no_workers()

    async def wait_for_stop_requests(self, after: object, max_seconds: float) -> object:
        """Return when a stop may have been requested for any state id since the
        cursor ``after`` (None at first), or after ``max_seconds``; the cursor to
        pass next time. This default only waits: workers then notice stop
        requests within ``max_seconds``."""
        await anyio.sleep(max_seconds)
        return after

    def _no_workers(self) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} does not support workers: use a connection that does "
            "(InMemoryPubSubConnection in one process, RedisPubSubConnection across processes)"
        )

    def peek(self, state_id: str) -> list[Message]:
        """Sync twin of ``apeek`` (runs on permflow's background loop). The list
        is drawn as a table in Jupyter."""
        from .._portal import run_sync

        messages = run_sync(self.apeek, state_id)
        return messages if isinstance(messages, MessageList) else MessageList(messages)

    def delete(self, state_id: str) -> None:
        """Sync twin of ``adelete``."""
        from .._portal import run_sync

        run_sync(self.adelete, state_id)

    async def aclose(self) -> None:  # noqa: B027
        """Release the connection's resources."""

    async def __aenter__(self) -> PubSubConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
