"""Where the Redis rows find their server, and how they clean up after themselves."""

from __future__ import annotations

import os
import uuid
from typing import Any

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    return os.environ.get("PERMFLOW_BENCH_REDIS_URL", DEFAULT_URL)


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
        raise RuntimeError(f"no Redis at {redis_url()} ({exc}); set PERMFLOW_BENCH_REDIS_URL") from exc
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
