"""Cached step results in Redis: one string key per entry.

An entry of the cached step ``name`` lives at ``{prefix}:cache:{name}:{key}``
(``name`` with ``%``, ``:``, ``{`` and ``}`` escaped). The key has no hash
tag: every command touches one key, so entries spread over the slots of a
Redis Cluster. Entries with a ``ttl`` get Redis's own expiry (``SET ... PX``);
they outlive processes, workers and (on a server that persists) restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from . import _codec as codec
from ._core import RedisCore

__all__ = ["RedisCache", "cache_key"]

#: Keys removed per UNLINK by ``aclear_cache``.
_BATCH = 500


def _escape_name(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def cache_key(prefix: str, name: str, key: str) -> str:
    """The Redis key of the entry ``key`` of the cached step ``name``."""
    return f"{prefix}:cache:{_escape_name(name)}:{key}"


class RedisCache(RedisCore):
    """Cached step results of ``RedisPubSubConnection``."""

    async def cache_get(self, name: str, key: str) -> bytes | None:
        bound = self._client()
        with self._failures(f"reading the cached result of step {name!r}"):
            value: bytes | None = await bound.client.get(cache_key(self.prefix, name, key))
        return value

    async def cache_set(self, name: str, key: str, value: bytes, ttl: float | None) -> None:
        bound = self._client()
        px = None if ttl is None else max(1, int(ttl * 1000))
        with self._failures(f"storing the result of step {name!r} in the cache"):
            await bound.client.set(cache_key(self.prefix, name, key), value, px=px)

    async def aclear_cache(self, name: str | None = None) -> None:
        start = f"{self.prefix}:cache:" if name is None else cache_key(self.prefix, name, "")
        pattern = codec.glob_escape(start) + "*"
        bound = self._client()
        with self._failures(f"clearing the cache of {'every step' if name is None else f'step {name!r}'}"):
            batch: list[Any] = []
            async for key in self._scan(pattern):
                batch.append(key)
                if len(batch) >= _BATCH:
                    await bound.client.unlink(*batch)
                    batch = []
            if batch:
                await bound.client.unlink(*batch)

    async def _scan(self, pattern: str) -> AsyncIterator[Any]:
        """Every key matching ``pattern`` (SCAN: keys written meanwhile may be missed)."""
        async for key in self._client().client.scan_iter(match=pattern, count=_BATCH):
            yield key
