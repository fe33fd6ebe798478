"""The pipeline on arq: arq has no canvas, so each job enqueues the next one,
as its documentation suggests; ``max_jobs`` raised to 100 and ``poll_delay``
lowered to 0.05 s (from 0.5 s: a job enqueued by a job waits for the next poll)
for throughput."""

from __future__ import annotations

from typing import Any, ClassVar

from arq.connections import RedisSettings

from benchmarks.queue_apps._common import SINK, URL, burn, record


async def first(ctx: dict[str, Any], i: int) -> None:
    await ctx["redis"].enqueue_job("middle", i, i + 1)


async def middle(ctx: dict[str, Any], i: int, x: int) -> None:
    await ctx["redis"].enqueue_job("last", i, burn(x))


async def last(ctx: dict[str, Any], i: int, x: int) -> None:
    await ctx["redis"].rpush(SINK, record(i, x + 1))


class WorkerSettings:
    functions: ClassVar[list[Any]] = [first, middle, last]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 100
    poll_delay = 0.05
    keep_result = 0
