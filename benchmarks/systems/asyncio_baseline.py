"""The baseline: plain asyncio queues and tasks doing the same work.

Each run builds fresh queues and one task per stage, so a run is isolated
like a permflow run is. The sync variant submits runs to a background event
loop thread, as permflow's sync ``invoke`` does.
"""

from __future__ import annotations

import asyncio
import platform
import threading
from typing import Any

from .._pipeline import Pipeline


async def _inc(x: int) -> int:
    return x + 1


def _inc_sync(x: int) -> int:
    return x + 1


async def _stage_async(inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
    outbox.put_nowait(await _inc(await inbox.get()))


async def _stage_sync(inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
    outbox.put_nowait(_inc_sync(await inbox.get()))


async def _chain(x: int, n: int, stage: Any) -> int:
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(n + 1)]
    tasks = [asyncio.create_task(stage(queues[k], queues[k + 1])) for k in range(n)]
    queues[0].put_nowait(x)
    result = await queues[n].get()
    await asyncio.gather(*tasks)
    return result


async def _fanout(x: int, n: int) -> list[int]:
    inboxes: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(n)]
    collected: asyncio.Queue[int] = asyncio.Queue()
    out: asyncio.Queue[list[int]] = asyncio.Queue()

    async def subscriber(i: int, inbox: asyncio.Queue[int]) -> None:
        value = await inbox.get()
        collected.put_nowait(value + i)

    async def join() -> None:
        values = [await collected.get() for _ in range(n)]
        out.put_nowait(sorted(values))

    tasks = [asyncio.create_task(subscriber(i + 1, q)) for i, q in enumerate(inboxes)]
    tasks.append(asyncio.create_task(join()))
    for q in inboxes:
        q.put_nowait(x)
    result = await out.get()
    await asyncio.gather(*tasks)
    return result


class System:
    family = "memory"

    def __init__(self) -> None:
        self._bg: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def versions(self) -> dict[str, str]:
        return {"asyncio": platform.python_version()}

    async def start(self) -> None:
        self._bg = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._bg.run_forever, name="baseline-loop", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._bg is not None and self._thread is not None:
            self._bg.call_soon_threadsafe(self._bg.stop)
            self._thread.join()
            self._bg.close()

    def chain(self, n: int, kind: str) -> Pipeline:
        if kind == "async":

            async def run(x: int) -> int:
                return await _chain(x, n, _stage_async)

            async def run_many(xs: Any) -> list[int]:
                return list(await asyncio.gather(*(_chain(x, n, _stage_async) for x in xs)))

            return Pipeline(run, lambda x: x + n, is_async=True, run_many=run_many)
        bg = self._bg
        assert bg is not None

        def run_sync(x: int) -> int:
            return asyncio.run_coroutine_threadsafe(_chain(x, n, _stage_sync), bg).result()

        return Pipeline(run_sync, lambda x: x + n, is_async=False, note="runs submitted to a background loop")

    def fanout(self, n: int) -> Pipeline:
        async def run(x: int) -> list[int]:
            return await _fanout(x, n)

        return Pipeline(run, lambda x: list(range(x + 1, x + n + 1)), is_async=True)
