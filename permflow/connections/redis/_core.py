"""What every part of the Redis connection stands on: its settings, one client
per event loop, the conversion of Redis failures, and the key layout of a run.

Before any call, the deliveries a commit fetched ahead that nobody asked for go
back (``_ready``), so every other call sees them as never fetched.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..._errors import ConfigError, ConnectionFailedError
from ..._message import Message
from ..._serialization import CorruptEntryError, Serializer, resolve_serializer
from .._base import PubSubConnection
from . import _codec as codec
from . import _compact as compact
from . import _scripts as lua
from ._client import Bound
from ._failures import convert
from ._replication import Replication, Unreplicated

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["RedisCore", "forget"]

_FOREVER_MS = 2**62
#: State ids whose topics a connection remembers (the oldest is forgotten first).
_MAX_TOPIC_RUNS = 4096
#: Times a script is sent with the keys of more topics before giving up.
_MAX_TOPIC_ROUNDS = 8
#: Scripts that store, and their twins, which find what an earlier send of the
#: same call stored instead of storing it again (and do what the first does when
#: nothing was): a round sent after a NEED reply uses the twin.
_STORES_AGAIN = {"COMMIT": "RECOMMIT", "PUBLISH": "REPUBLISH", "START": "RESTART"}
#: Seconds a call waits for Redis to answer (or to accept a connection) before
#: it fails with ConnectionFailedError, for clients permflow makes.
SOCKET_TIMEOUT = 5.0


def _pool_defaults() -> dict[str, Any]:
    """Pool options of the clients permflow makes (``from_url`` options win)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as Dropped

    return {
        "max_connections": 100,
        # wait for a pooled connection as long as it takes: each holder gives it back
        # within socket_timeout, so this wait is bounded too
        "timeout": None,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "socket_keepalive": True,
        # a dropped connection: once more on a fresh one; a silent server: never
        "retry": Retry(NoBackoff(), 1, supported_errors=(Dropped,)),
    }


