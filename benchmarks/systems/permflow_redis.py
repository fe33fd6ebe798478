"""permflow with its state in Redis (``RedisPubSubConnection``).

Same chains as the in-memory rows (``permflow_memory``), another connection.
Unavailable, with the reason, until ``from permflow import
RedisPubSubConnection`` works and a server answers.
"""

from __future__ import annotations

import inspect
from typing import Any

import permflow
from permflow import PubSub

from .._pipeline import Pipeline
from ._redis_common import connect, delete_prefix, redis_url, unique_prefix
from .permflow_memory import chain_processes


class System:
    family = "redis"

    def __init__(self) -> None:
        from permflow import RedisPubSubConnection  # ImportError: "not available"

        self._cls = RedisPubSubConnection
        self.prefix = unique_prefix()
        self.client: Any = None
        self.connections: list[Any] = []

    def versions(self) -> dict[str, str]:
        import redis

        return {"permflow": permflow.__version__, "redis-py": redis.__version__}

    async def start(self) -> None:
        self.client = await connect()

    async def stop(self) -> None:
        for conn in self.connections:
            await conn.aclose()
        await delete_prefix(self.client, self.prefix)
        await self.client.aclose()

    async def _connection(self) -> Any:
        made = self._cls.from_url(redis_url(), prefix=self.prefix)
        conn = await made if inspect.isawaitable(made) else made
        self.connections.append(conn)
        return conn

    async def chain(self, n: int, kind: str, max_concurrency: int | None = None) -> Pipeline:
        if kind != "async":
            from .._pipeline import NotSupported

            raise NotSupported("Redis rows use the async API on the worker's own loop")
        pubsub = PubSub(processes=chain_processes(n, kind), connection=await self._connection())

        async def run_many(xs: Any) -> list[Any]:
            return await pubsub.abatch(list(xs), max_concurrency=max_concurrency)

        note = f"max_concurrency={max_concurrency}" if max_concurrency else ""
        return Pipeline(pubsub.ainvoke, lambda x: [x + n], is_async=True, run_many=run_many, note=note)
