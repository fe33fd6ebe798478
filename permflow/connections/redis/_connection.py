"""``RedisPubSubConnection``: how it is made (from a URL or a client)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast, final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..._errors import ConfigError
from ..._serialization import Serializer
from ._cache import RedisCache
from ._core import SOCKET_TIMEOUT
from ._replication import replication
from ._runs import RedisRuns
from ._work import RedisWork

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["RedisPubSubConnection"]

#: Seconds a write waits for ``replicas`` to acknowledge it before it fails
#: with ReplicationError (below the 5 s socket timeout it is read within).
REPLICA_TIMEOUT = 1.0


@final
class RedisPubSubConnection(RedisRuns, RedisWork, RedisCache):
    """Stores runs in Redis (≥ 6.2 or Valkey, no modules), one server or a Redis Cluster.

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
    trims the log of each state id to that many entries (``peek`` then shows
    only the latest ones) and topic streams longer than that only below what
    every reader has finished with, after each append and ack (a process
    registered later then misses what was trimmed). A run whose processes have finished every message is kept
    compact (its log in one string, about 1 KB for a small run) and rebuilt
    when it is invoked again.

    Cached step results (``Runnable.with_cache``) are stored with the same
    ``serializer``, one key per entry (``{prefix}:cache:...``, spread over a
    cluster's slots).

    A Redis Cluster is named by a ``redis+cluster://`` (or ``rediss+cluster://``)
    URL, or ``from_url(..., cluster=True)``, or by passing a
    ``redis.asyncio.RedisCluster``. Each run's keys share one hash slot, so runs
    spread over the primaries; each script is sent to its run's primary.

    Workers (``permflow worker``) claim announced state ids from eight streams
    per prefix (spread over a cluster's primaries), under the same ``lease``: a
    worker that stops renewing loses its claims to the next worker that asks.

    ``replicas=N`` acknowledges a write a caller is told is stored (a commit,
    published input, a registration, a release, marks) only once N replicas of
    the primary have it (``WAIT``, in the same round trip); if fewer do within
    ``replica_timeout`` seconds (1.0), the call raises ``ReplicationError``: the
    write is stored on the primary, but a failover may lose it. ``replicas=0``
    (the default) does not wait: Redis replicates asynchronously, and a failover
    may lose the last acknowledged writes. On a Redis Cluster, N replicas of the
    run's own primary acknowledge (each script and its ``WAIT`` go to that
    primary on one connection).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "permflow",
        lease: float = 30.0,
        serializer: str | Serializer = "json",
        ttl: float | None = None,
        max_stream_length: int | None = None,
        replicas: int = 0,
        replica_timeout: float = REPLICA_TIMEOUT,
    ) -> None:
        from redis.asyncio.cluster import RedisCluster

        self._configure(prefix, lease, serializer, ttl, max_stream_length)
        kwargs: dict[str, Any] = cast(Any, client).get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ConfigError("the redis client must be made with decode_responses=False (values are bytes)")
        self._replication = replication(
            replicas, replica_timeout, kwargs.get("socket_timeout"), self._fence()
        )
        pooled = isinstance(client, RedisCluster) or getattr(client, "connection_pool", None) is not None
        if replicas and not pooled:
            raise ConfigError(
                "replicas= needs a redis.asyncio.Redis or redis.asyncio.RedisCluster client, "
                f"not {type(client).__name__}"
            )
        self._url: str | None = None
        self._options: dict[str, Any] = {}
        self._given: Redis | RedisCluster | None = client
        self._cluster = isinstance(client, RedisCluster)
        self._timeout = kwargs.get("socket_timeout")
        if isinstance(client, RedisCluster):
            nodes = list(client.nodes_manager.startup_nodes.values())
            self._where = f"redis+cluster://{nodes[0].name if nodes else '?'}"
        else:
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
        cluster: bool = False,
        replicas: int | None = None,
        replica_timeout: float | None = None,
        **client_options: Any,
    ) -> RedisPubSubConnection:
        """Connect lazily to ``url`` (``redis://``, ``rediss://``, ``unix://``,
        with optional ``user:password@``). ``client_options`` go to
        ``redis.asyncio.BlockingConnectionPool.from_url`` (``ssl_ca_certs`` …).
        Each event loop gets a pool of ``max_connections`` (100) connections;
        callers wait for a free one (``timeout``: forever).

        A Redis Cluster is named by its URL scheme, ``redis+cluster://host:port``
        (``rediss+cluster://`` with TLS), any node of it; ``cluster=True`` with a
        ``redis://`` URL is the same. ``client_options`` then go to
        ``redis.asyncio.RedisCluster.from_url`` (``max_connections`` per node).

        ``socket_timeout`` and ``socket_connect_timeout`` (5 s) bound how long one
        call waits for a server that does not answer (frozen, partitioned); it
        then fails with ``ConnectionFailedError``. A connection the server
        dropped is replaced and the call sent again once, when that is safe.

        ``replicas`` and ``replica_timeout`` may also be given in the URL's
        query (``redis://host/0?replicas=1&replica_timeout=2``, as the worker
        CLI's ``--redis`` takes them); the keyword arguments win."""
        if client_options.get("decode_responses"):
            raise ConfigError("decode_responses must stay False: values are stored as bytes")
        url, query = _replica_query(url)
        if replicas is None:
            replicas = _number(query, "replicas", int, 0)
        if replica_timeout is None:
            replica_timeout = _number(query, "replica_timeout", float, REPLICA_TIMEOUT)
        self = cls.__new__(cls)
        self._configure(prefix, lease, serializer, ttl, max_stream_length)
        self._where = _redact(url)
        url, self._cluster = cluster_url(url, cluster)
        self._url, self._options, self._given = url, client_options, None
        self._timeout = client_options.get("socket_timeout", SOCKET_TIMEOUT)
        self._replication = replication(replicas, replica_timeout, self._timeout, self._fence())
        return self

    def _fence(self) -> str:
        return f"{{{self.prefix}}}:fence"

    def __repr__(self) -> str:
        waits = "" if self._replication is None else f" replicas={self._replication.replicas}"
        return f"<RedisPubSubConnection {self._where} prefix={self.prefix!r} lease={self.lease}{waits}>"


def _replica_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``replicas`` and ``replica_timeout`` query parameters,
    and those parameters (redis-py would refuse them)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, {}  # redis-py says what is wrong with it
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in pairs if k in ("replicas", "replica_timeout")}
    if not ours:
        return url, {}
    rest = urlencode([(k, v) for k, v in pairs if k not in ours])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), ours


def _number(query: dict[str, str], name: str, kind: type[int] | type[float], default: float) -> Any:
    if name not in query:
        return default
    try:
        return kind(query[name])
    except ValueError:
        raise ConfigError(
            f"{name} in the Redis URL must be {'an int' if kind is int else 'a number'}, got {query[name]!r}"
        ) from None


#: URL schemes of a Redis Cluster, and the scheme redis-py takes for each.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str, cluster: bool) -> tuple[str, bool]:
    """``url`` as redis-py takes it, and whether it names a Redis Cluster."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is not None:
        return f"{plain}{sep}{rest}", True
    if cluster and scheme.lower() not in ("redis", "rediss"):
        raise ConfigError(f"a Redis Cluster is reached over redis:// or rediss://, got {_redact(url)!r}")
    return url, cluster


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
