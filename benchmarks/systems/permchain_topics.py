"""permchain 0.0.3, permflow's ancestor: topics over LangChain runnables.

permchain has only a sync engine (every step runs in a thread pool made per
run), so every row uses plain functions with ``invoke`` and ``batch``; its
``invoke`` returns the first value published to ``Topic.OUT``.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from permchain import InMemoryPubSubConnection, PubSub, Topic

from .._pipeline import Pipeline

NOTE = "sync engine only: plain functions, invoke()/batch()"


def inc(x: int) -> int:
    return x + 1


class System:
    family = "memory"

    def versions(self) -> dict[str, str]:
        return {"permchain": version("permchain"), "langchain": version("langchain")}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def chain(self, n: int, kind: str) -> Pipeline:
        topics = [Topic.IN, *(Topic(f"t{k}") for k in range(1, n)), Topic.OUT]
        processes = [topics[k].subscribe() | inc | topics[k + 1].publish() for k in range(n)]
        pubsub = PubSub(processes=processes, connection=InMemoryPubSubConnection())

        async def run_many(xs: Any) -> list[Any]:
            return await asyncio.to_thread(pubsub.batch, list(xs))

        return Pipeline(pubsub.invoke, lambda x: x + n, is_async=False, run_many=run_many, note=NOTE)

    def fanout(self, n: int) -> Pipeline:
        values = Topic("values")

        def adder(i: int) -> Any:
            return lambda x: x + i

        processes: list[Any] = [Topic.IN.subscribe() | adder(i) | values.publish() for i in range(1, n + 1)]
        processes.append(values.join() | sorted | Topic.OUT.publish())
        pubsub = PubSub(processes=processes, connection=InMemoryPubSubConnection())
        return Pipeline(pubsub.invoke, lambda x: list(range(x + 1, x + n + 1)), is_async=False, note=NOTE)
