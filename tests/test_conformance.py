"""Every connection passes the same conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from permflow import InMemoryPubSubConnection, PubSubConnection
from permflow.testing import ConnectionSuite


class TestInMemoryConnection(ConnectionSuite):
    @pytest.fixture
    async def connection(self) -> AsyncIterator[InMemoryPubSubConnection]:
        async with InMemoryPubSubConnection() as conn:
            yield conn


class TestRedisConnection(ConnectionSuite):
    """The same suite against a real Redis server and a real Redis Cluster
    (redis-py supports asyncio only)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def connection(self, store_url: str, redis_prefix: str) -> AsyncIterator[PubSubConnection]:
        from permflow import RedisPubSubConnection

        conn = RedisPubSubConnection.from_url(store_url, prefix=redis_prefix, lease=5.0)
        try:
            yield conn
        finally:
            await conn.aclose()

    @pytest.fixture
    async def lease_connection(self, store_url: str, redis_prefix: str) -> AsyncIterator[PubSubConnection]:
        """A short lease, so that the lease tests wait half a second, not five."""
        from permflow import RedisPubSubConnection

        conn = RedisPubSubConnection.from_url(store_url, prefix=redis_prefix, lease=0.5)
        try:
            yield conn
        finally:
            await conn.aclose()
