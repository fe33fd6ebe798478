"""LangGraph's low-level API: ``Pregel`` nodes reading and writing channels.

The closest LangGraph gets to topics: a node subscribes to one channel and
writes to the next, with ``EphemeralValue`` channels (no state kept between
steps) and a ``Topic`` channel collecting the fan-out for the join.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from langgraph.channels import EphemeralValue, Topic
from langgraph.pregel import NodeBuilder, Pregel

from .._pipeline import Pipeline


async def inc(x: int) -> int:
    return x + 1


def inc_sync(x: int) -> int:
    return x + 1


class System:
    family = "memory"

    def versions(self) -> dict[str, str]:
        return {"langgraph": version("langgraph"), "langchain-core": version("langchain-core")}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def chain(self, n: int, kind: str) -> Pipeline:
        body: Any = inc if kind == "async" else inc_sync
        nodes = {
            f"n{k}": NodeBuilder().subscribe_only(f"c{k}").do(body).write_to(f"c{k + 1}") for k in range(n)
        }
        channels = {f"c{k}": EphemeralValue(int) for k in range(n + 1)}
        app = Pregel(nodes=nodes, channels=channels, input_channels="c0", output_channels=f"c{n}")
        config = {"recursion_limit": n + 10}
        if kind == "async":

            async def run(x: int) -> Any:
                return await app.ainvoke(x, config)

            async def run_many(xs: Any) -> list[Any]:
                return await app.abatch(list(xs), config)

            return Pipeline(run, lambda x: x + n, is_async=True, run_many=run_many)
        return Pipeline(lambda x: app.invoke(x, config), lambda x: x + n, is_async=False)

    def fanout(self, n: int) -> Pipeline:
        def adder(i: int) -> Any:
            async def add(x: int) -> int:
                return x + i

            return add

        async def collect(values: list[int]) -> list[int]:
            return sorted(values)

        nodes = {
            f"add{i}": NodeBuilder().subscribe_only("in").do(adder(i)).write_to("values")
            for i in range(1, n + 1)
        }
        nodes["collect"] = NodeBuilder().subscribe_only("values").do(collect).write_to("out")
        channels: dict[str, Any] = {
            "in": EphemeralValue(int),
            "values": Topic(int),
            "out": EphemeralValue(list),
        }
        app = Pregel(nodes=nodes, channels=channels, input_channels="in", output_channels="out")

        async def run(x: int) -> Any:
            return await app.ainvoke(x)

        return Pipeline(run, lambda x: list(range(x + 1, x + n + 1)), is_async=True)
