"""LangChain Expression Language: ``RunnableLambda`` sequences and ``RunnableParallel``."""

from __future__ import annotations

import functools
from importlib.metadata import version
from typing import Any

from langchain_core.runnables import RunnableLambda, RunnableParallel

from .._pipeline import Pipeline


async def inc(x: int) -> int:
    return x + 1


async def add(i: int, x: int) -> int:
    return x + i


def sequence(n: int, kind: str) -> Any:
    body: Any = inc if kind == "async" else (lambda x: x + 1)
    chain = RunnableLambda(body)
    for _ in range(n - 1):
        chain = chain | RunnableLambda(body)
    return chain


class System:
    family = "memory"

    def versions(self) -> dict[str, str]:
        return {"langchain-core": version("langchain-core")}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def chain(self, n: int, kind: str) -> Pipeline:
        chain = sequence(n, kind)
        if kind == "async":
            return Pipeline(chain.ainvoke, lambda x: x + n, is_async=True, run_many=chain.abatch)
        return Pipeline(chain.invoke, lambda x: x + n, is_async=False)

    def fanout(self, n: int) -> Pipeline:
        branches = {f"add{i}": RunnableLambda(functools.partial(add, i)) for i in range(1, n + 1)}

        async def collect(values: dict[str, int]) -> list[int]:
            return sorted(values.values())

        chain = RunnableParallel(branches) | RunnableLambda(collect)
        return Pipeline(chain.ainvoke, lambda x: list(range(x + 1, x + n + 1)), is_async=True)