def _cluster_defaults() -> dict[str, Any]:
    """Options of the Redis Cluster clients permflow makes (``from_url`` options win)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {
        # per node; redis-py's cluster client fails a call rather than wait for a free
        # connection, and each run waiting for changes holds one
        "max_connections": 1000,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "socket_keepalive": True,
        # permflow resends a call itself, only in a form safe to send twice
        "retry": Retry(NoBackoff(), 0),
    }


def forget(sets: dict[str, set[str]], key: str, item: str) -> None:
    """Remove ``item`` from ``sets[key]``, and the key once its set is empty."""
    left = sets.get(key)
    if left is not None:
        left.discard(item)
        if not left:
            del sets[key]


class RedisCore(PubSubConnection):
    """Settings, clients and keys shared by the parts of ``RedisPubSubConnection``."""

    lease: float = 30.0
    _url: str | None
    _options: dict[str, Any]
    _given: Redis | RedisCluster | None
    _cluster: bool
    _where: str
    _timeout: float | None
    _replication: Replication | None = None

    def _configure(
        self,
        prefix: str,
        lease: float,
        serializer: str | Serializer,
        ttl: float | None,
        max_stream_length: int | None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"prefix must be a non-empty string without braces, got {prefix!r}")
        if not lease > 0:
            raise ConfigError(f"lease must be a positive number of seconds (or math.inf), got {lease!r}")
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if max_stream_length is not None and max_stream_length < 1:
            raise ConfigError(f"max_stream_length must be at least 1 or None, got {max_stream_length!r}")
        self.prefix = prefix
        self.lease = float(lease)
        self.serializer = resolve_serializer(serializer)
        self.cache_serializer = self.serializer
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
        # state id -> every process registered for it here (None: different sets
        # were), whose outstanding counts a commit that fetches nothing reports.
        self._names: dict[str, tuple[str, ...] | None] = {}
        # state id -> (processes, their outstanding counts, last change id) as the
        # last commit here left them: the engine's next question, answered
        # without a round trip unless another call of the run came between.
        self._counted: dict[str, tuple[dict[str, Any], bytes]] = {}
        # state ids their runs delete when they end (an ordered set): their
        # finished state is not made compact first.
        self._fleeting: dict[str, None] = {}
        # state ids a worker drives here (an ordered set): it fetches ahead only
        # as much as a commit stored, not all that waits.
        self._bounded: dict[str, None] = {}
        self._lock = threading.Lock()
        # worker -> entry ids of the claims this connection handed it and it has not
        # finished: only these are renewed. A claim whose reply never reached its
        # caller (cancelled mid-call) is not, so another worker takes it after the lease.
        self._held: dict[str, set[str]] = {}
        # state id -> the topics of its run seen here, whose keys its scripts declare.
        self._topics: dict[str, set[str]] = {}
        # state id -> owners whose release failed: handed back by the next register.
        self._unreleased: dict[str, set[str]] = {}
        self._closed = False

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
                if self._cluster:
                    options = {**_cluster_defaults(), **self._options}
                    client = redis.asyncio.RedisCluster.from_url(self._url, **options)
                else:
                    options = {**_pool_defaults(), **self._options}
                    pool = redis.asyncio.BlockingConnectionPool.from_url(self._url, **options)
                    client = redis.asyncio.Redis.from_pool(pool)
            own = self._given is None
            bound = self._bound[loop] = Bound(
                client, loop, own_pool=own, cluster=self._cluster, replication=self._replication
            )
        return bound

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        from redis.exceptions import RedisClusterException, RedisError

        try:
            yield
        except Unreplicated as exc:
            raise exc.convert(where=self._where, doing=doing) from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise convert(
                exc,
                where=self._where,
                prefix=self.prefix,
                doing=doing,
                timeout=self._timeout,
                cluster=self._cluster,
            ) from exc

    def _block_ms(self, seconds: float) -> int:
        """A blocking read's wait in ms: ``seconds`` (0 = forever), kept under the
        socket timeout so that a quiet stream is not taken for a silent server."""
        if self._timeout:
            seconds = min(seconds, self._timeout / 2)
        return 0 if math.isinf(seconds) else max(1, int(seconds * 1000))

    def _base(self, state_id: str) -> str:
        """``{prefix:state_id}``: the start of every key of the run (its hash tag)."""
        return f"{{{self.prefix}:{codec.escape(state_id)}}}"

    def _keys(self, state_id: str) -> tuple[list[str], list[Any]]:
        base = self._base(state_id)
        keys = [f"{base}:log", f"{base}:n", f"{base}:reg", f"{base}:topics", f"{base}:chg"]
        return keys, [base, *self._head]

    async def _call(
        self,
        bound: Bound,
        name: str,
        state_id: str,
        keys: list[str],
        args: list[Any],
        topics: Iterable[str] = (),
        *,
        only: bool = False,
    ) -> Any:
        """Run script ``name`` of ``state_id`` with ``keys`` and the keys of the
        run's topics: those known here and ``topics`` (``only``: just ``topics``,
        for a script that touches no other). A script that needs the keys of
        other topics changes nothing and names them; it is sent again with them."""
        base = args[0]
        self._counted.pop(state_id, None)
        with self._lock:
            known = self._topics.pop(state_id, set())
            if len(self._topics) >= _MAX_TOPIC_RUNS:
                del self._topics[next(iter(self._topics))]
            known.update(topics)
            self._topics[state_id] = known
            chosen = set(topics) if only else known
        for _ in range(_MAX_TOPIC_ROUNDS):
            with self._lock:
                names = sorted(chosen)
            declared = [*keys]
            for topic in names:
                declared += (f"{base}:t:{topic}", f"{base}:r:{topic}")
            reply = await bound.run(name, declared, args)
            if not (isinstance(reply, list) and reply and reply[0] == lua.NEED):
                return reply
            # This round may have been a resend after a lost reply (in its twin's
            # form): the next one, too, must find out what an earlier send stored.
            name = _STORES_AGAIN.get(name, name)
            with self._lock:
                missing = {codec.text(t) for t in reply[1:]}
                known.update(missing)
                chosen.update(missing)
        raise ConnectionFailedError(
            f"the topics of state id {state_id!r} kept changing while a script of it was sent "
            f"{_MAX_TOPIC_ROUNDS} times; try again"
        )

    def _encode(self, messages: Sequence[Message]) -> list[Any]:
        return codec.encode(messages, self.serializer)

    def _decode(self, key: str, entry_id: Any, fields: list[Any], state_id: str) -> Message:
        return codec.decode(key, entry_id, fields, state_id, self.serializer)

    async def _ready(self) -> Bound:
        """This loop's client, after handing back deliveries fetched ahead that
        their owner did not ask for."""
        bound = self._client()
        if bound.ahead:
            ahead, bound.ahead = bound.ahead, {}
            for (state_id, process, owner), (_, topic_raw, packed) in ahead.items():
                if packed:
                    await self._unfetch(bound, state_id, process, owner, codec.text(topic_raw), packed)
        return bound

    async def _unfetch(
        self, bound: Bound, state_id: str, process: str, owner: str, topic: str, packed: bytes
    ) -> None:
        keys, args = self._keys(state_id)
        args += (process, topic, owner, lua.RELEASED)
        for entry_id, attempt, _ in codec.unpack_entries(packed):
            args += (entry_id, abs(int(attempt)) - 1)  # negative: a suspect's
        with self._failures(f"handing back deliveries of process {process!r} of state id {state_id!r}"):
            await self._call(bound, "UNFETCH", state_id, keys, args, [topic])

    async def _read_log_from(self, state_id: str, start: str) -> list[Message]:
        """The log of ``state_id`` from entry ``start`` (``-``: the first) on."""
        from redis.exceptions import ResponseError

        keys, _ = self._keys(state_id)
        bound = await self._ready()
        messages: list[Message] = []
        while True:
            try:
                with self._failures(f"reading the log of state id {state_id!r}"):
                    batch = await bound.client.xrange(keys[0], min=start, max="+", count=1000)
            except Exception as exc:
                if not (isinstance(exc.__cause__, ResponseError) and "WRONGTYPE" in str(exc.__cause__)):
                    raise
                # a finished run, made compact (its log is one string)
                return messages + await self._read_compact_log(bound, state_id, start)
            messages += (self._decode(keys[0], eid, codec.flat(fields), state_id) for eid, fields in batch)
            if len(batch) < 1000:
                return messages
            start = "(" + codec.text(batch[-1][0])

    async def _read_compact_log(self, bound: Bound, state_id: str, start: str) -> list[Message]:
        """The log of a compact run from entry ``start`` on (``-``, or ``(`` and an id)."""
        key = self._keys(state_id)[0][0]
        with self._failures(f"reading the log of state id {state_id!r}"):
            blob = await bound.client.get(key)
        if blob is None:  # expanded again meanwhile: read it as a stream
            return await self._read_log_from(state_id, start)
        try:
            _, entries = compact.parse(blob)
        except (ValueError, IndexError) as exc:
            raise CorruptEntryError(
                f"Redis key {key!r} holds neither a permflow log nor a compact run ({exc}); "
                "something else wrote to it"
            ) from exc
        after = None if start == "-" else codec.id_key(start.lstrip("("))
        return [
            self._decode(key, eid, fields, state_id)
            for eid, fields in entries
            if after is None or codec.id_key(codec.text(eid)) > after
        ]

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
                await b.aclose()
            elif b.loop.is_running():  # e.g. the sync API's background loop
                future = asyncio.run_coroutine_threadsafe(b.aclose(), b.loop)
                try:
                    await anyio.to_thread.run_sync(future.result, 5.0)
                except Exception:
                    future.cancel()  # that loop is busy or going away; its sockets close with it

    def close(self) -> None:
        """Sync twin of ``aclose``."""
        from ..._portal import run_sync

        run_sync(self.aclose)
