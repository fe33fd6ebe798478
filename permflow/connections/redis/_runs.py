"""The run protocol of the Redis connection: register, publish, fetch, commit, ack_and_fetch,
release, renew, outstanding, peek, wait for change, delete.

Each state change is one script (``_scripts``). A commit also fetches,
for its owner, the readers of what it stored: the fetch the engine makes next
then costs no round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, NoReturn

from ..._errors import DefinitionError
from ..._message import Delivery, Message, MessageList
from ..._serialization import CorruptEntryError
from .._base import Subscription
from . import _codec as codec
from . import _scripts as lua
from ._client import Bound
from ._core import RedisCore, forget

__all__ = ["RedisRuns"]

_MAX_LEARNED = 4096
# (connection id, state key, last change id seen) - read by wait_for_change.
_seen: ContextVar[tuple[int, str, bytes] | None] = ContextVar("permflow_redis_seen", default=None)


class RedisRuns(RedisCore):
    """The run protocol of ``RedisPubSubConnection``."""

    async def register(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        if not subscriptions:
            return
        keys, args = self._keys(state_id)
        for sub in subscriptions:
            args += (sub.process, ("j" if sub.join else "s") + sub.topic)
        if self._unreleased:
            await self._release_left(state_id)
        bound = await self._ready()
        self._learn_readers(state_id, subscriptions)
        with self._failures(f"registering processes of state id {state_id!r}"):
            topics = [sub.topic for sub in subscriptions]
            conflict = await self._call(bound, "REGISTER", state_id, [*keys, f"{args[0]}:stop"], args, topics)
        if conflict:
            _refuse(state_id, conflict)

    async def start(
        self,
        state_id: str,
        subscriptions: Sequence[Subscription],
        messages: Sequence[Message],
        *,
        owner: str | None,
        keep: bool = True,
    ) -> list[Message]:
        if not keep:  # deleted when it ends: not made compact when it finishes
            with self._lock:
                if len(self._fleeting) >= _MAX_LEARNED:
                    self._fleeting.pop(next(iter(self._fleeting)))
                self._fleeting[state_id] = None
        if not subscriptions or not messages:
            return await super().start(state_id, subscriptions, messages, owner=owner)
        encoded = self._encode(messages)
        keys, args = self._keys(state_id)
        args.append(len(subscriptions))
        for sub in subscriptions:
            args += (sub.process, ("j" if sub.join else "s") + sub.topic)
        args += encoded
        if self._unreleased:
            await self._release_left(state_id)
        bound = await self._ready()
        self._learn_readers(state_id, subscriptions)
        follow = self._followers(state_id, messages) if owner is not None else ()
        args += (owner or "", self._lease_ms, lua.RELEASED, len(follow), *follow)
        with self._failures(f"starting a run of state id {state_id!r}"):
            topics = [*(sub.topic for sub in subscriptions), *(m.topic for m in messages)]
            reply = await self._call(bound, "START", state_id, [*keys, f"{args[0]}:stop"], args, topics)
        if not isinstance(reply[0], list):
            _refuse(state_id, reply)
        if owner is not None:
            self._keep_ahead(bound, state_id, owner, follow, reply)
        return codec.stored(state_id, messages, reply[0])

    def _followers(self, state_id: str, messages: Sequence[Message]) -> tuple[str, ...]:
        """The processes a driver fetches for next, after storing ``messages``: the
        subscribers of their topics registered here (none if not known)."""
        readers = self._readers.get(state_id)
        if not readers or not messages:
            return ()
        topics = dict.fromkeys(m.topic for m in messages)
        return tuple(dict.fromkeys(p for t in topics for p in readers.get(t, ())))

    @staticmethod
    def _keep_ahead(
        bound: Bound, state_id: str, owner: str, follow: tuple[str, ...], reply: list[Any]
    ) -> None:
        """Keep the fetch replies ``reply[1:]`` (one per process of ``follow``) for
        the fetches ``owner`` makes next."""
        for k, process in enumerate(follow):
            key = (state_id, process, owner)
            mode, topic_raw, packed = reply[1 + 3 * k], reply[2 + 3 * k], reply[3 + 3 * k]
            earlier = bound.ahead.get(key)
            if earlier is not None and earlier[2]:
                # another call of this owner fetched ahead first: keep both, in order
                packed = bytes(earlier[2]) + bytes(packed or b"")
            bound.ahead[key] = (mode, topic_raw, packed)

    def assume_registered(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        self._learn_readers(state_id, subscriptions)
        with self._lock:  # the keys its scripts declare: none is sent back for more
            self._topics.setdefault(state_id, set()).update(sub.topic for sub in subscriptions)
            if len(self._bounded) >= _MAX_LEARNED and state_id not in self._bounded:
                self._bounded.pop(next(iter(self._bounded)))
            self._bounded[state_id] = None

    def _learn_readers(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        readers: dict[str, tuple[str, ...]] = {}
        for sub in subscriptions:
            if not sub.join:
                readers[sub.topic] = (*readers.get(sub.topic, ()), sub.process)
        names = tuple(dict.fromkeys(sub.process for sub in subscriptions))
        with self._lock:
            known = self._readers.get(state_id, readers)
            if len(self._readers) >= _MAX_LEARNED and state_id not in self._readers:
                del self._readers[next(iter(self._readers))]
            self._readers[state_id] = readers if known == readers else None
            if len(self._names) >= _MAX_LEARNED and state_id not in self._names:
                del self._names[next(iter(self._names))]
            self._names[state_id] = names if self._names.get(state_id, names) == names else None

    async def publish(self, state_id: str, messages: Sequence[Message]) -> list[Message]:
        encoded = self._encode(messages)
        if not messages:
            return []
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(f"publishing to state id {state_id!r}"):
            topics = [m.topic for m in messages]
            ids = await self._call(bound, "PUBLISH", state_id, keys, [*args, *encoded], topics)
        return codec.stored(state_id, messages, ids)

    async def fetch(
        self, state_id: str, process: str, *, owner: str, limit: int | None = None
    ) -> list[Delivery]:
        keys, args = self._keys(state_id)
        bound = self._client()
        ahead = bound.ahead.pop((state_id, process, owner), None)
        if ahead is not None and limit is not None and len(codec.unpack_entries(ahead[2] or b"")) > limit:
            # more than a worker has room for: hand it all back, fetch what fits
            await self._unfetch(bound, state_id, process, owner, codec.text(ahead[1]), ahead[2])
            ahead = None
        if ahead is not None:
            mode, topic_raw, packed = ahead
        else:
            bound = await self._ready()
            args += (process, owner, self._lease_ms, limit or 0, lua.RELEASED)
            # A call cancelled on the wire may still hand deliveries to owner: the
            # run's release hands back everything owner holds when it ends.
            with self._failures(f"fetching for process {process!r} of state id {state_id!r}"):
                mode, topic_raw, packed = await self._call(bound, "FETCH", state_id, keys, args)
        return await self._deliveries(bound, state_id, process, codec.text(mode), topic_raw, packed)

    async def ack_and_fetch(
        self, delivery: Delivery, *, owner: str, limit: int | None = None
    ) -> list[Delivery] | None:
        state_id, process = delivery.state_id, delivery.process
        topic, ids = delivery.handle
        order = sorted(ids, key=codec.id_key)
        keys, args = self._keys(state_id)
        keys += (f"{args[0]}:stop", f"{args[0]}:t:{topic}")
        args += (process, topic, owner, order[0], order[-1], len(ids), *ids)
        args += (self._lease_ms, limit or 0, lua.RELEASED)
        bound = await self._ready()
        with self._failures(f"acking a delivery of process {process!r} of state id {state_id!r}"):
            reply = await self._call(bound, "ACK_FETCH", state_id, keys, args)
        if reply is None:
            return None
        mode, topic_raw, packed = reply
        return await self._deliveries(bound, state_id, process, codec.text(mode), topic_raw, packed)

    async def _deliveries(
        self, bound: Bound, state_id: str, process: str, mode: str, topic_raw: Any, packed: Any
    ) -> list[Delivery]:
        """The deliveries of a FETCH reply (``mode``, topic, packed entries)."""
        if mode == "?":
            raise KeyError(f"process {process!r} is not registered in state id {state_id!r}")
        if not packed:
            return []
        entries = codec.unpack_entries(packed)
        topic = codec.text(topic_raw)
        stream = f"{self._base(state_id)}:t:{topic}"
        messages: list[Message] = []
        bad: list[tuple[Any, CorruptEntryError]] = []
        for entry_id, _, fields in entries:
            try:
                messages.append(self._decode(stream, entry_id, fields, state_id))
            except CorruptEntryError as exc:
                bad.append((entry_id, exc))
        if bad:
            await self._set_aside(bound, state_id, process, topic, entries, bad)
        ids = tuple(codec.text(e[0]) for e in entries)
        attempts = [int(e[1]) for e in entries]  # negative: a suspect's
        if mode == "j":
            most = max(abs(a) for a in attempts)
            suspect = any(a < 0 for a in attempts)
            return [Delivery(state_id, process, tuple(messages), most, (topic, ids), suspect)]
        return [
            Delivery(state_id, process, (m,), abs(a), (topic, (i,)), a < 0)
            for m, a, i in zip(messages, attempts, ids, strict=True)
        ]

    async def _set_aside(
        self,
        bound: Bound,
        state_id: str,
        process: str,
        topic: str,
        entries: list[Any],
        bad: list[tuple[Any, CorruptEntryError]],
    ) -> NoReturn:
        """Ack unreadable entries (so they fail one run, not every run), hand the
        readable ones of the same fetch back as they were, and raise."""
        keys, args = self._keys(state_id)
        skipped = {codec.text(eid) for eid, _ in bad}
        good = [(e[0], abs(int(e[1])) - 1) for e in entries if codec.text(e[0]) not in skipped]
        args += (process, topic, lua.RELEASED, len(bad), *(eid for eid, _ in bad))
        args += (x for pair in good for x in pair)
        stream = f"{args[0]}:t:{topic}"
        with self._failures(f"setting aside unreadable entries of {stream!r}"):
            await self._call(bound, "SKIP", state_id, keys, args, [topic])
        first_id, first = bad[0]
        more = f" ({len(bad) - 1} more like it)" if len(bad) > 1 else ""
        raise CorruptEntryError(
            f"{first}{more}. Process {process!r} of state id {state_id!r} skipped it; it stays in "
            f"the stream for inspection (XRANGE {stream} {codec.text(first_id)} {codec.text(first_id)}). "
            "Invoke again to carry on without it."
        ) from first.__cause__

    async def commit(
        self, delivery: Delivery, messages: Sequence[Message], *, owner: str
    ) -> list[Message] | None:
        encoded = self._encode(messages)
        state_id = delivery.state_id
        topic, ids = delivery.handle
        order = sorted(ids, key=codec.id_key)
        keys, args = self._keys(state_id)
        args += (delivery.process, topic, owner, order[0], order[-1], len(ids), *ids, *encoded)
        follow = self._followers(state_id, messages)
        args += (self._lease_ms, lua.RELEASED, len(follow), *follow)
        # nothing to fetch next: the engine asks what is outstanding next; answer now
        names = () if follow else (self._names.get(state_id) or ())
        args += (len(names), *names, 0 if state_id in self._fleeting else 1)
        # a worker takes no more than its room: ahead, at most what this commit stored
        args.append(len(messages) if state_id in self._bounded else 0)
        bound = await self._ready()
        with self._failures(f"committing for process {delivery.process!r} of state id {state_id!r}"):
            touched = [topic, *(m.topic for m in messages)]
            # A run deleted at its end, without a ttl, is not made compact or refreshed by
            # its commits: they touch only these topics (not all of a 100-step chain's).
            only = self.ttl is None and state_id in self._fleeting
            stop = f"{args[0]}:stop"
            reply = await self._call(bound, "COMMIT", state_id, [*keys, stop], args, touched, only=only)
        if reply is None:
            return None
        self._keep_ahead(bound, state_id, owner, follow, reply)
        if names:
            last, *counts = reply[1:]
            with self._lock:
                if len(self._counted) >= _MAX_LEARNED:
                    self._counted.pop(next(iter(self._counted)), None)
                self._counted[state_id] = (dict(zip(names, counts, strict=True)), last or b"0-0")
        return codec.stored(state_id, messages, reply[0])

    async def charge(self, delivery: Delivery, *, owner: str) -> bool:
        if not delivery.suspect:
            return True
        topic, ids = delivery.handle
        keys, args = self._keys(delivery.state_id)
        args += (delivery.process, topic, owner)
        for entry_id in ids:
            args += (entry_id, delivery.attempt)
        bound = await self._ready()
        doing = f"charging an attempt to process {delivery.process!r} of state id {delivery.state_id!r}"
        with self._failures(doing):
            charged = await self._call(bound, "CHARGE", delivery.state_id, keys, args, [topic])
        return bool(charged == len(ids))

    async def release(self, state_id: str, owner: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        try:
            with self._failures(f"releasing deliveries of state id {state_id!r}"):
                await self._call(bound, "RELEASE", state_id, keys, [*args, owner, lua.RELEASED])
        except BaseException:
            # Not handed back (Redis away, or cancelled on the wire): the next run of
            # this state id on this connection hands them back before it starts, so a
            # resume from here never waits out its own lease.
            with self._lock:
                self._unreleased.setdefault(state_id, set()).add(owner)
            raise
        with self._lock:
            forget(self._unreleased, state_id, owner)

    async def _release_left(self, state_id: str) -> None:
        """Hand back what earlier runs of ``state_id`` here failed to."""
        with self._lock:
            owners = sorted(self._unreleased.get(state_id, ()))
        for owner in owners:
            await self.release(state_id, owner)

    async def renew(self, state_id: str, owner: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(f"renewing leases of state id {state_id!r}"):
            await self._call(bound, "RENEW", state_id, keys, [*args, owner])

    async def outstanding(self, state_id: str, processes: Sequence[str]) -> dict[str, int]:
        keys, args = self._keys(state_id)
        names = list(dict.fromkeys(processes))
        counted = self._counted.pop(state_id, None)
        if counted is not None and counted[0].keys() >= set(names):
            # as the last commit here left them, with no other call of the run since
            known, last = counted
            counts = [known[name] for name in names]
        else:
            bound = await self._ready()
            with self._failures(f"counting outstanding messages of state id {state_id!r}"):
                last, *counts = await bound.run("OUTSTANDING", keys, [*args, *names])
        _seen.set((id(self), args[0], last or b"0-0"))
        return {name: max(0, int(n or 0)) for name, n in zip(names, counts, strict=True)} | {
            p: 0 for p in processes if p not in names
        }

    async def apeek(self, state_id: str) -> list[Message]:
        return MessageList(await self._read_log_from(state_id, "-"))

    async def wait_for_change(self, state_id: str, max_seconds: float) -> None:
        if max_seconds <= 0:
            return
        keys, args = self._keys(state_id)
        seen = _seen.get()
        since = seen[2] if seen is not None and seen[:2] == (id(self), args[0]) else b"$"
        block = self._block_ms(max_seconds)
        bound = await self._ready()
        with self._failures(f"waiting for changes of state id {state_id!r}"):
            reply = await bound.client.xread({keys[4]: since}, count=1, block=block)
        if reply:
            _seen.set((id(self), args[0], reply[0][1][-1][0]))

    async def adelete(self, state_id: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._lock:
            self._readers.pop(state_id, None)
            self._names.pop(state_id, None)
            self._fleeting.pop(state_id, None)
            self._bounded.pop(state_id, None)
        with self._failures(f"deleting state id {state_id!r}"):
            marks = [f"{args[0]}:failed", f"{args[0]}:stop"]
            await self._call(bound, "DELETE", state_id, [*keys, *marks], args)
        with self._lock:
            self._topics.pop(state_id, None)


def _refuse(state_id: str, conflict: list[Any]) -> NoReturn:
    """Raise for a process registered in ``state_id`` with another topic or mode."""
    process, known = codec.text(conflict[0]), codec.text(conflict[1])
    raise DefinitionError(
        f"process {process!r} is registered in state {state_id!r} as reading topic "
        f"{known[1:]!r}{' (join)' if known[0] == 'j' else ''}; it cannot now read another "
        "topic or mode. Give the new chain another name."
    )
