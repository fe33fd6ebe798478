"""The distributed connection: runs stored in Redis Streams.

Importing this module does not import ``redis``; the client library is loaded
when a connection is first used (install it with ``pip install permflow[redis]``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn, cast, final
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread

from .._errors import ConnectionFailedError, DefinitionError
from .._message import Delivery, Message
from .._serialization import CorruptEntryError, Serializer, resolve_serializer
from . import _redis_scripts as lua
from ._base import Claim, PubSubConnection, Subscription
from ._redis_client import Bound

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CorruptEntryError", "RedisPubSubConnection"]

_FOREVER_MS = 2**62
_SHIELD_SECONDS = 30.0
_MAX_LEARNED = 4096
_GROUP = "workers"
_ENTRY_ID = re.compile(r"\d+(-\d+)?")
# (connection id, state key, last change id seen) - read by wait_for_change.
_seen: ContextVar[tuple[int, str, bytes] | None] = ContextVar("permflow_redis_seen", default=None)


@final
class RedisPubSubConnection(PubSubConnection):
    """Stores runs in Redis (≥ 6.2, no modules; Redis Cluster works).

    ``RedisPubSubConnection.from_url("redis://...")`` keeps one client per
    running event loop, so the same connection serves async code and the sync
    API (which runs on permflow's own loop). ``RedisPubSubConnection(client)``
    uses a ``redis.asyncio.Redis`` you made, which is bound to the event loop it
    first runs on; use it from that loop only.

    asyncio only: redis-py has no trio support. Under trio, use the sync API
    (``invoke``/``stream``) or run your async code on asyncio.

    Deliveries are held under a lease: a driver that goes silent for ``lease``
    seconds (crashed, killed) loses its deliveries to the next ``fetch``. Live
    drivers renew their leases every ``lease / 3`` seconds however long a step
    runs. Values are stored with ``serializer`` (``"json"``, safe; ``"pickle"``
    only if everyone who can write to this Redis is trusted). ``ttl`` (seconds)
    expires a state id after that long without activity. ``max_stream_length``
    trims the log of each state id to about that many entries (``peek`` then
    shows only the latest ones) and trims topic streams only below what every
    reader has finished with (a process registered later then misses what was
    trimmed).

    Workers (``permflow worker``) claim announced state ids from one stream per
    prefix, ``{prefix}:work``, under the same ``lease``: a worker that stops
    renewing loses its claims to the next worker that asks.
    """

    lease: float = 30.0

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "permflow",
        lease: float = 30.0,
        serializer: str | Serializer = "json",
        ttl: float | None = None,
        max_stream_length: int | None = None,
    ) -> None:
        self._configure(prefix, lease, serializer, ttl, max_stream_length)
        kwargs: dict[str, Any] = cast(Any, client).get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ValueError("the redis client must be made with decode_responses=False (values are bytes)")
        self._url: str | None = None
        self._options: dict[str, Any] = {}
        self._given: Redis | None = client
        self._where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "permflow",
        lease: float = 30.0,
        serializer: str | Serializer = "json",
        ttl: float | None = None,
        max_stream_length: int | None = None,
        **client_options: Any,
    ) -> RedisPubSubConnection:
        """Connect lazily to ``url`` (``redis://``, ``rediss://``, ``unix://``,
        with optional ``user:password@``). ``client_options`` go to
        ``redis.asyncio.BlockingConnectionPool.from_url`` (``socket_timeout``,
        ``ssl_ca_certs`` …). Each event loop gets a pool of ``max_connections``
        (100) connections; callers wait for a free one (``timeout``: forever)."""
        if client_options.get("decode_responses"):
            raise ValueError("decode_responses must stay False: values are stored as bytes")
        self = cls.__new__(cls)
        self._configure(prefix, lease, serializer, ttl, max_stream_length)
        self._url, self._options, self._given = url, client_options, None
        self._where = _redact(url)
        return self

    def _configure(
        self,
        prefix: str,
        lease: float,
        serializer: str | Serializer,
        ttl: float | None,
        max_stream_length: int | None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty string without braces, got {prefix!r}")
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds (or math.inf), got {lease!r}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if max_stream_length is not None and max_stream_length < 1:
            raise ValueError(f"max_stream_length must be at least 1 or None, got {max_stream_length!r}")
        self.prefix = prefix
        self.lease = float(lease)
        self.serializer = resolve_serializer(serializer)
        self.ttl = ttl
        self.max_stream_length = max_stream_length
        self._lease_ms = _FOREVER_MS if math.isinf(lease) else max(1, int(lease * 1000))
        ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        self._head = [ttl_ms, self.serializer.name, max_stream_length or 0]
        self._bound: dict[asyncio.AbstractEventLoop, Bound] = {}
        # state id -> topic -> the subscribe processes registered for it here, which
        # is whom a driver fetches for after committing to that topic. None when
        # the state id was registered with different process sets (no fetch-ahead).
        self._readers: dict[str, dict[str, tuple[str, ...]] | None] = {}
        self._lock = threading.Lock()
        # worker -> entry ids of the claims this connection handed it and it has not
        # finished: only these are renewed. A claim whose reply never reached its
        # caller (cancelled mid-call) is not, so another worker takes it after the lease.
        self._held: dict[str, set[str]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisPubSubConnection {self._where} prefix={self.prefix!r} lease={self.lease}>"

    # -- plumbing ------------------------------------------------------------

    def _client(self) -> Bound:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; make a new connection")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "RedisPubSubConnection works on asyncio only (redis-py has no trio support): "
                "run async code on asyncio, or use the sync API (invoke, stream), which runs "
                "on permflow's own asyncio loop"
            ) from None
        bound = self._bound.get(loop)
        if bound is not None:
            return bound
        with self._lock:
            for old in [lp for lp in self._bound if lp.is_closed()]:
                del self._bound[old]
            if self._given is not None:
                if self._bound:
                    raise RuntimeError(
                        "this RedisPubSubConnection wraps a redis client bound to another event loop; "
                        "use RedisPubSubConnection.from_url(...) to use it from several loops "
                        "(for example async code and the sync invoke)"
                    )
                client = self._given
            else:
                import redis.asyncio

                assert self._url is not None
                options = {"max_connections": 100, "timeout": None, **self._options}
                pool = redis.asyncio.BlockingConnectionPool.from_url(self._url, **options)
                client = redis.asyncio.Redis.from_pool(pool)
            bound = self._bound[loop] = Bound(client, loop, own_pool=self._given is None)
        return bound

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        from redis.exceptions import RedisError, ResponseError

        try:
            yield
        except ResponseError as exc:
            reason = str(exc).rstrip(".")
            raise ConnectionFailedError(
                f"Redis at {self._where} refused a command while {doing}: {reason}. A key under "
                f"prefix {self.prefix!r} may have been written by another program: inspect it, "
                "or delete the state id."
            ) from exc
        except (RedisError, OSError) as exc:
            reason = str(exc).rstrip(".")
            raise ConnectionFailedError(
                f"Redis at {self._where} failed while {doing}: {type(exc).__name__}: {reason}. "
                "Check that the server is running and reachable; the next call reconnects."
            ) from exc

    def _keys(self, state_id: str) -> tuple[list[str], list[Any]]:
        base = f"{{{self.prefix}:{_escape(state_id)}}}"
        keys = [f"{base}:log", f"{base}:n", f"{base}:reg", f"{base}:topics", f"{base}:chg"]
        return keys, [base, *self._head]

    def _encode(self, messages: Sequence[Message]) -> list[Any]:
        """Serialize every value first: nothing is sent if one cannot be stored."""
        args: list[Any] = [len(messages)]
        dumps = self.serializer.dumps
        for m in messages:
            trail = json.dumps(m.trail, separators=(",", ":"))
            args += (m.topic, dumps(m.value, m.topic), repr(float(m.published_at)), m.depth, trail)
        return args

    def _decode(self, key: str, entry_id: Any, fields: list[Any], state_id: str) -> Message:
        eid = _text(entry_id)
        try:
            f = {_text(k): v for k, v in zip(fields[::2], fields[1::2], strict=True)}
            written = _text(f["s"])
            if written != self.serializer.name:
                raise CorruptEntryError(
                    f"entry {eid} of Redis key {key!r} was written with serializer {written!r}, but "
                    f"this connection uses {self.serializer.name!r}: open the connection with the "
                    "serializer its writers use (and never unpickle what untrusted writers stored)"
                )
            value = self.serializer.loads(f["v"])
            trail = tuple(_trail_entry(t) for t in json.loads(f["r"]))
            log_id = _text(f.get("l", entry_id))
            return Message(_text(f["t"]), value, state_id, float(f["p"]), log_id, int(f["d"]), trail)
        except CorruptEntryError:
            raise
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptEntryError(
                f"entry {eid} of Redis key {key!r} is not a permflow message "
                f"({type(exc).__name__}: {exc}); something else wrote to this key"
            ) from exc

    def _stored(self, state_id: str, messages: Sequence[Message], ids: list[Any]) -> list[Message]:
        return [
            Message(m.topic, m.value, state_id, m.published_at, _text(i), m.depth, m.trail)
            for m, i in zip(messages, ids, strict=True)
        ]

    # -- the protocol ----------------------------------------------------------

    async def register(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        if not subscriptions:
            return
        keys, args = self._keys(state_id)
        for sub in subscriptions:
            args += (sub.process, ("j" if sub.join else "s") + sub.topic)
        bound = await self._ready()
        self._learn_readers(state_id, subscriptions)
        with self._failures(f"registering processes of state id {state_id!r}"):
            conflict = await bound.run("REGISTER", keys, args)
        if conflict:
            process, known = _text(conflict[0]), _text(conflict[1])
            raise DefinitionError(
                f"process {process!r} is registered in state {state_id!r} as reading topic "
                f"{known[1:]!r}{' (join)' if known[0] == 'j' else ''}; it cannot now read another "
                "topic or mode. Give the new chain another name."
            )

    def _learn_readers(self, state_id: str, subscriptions: Sequence[Subscription]) -> None:
        readers: dict[str, tuple[str, ...]] = {}
        for sub in subscriptions:
            if not sub.join:
                readers[sub.topic] = (*readers.get(sub.topic, ()), sub.process)
        with self._lock:
            known = self._readers.get(state_id, readers)
            if len(self._readers) >= _MAX_LEARNED and state_id not in self._readers:
                del self._readers[next(iter(self._readers))]
            self._readers[state_id] = readers if known == readers else None

    async def _ready(self) -> Bound:
        """This loop's client, after handing back deliveries fetched ahead that
        their owner did not ask for."""
        bound = self._client()
        if bound.ahead:
            ahead, bound.ahead = bound.ahead, {}
            for (state_id, process, owner), (_, topic_raw, packed) in ahead.items():
                if packed:
                    await self._unfetch(bound, state_id, process, owner, _text(topic_raw), packed)
        return bound

    async def _unfetch(
        self, bound: Bound, state_id: str, process: str, owner: str, topic: str, packed: bytes
    ) -> None:
        keys, args = self._keys(state_id)
        args += (process, topic, owner, lua.RELEASED)
        for entry_id, attempt, _ in _unpack_entries(packed):
            args += (entry_id, int(attempt) - 1)
        with self._failures(f"handing back deliveries of process {process!r} of state id {state_id!r}"):
            await bound.run("UNFETCH", keys, args)

    async def publish(self, state_id: str, messages: Sequence[Message]) -> list[Message]:
        encoded = self._encode(messages)
        if not messages:
            return []
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(f"publishing to state id {state_id!r}"):
            ids = await bound.run("PUBLISH", keys, [*args, *encoded])
        return self._stored(state_id, messages, ids)

    async def fetch(
        self, state_id: str, process: str, *, owner: str, limit: int | None = None
    ) -> list[Delivery]:
        keys, args = self._keys(state_id)
        bound = self._client()
        ahead = bound.ahead.pop((state_id, process, owner), None) if limit is None else None
        if ahead is not None:
            mode, topic_raw, packed = ahead
        else:
            bound = await self._ready()
            args += (process, owner, self._lease_ms, limit or 0, lua.RELEASED)
            doing = f"fetching for process {process!r} of state id {state_id!r}"
            # Shielded: once sent, the script hands deliveries to owner; a caller cancelled
            # mid-flight must still learn of them, or they would wait out the lease.
            with self._failures(doing), anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + _SHIELD_SECONDS
                mode, topic_raw, packed = await bound.run("FETCH", keys, args)
            if scope.cancelled_caught:
                raise ConnectionFailedError(
                    f"Redis at {self._where} did not answer within {_SHIELD_SECONDS}s while {doing}"
                )
        mode = _text(mode)
        if mode == "?":
            raise KeyError(f"process {process!r} is not registered in state id {state_id!r}")
        if not packed:
            return []
        entries = _unpack_entries(packed)
        topic = _text(topic_raw)
        stream = f"{args[0]}:t:{topic}"
        messages: list[Message] = []
        bad: list[tuple[Any, CorruptEntryError]] = []
        for entry_id, _, fields in entries:
            try:
                messages.append(self._decode(stream, entry_id, fields, state_id))
            except CorruptEntryError as exc:
                bad.append((entry_id, exc))
        if bad:
            await self._set_aside(bound, state_id, process, topic, entries, bad)
        ids = tuple(_text(e[0]) for e in entries)
        attempts = [int(e[1]) for e in entries]
        if mode == "j":
            return [Delivery(state_id, process, tuple(messages), max(attempts), (topic, ids))]
        return [
            Delivery(state_id, process, (m,), a, (topic, (i,)))
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
        skipped = {_text(eid) for eid, _ in bad}
        good = [(e[0], int(e[1]) - 1) for e in entries if _text(e[0]) not in skipped]
        args += (process, topic, lua.RELEASED, len(bad), *(eid for eid, _ in bad))
        args += (x for pair in good for x in pair)
        stream = f"{args[0]}:t:{topic}"
        with self._failures(f"setting aside unreadable entries of {stream!r}"):
            await bound.run("SKIP", keys, args)
        first_id, first = bad[0]
        more = f" ({len(bad) - 1} more like it)" if len(bad) > 1 else ""
        raise CorruptEntryError(
            f"{first}{more}. Process {process!r} of state id {state_id!r} skipped it; it stays in "
            f"the stream for inspection (XRANGE {stream} {_text(first_id)} {_text(first_id)}). "
            "Invoke again to carry on without it."
        ) from first.__cause__

    async def commit(
        self, delivery: Delivery, messages: Sequence[Message], *, owner: str
    ) -> list[Message] | None:
        encoded = self._encode(messages)
        state_id = delivery.state_id
        topic, ids = delivery.handle
        order = sorted(ids, key=_id_key)
        keys, args = self._keys(state_id)
        args += (delivery.process, topic, owner, order[0], order[-1], len(ids), *ids, *encoded)
        readers = self._readers.get(state_id)
        follow: tuple[str, ...] = ()
        if readers and messages:
            topics = dict.fromkeys(m.topic for m in messages)
            follow = tuple(dict.fromkeys(p for t in topics for p in readers.get(t, ())))
        args += (self._lease_ms, lua.RELEASED, len(follow), *follow)
        bound = await self._ready()
        with self._failures(f"committing for process {delivery.process!r} of state id {state_id!r}"):
            reply = await bound.run("COMMIT", keys, args)
        if reply is None:
            return None
        for k, process in enumerate(follow):
            key = (state_id, process, owner)
            mode, topic_raw, packed = reply[1 + 3 * k], reply[2 + 3 * k], reply[3 + 3 * k]
            earlier = bound.ahead.get(key)
            if earlier is not None and earlier[2]:
                # another commit of this owner fetched ahead first: keep both, in order
                packed = bytes(earlier[2]) + bytes(packed or b"")
            bound.ahead[key] = (mode, topic_raw, packed)
        return self._stored(state_id, messages, reply[0])

    async def release(self, state_id: str, owner: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(f"releasing deliveries of state id {state_id!r}"):
            await bound.run("RELEASE", keys, [*args, owner, lua.RELEASED])

    async def renew(self, state_id: str, owner: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(f"renewing leases of state id {state_id!r}"):
            await bound.run("RENEW", keys, [*args, owner])

    async def outstanding(self, state_id: str, processes: Sequence[str]) -> dict[str, int]:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        names = list(dict.fromkeys(processes))
        with self._failures(f"counting outstanding messages of state id {state_id!r}"):
            last, *counts = await bound.run("OUTSTANDING", keys, [*args, *names])
        _seen.set((id(self), args[0], last or b"0-0"))
        return {name: max(0, int(n or 0)) for name, n in zip(names, counts, strict=True)} | {
            p: 0 for p in processes if p not in names
        }

    async def apeek(self, state_id: str) -> list[Message]:
        keys, _ = self._keys(state_id)
        bound = await self._ready()
        messages: list[Message] = []
        start = "-"
        while True:
            with self._failures(f"reading the log of state id {state_id!r}"):
                batch = await bound.client.xrange(keys[0], min=start, max="+", count=1000)
            messages += (self._decode(keys[0], eid, _flat(fields), state_id) for eid, fields in batch)
            if len(batch) < 1000:
                return messages
            start = "(" + _text(batch[-1][0])

    async def wait_for_change(self, state_id: str, max_seconds: float) -> None:
        if max_seconds <= 0:
            return
        keys, args = self._keys(state_id)
        seen = _seen.get()
        since = seen[2] if seen is not None and seen[:2] == (id(self), args[0]) else b"$"
        block = 0 if math.isinf(max_seconds) else max(1, int(max_seconds * 1000))
        bound = await self._ready()
        with self._failures(f"waiting for changes of state id {state_id!r}"):
            reply = await bound.client.xread({keys[4]: since}, count=1, block=block)
        if reply:
            _seen.set((id(self), args[0], reply[0][1][-1][0]))

    async def adelete(self, state_id: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        self._readers.pop(state_id, None)
        with self._failures(f"deleting state id {state_id!r}"):
            await bound.run("DELETE", keys, args)

    async def read_log(self, state_id: str, after: str | None) -> list[Message]:
        if after is None:
            return await self.apeek(state_id)
        if not _ENTRY_ID.fullmatch(after):
            raise ValueError(
                f"after must be a message id of state id {state_id!r} (like '1700000000000-0'), got {after!r}"
            )
        keys, _ = self._keys(state_id)
        bound = await self._ready()
        messages: list[Message] = []
        start = "(" + after
        while True:
            with self._failures(f"reading the log of state id {state_id!r}"):
                batch = await bound.client.xrange(keys[0], min=start, max="+", count=1000)
            messages += (self._decode(keys[0], eid, _flat(fields), state_id) for eid, fields in batch)
            if len(batch) < 1000:
                return messages
            start = "(" + _text(batch[-1][0])

    # -- work distribution -----------------------------------------------------
    # Announcements are entries of one stream per prefix, read by the consumer
    # group "workers"; a claim is an entry pending for its worker, held under
    # ``lease`` like deliveries. Failure and stop marks live with the state id.

    def _work_key(self) -> str:
        return f"{{{self.prefix}}}:work"

    def _mark_key(self, state_id: str, mark: str) -> str:
        return f"{{{self.prefix}:{_escape(state_id)}}}:{mark}"

    async def announce(self, state_id: str) -> None:
        bound = await self._ready()
        # Two slots (the state id's, the work stream's): one round trip, not one script.
        pipe = bound.client.pipeline(transaction=False)
        pipe.delete(self._mark_key(state_id, "failed"), self._mark_key(state_id, "stop"))
        pipe.xadd(self._work_key(), {"s": state_id.encode()})
        with self._failures(f"announcing state id {state_id!r} to workers"):
            await pipe.execute()

    async def claim(self, worker: str, *, limit: int, max_seconds: float) -> list[Claim]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r} (worker {worker!r})")
        work = self._work_key()
        lease = 0 if math.isinf(self.lease) else self._lease_ms
        bound = await self._ready()
        doing = f"claiming announced state ids for worker {worker!r}"
        with self._failures(doing):
            entries = await bound.run("CLAIM", [work], [_GROUP, worker, lease, limit])
        if not entries and max_seconds > 0:
            block = 0 if math.isinf(max_seconds) else max(1, int(max_seconds * 1000))
            # Through the pool, not the batching runner: the read blocks only this caller.
            with self._failures(doing):
                reply = await bound.client.xreadgroup(_GROUP, worker, {work: ">"}, count=limit, block=block)
            entries = [entry for _, batch in _streams(reply) for entry in batch]
        claims, ids = [], []
        for entry_id, fields in entries:
            flat = _flat(fields)
            found = {_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
            ids.append(_text(entry_id))
            claims.append(Claim(_text(found.get("s", b"")), (worker, ids[-1])))
        if ids:
            with self._lock:
                self._held.setdefault(worker, set()).update(ids)
        return claims

    async def renew_claims(self, worker: str) -> None:
        with self._lock:
            held = sorted(self._held.get(worker, ()))
        if not held:
            return
        bound = await self._ready()
        with self._failures(f"renewing the claims of worker {worker!r}"):
            await bound.run("RENEW_CLAIMS", [self._work_key()], [_GROUP, worker, *held])

    async def finish(self, claim: Claim, *, hand_back: bool = False) -> None:
        worker, entry_id = cast(tuple[str, str], claim.handle)
        with self._lock:
            held = self._held.get(worker)
            if held is not None:
                held.discard(entry_id)
                if not held:
                    del self._held[worker]
        bound = await self._ready()
        with self._failures(f"finishing the claim of worker {worker!r} on state id {claim.state_id!r}"):
            await bound.run("FINISH", [self._work_key()], [_GROUP, worker, entry_id, int(hand_back)])

    async def _mark(self, state_id: str, mark: str, value: bytes, doing: str) -> None:
        keys, args = self._keys(state_id)
        bound = await self._ready()
        with self._failures(doing):
            await bound.run("MARK", [*keys, self._mark_key(state_id, mark)], [*args, value])

    async def mark_failed(self, state_id: str, record: dict[str, object]) -> None:
        try:
            value = json.dumps(record, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the failure record of state id {state_id!r} must be JSON-compatible "
                f"(str, numbers, lists, dicts): {exc}"
            ) from exc
        await self._mark(state_id, "failed", value, f"marking state id {state_id!r} failed")

    async def failure(self, state_id: str) -> dict[str, object] | None:
        bound = await self._ready()
        with self._failures(f"reading the failure of state id {state_id!r}"):
            raw = await bound.client.get(self._mark_key(state_id, "failed"))
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise CorruptEntryError(
                f"Redis key {self._mark_key(state_id, 'failed')!r} does not hold a permflow failure "
                "record; something else wrote to it"
            )
        return record

    async def request_stop(self, state_id: str) -> None:
        await self._mark(state_id, "stop", b"1", f"asking the workers to stop state id {state_id!r}")

    async def stop_requested(self, state_id: str) -> bool:
        bound = await self._ready()
        with self._failures(f"checking for a stop request of state id {state_id!r}"):
            return bool(await bound.client.exists(self._mark_key(state_id, "stop")))

    async def arun_summaries(self) -> list[dict[str, object]]:
        """One summary per state id under the prefix, most recently updated first:
        ``state_id``, ``outstanding`` (messages not yet acked, over its processes)
        and ``updated_at`` (epoch seconds of its last change, 0.0 if unknown)."""
        state_ids = await self.astate_ids()
        bound = self._client()
        summaries: list[dict[str, object]] = []
        for start in range(0, len(state_ids), 500):
            chunk = state_ids[start : start + 500]
            pipe = bound.client.pipeline(transaction=False)
            for state_id in chunk:
                keys, _ = self._keys(state_id)
                pipe.hvals(keys[1])
                pipe.xrevrange(keys[4], count=1)
                pipe.xrevrange(keys[0], count=1)
            with self._failures(f"summarising runs under prefix {self.prefix!r}"):
                replies = await pipe.execute()
            for k, state_id in enumerate(chunk):
                counts, *lasts = replies[3 * k : 3 * k + 3]
                stamps = [_id_key(_text(last[0][0]))[0] for last in lasts if last]
                summaries.append(
                    {
                        "state_id": state_id,
                        "outstanding": sum(max(0, int(n)) for n in counts),
                        "updated_at": max(stamps, default=0) / 1000,
                    }
                )
        summaries.sort(key=lambda s: cast(float, s["updated_at"]), reverse=True)
        return summaries

    def run_summaries(self) -> list[dict[str, object]]:
        """Sync twin of ``arun_summaries``."""
        from .._portal import run_sync

        return run_sync(self.arun_summaries)

    async def astate_ids(self) -> list[str]:
        """State ids with keys under this prefix (SCAN, for inspection)."""
        bound = self._client()
        start = f"{{{self.prefix}:"
        pattern = _glob_escape(start) + "*"
        found: set[str] = set()
        with self._failures(f"listing state ids under prefix {self.prefix!r}"):
            async for key in bound.client.scan_iter(match=pattern, count=500):
                text = _text(key)
                if text.startswith(start) and "}" in text:
                    found.add(_unescape(text[len(start) : text.index("}")]))
        return sorted(found)

    def state_ids(self) -> list[str]:
        """Sync twin of ``astate_ids``."""
        from .._portal import run_sync

        return run_sync(self.astate_ids)

    async def aclose(self) -> None:
        """Close the clients this connection made (a client you passed in stays
        open: it is yours). Using the connection afterwards raises."""
        self._closed = True
        with self._lock:
            bound, self._bound = list(self._bound.values()), {}
        if self._given is not None:
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # trio: no client can live on this loop
            here = None
        for b in bound:
            if b.loop is here:
                await b.client.aclose()
            elif b.loop.is_running():  # e.g. the sync API's background loop
                future = asyncio.run_coroutine_threadsafe(b.client.aclose(), b.loop)
                try:
                    await anyio.to_thread.run_sync(future.result, 5.0)
                except Exception:
                    future.cancel()  # that loop is busy or going away; its sockets close with it

    def close(self) -> None:
        """Sync twin of ``aclose``."""
        from .._portal import run_sync

        run_sync(self.aclose)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _unpack_entries(packed: bytes) -> list[tuple[bytes, bytes, list[bytes]]]:
    """Split FETCH's packed reply (``<len>:<bytes>`` pieces: id, attempt, field
    count, fields...) into (id, attempt, fields) entries."""
    pieces: list[bytes] = []
    i, end = 0, len(packed)
    while i < end:
        colon = packed.index(b":", i)
        stop = colon + 1 + int(packed[i:colon])
        pieces.append(packed[colon + 1 : stop])
        i = stop
    entries = []
    k = 0
    while k < len(pieces):
        n = int(pieces[k + 2])
        entries.append((pieces[k], pieces[k + 1], pieces[k + 3 : k + 3 + n]))
        k += 3 + n
    return entries


def _streams(reply: Any) -> list[tuple[Any, list[Any]]]:
    """(stream, entries) pairs of an XREAD/XREADGROUP reply."""
    return [(stream, entries) for stream, entries in reply or ()]


def _flat(fields: Any) -> list[Any]:
    if isinstance(fields, dict):
        return [x for kv in fields.items() for x in kv]
    return list(fields)


def _trail_entry(raw: Any) -> tuple[str, str, str]:
    if not isinstance(raw, list) or len(raw) != 3 or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"bad trail entry {raw!r}")
    return (raw[0], raw[1], raw[2])


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _escape(state_id: str) -> str:
    """Keep ``{`` and ``}`` out of keys so the hash tag is exactly the state id."""
    return state_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _unescape(text: str) -> str:
    return text.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _redact(url: str) -> str:
    """``url`` without its password (user names stay: they help debugging)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
