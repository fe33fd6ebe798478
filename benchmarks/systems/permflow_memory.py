"""permflow with its embedded connection (``InMemoryPubSubConnection``)."""

from __future__ import annotations

import functools
from typing import Any

import permflow
from permflow import InMemoryPubSubConnection, PubSub, Topic

from .._pipeline import Pipeline


async def inc(x: int) -> int:
    return x + 1


async def add(i: int, x: int) -> int:
    return x + i


async def collect(values: list[int]) -> list[int]:
    return sorted(values)


def chain_processes(n: int, kind: str) -> list[Any]:
    """``n`` processes, each adding 1, from ``Topic.IN`` through t1 … t(n-1) to ``Topic.OUT``."""
    topics = [Topic.IN, *(Topic(f"t{k}") for k in range(1, n)), Topic.OUT]
    if kind == "async":
        return [topics[k].subscribe() | inc | topics[k + 1].publish() for k in range(n)]
    # A plain lambda, default settings: permflow runs it in worker threads until
    # it has seen it be fast, then inline. The warm-up before measuring covers that.
    return [topics[k].subscribe() | (lambda x: x + 1) | topics[k + 1].publish() for k in range(n)]


def fanout_processes(n: int) -> list[Any]:
    values = Topic("values")
    subscribers = [
        Topic.IN.subscribe(name=f"add{i}") | functools.partial(add, i) | values.publish()
        for i in range(1, n + 1)
    ]
    return [*subscribers, values.join() | collect | Topic.OUT.publish()]


def sync_placement(processes: list[Any]) -> str:
    """Where the sync steps of ``processes`` now run (read from the step's policy)."""
    runners = [getattr(p.steps[0], "_runner", None) for p in processes]
    inline = sum(1 for r in runners if r is not None and r.runs_inline)
    return f"sync steps inline after warm-up: {inline}/{len(runners)}"


class System:
    family = "memory"

    def versions(self) -> dict[str, str]:
        return {"permflow": permflow.__version__}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def chain(self, n: int, kind: str) -> Pipeline:
        processes = chain_processes(n, kind)
        pubsub = PubSub(processes=processes, connection=InMemoryPubSubConnection())
        if kind == "async":
            return Pipeline(pubsub.ainvoke, lambda x: [x + n], is_async=True, run_many=pubsub.abatch)
        return Pipeline(
            pubsub.invoke, lambda x: [x + n], is_async=False, note=lambda: sync_placement(processes)
        )

    def fanout(self, n: int) -> Pipeline:
        pubsub = PubSub(processes=fanout_processes(n), connection=InMemoryPubSubConnection())
        return Pipeline(pubsub.ainvoke, lambda x: [list(range(x + 1, x + n + 1))], is_async=True)
