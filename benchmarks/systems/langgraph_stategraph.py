"""LangGraph's graph API: a ``StateGraph`` of nodes that update a typed state."""

from __future__ import annotations

import operator
from importlib.metadata import version
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from .._pipeline import Pipeline


class Counter(TypedDict):
    x: int


class Fan(TypedDict):
    x: int
    values: Annotated[list[int], operator.add]
    out: list[int]


async def inc(state: Counter) -> Counter:
    return {"x": state["x"] + 1}


def inc_sync(state: Counter) -> Counter:
    return {"x": state["x"] + 1}


def _config(n: int) -> dict[str, Any]:
    # The default recursion_limit (25 supersteps) is below the longest chains.
    return {"recursion_limit": n + 10}


class System:
    family = "memory"

    def versions(self) -> dict[str, str]:
        return {"langgraph": version("langgraph"), "langchain-core": version("langchain-core")}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def chain(self, n: int, kind: str) -> Pipeline:
        builder = StateGraph(Counter)
        body: Any = inc if kind == "async" else inc_sync
        for k in range(n):
            builder.add_node(f"n{k}", body)
        builder.add_edge(START, "n0")
        for k in range(n - 1):
            builder.add_edge(f"n{k}", f"n{k + 1}")
        builder.add_edge(f"n{n - 1}", END)
        graph = builder.compile()
        config = _config(n)

        def expect(x: int) -> dict[str, int]:
            return {"x": x + n}

        if kind == "async":

            async def run(x: int) -> Any:
                return await graph.ainvoke({"x": x}, config)

            async def run_many(xs: Any) -> list[Any]:
                return await graph.abatch([{"x": x} for x in xs], config)

            return Pipeline(run, expect, is_async=True, run_many=run_many)
        return Pipeline(lambda x: graph.invoke({"x": x}, config), expect, is_async=False)

    def fanout(self, n: int) -> Pipeline:
        builder = StateGraph(Fan)

        async def start(state: Fan) -> dict[str, Any]:
            return {}

        def adder(i: int) -> Any:
            async def add(state: Fan) -> dict[str, Any]:
                return {"values": [state["x"] + i]}

            return add

        async def collect(state: Fan) -> dict[str, Any]:
            return {"out": sorted(state["values"])}

        builder.add_node("start", start)
        names = [f"add{i}" for i in range(1, n + 1)]
        for i, name in enumerate(names, start=1):
            builder.add_node(name, adder(i))
            builder.add_edge("start", name)
        builder.add_node("collect", collect)
        builder.add_edge(START, "start")
        builder.add_edge(names, "collect")  # waits for all of them
        builder.add_edge("collect", END)
        graph = builder.compile()

        async def run(x: int) -> list[int]:
            return (await graph.ainvoke({"x": x, "values": []}))["out"]

        return Pipeline(run, lambda x: list(range(x + 1, x + n + 1)), is_async=True)
