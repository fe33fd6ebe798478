"""Where the Redis rows find their server, and how they clean up after themselves.

The server is the one at ``PERMFLOW_BENCH_REDIS_URL`` if set, else at
``PERMFLOW_TEST_REDIS_URL`` (the tests' server), else on 127.0.0.1:6379.
``missing()`` checks up front that it answers; under ``CI=true`` a missing
Redis fails a benchmark run instead of leaving its Redis rows out.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_PROBE_SECONDS = 2.0
_HINT = "set PERMFLOW_TEST_REDIS_URL or PERMFLOW_BENCH_REDIS_URL"


def redis_url() -> str:
    return (
        os.environ.get("PERMFLOW_BENCH_REDIS_URL") or os.environ.get("PERMFLOW_TEST_REDIS_URL") or DEFAULT_URL
    )


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing(url: str | None = None) -> str | None:
    """Why the Redis at ``url`` (default: ``redis_url()``) cannot be used, in one
    line, or ``None`` when it answers a PING."""
    url = url or redis_url()
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install -e '.[redis]')"
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=_PROBE_SECONDS, socket_timeout=_PROBE_SECONDS
        )
        with client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"no Redis at {_redact(url)} ({exc}); {_HINT}"
    return None


def _redact(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def unique_prefix() -> str:
    return f"permflow-bench-{uuid.uuid4().hex[:12]}"


async def connect() -> Any:
    """A redis-py asyncio client, after checking the server answers."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url())
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        raise RuntimeError(f"no Redis at {_redact(redis_url())} ({exc}); {_HINT}") from exc
    return client


async def delete_prefix(client: Any, prefix: str) -> int:
    """Delete every key that contains ``prefix`` (hash-tagged keys included)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await client.unlink(*batch)
    return deleted
