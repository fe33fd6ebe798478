"""Submit ``runs`` pipelines to one job queue at once and collect their ends.

``python -m benchmarks.queue_apps.submit celery|dramatiq|arq RUNS`` (in that
queue's virtualenv) prints one JSON line: submit start (wall clock), every
run's finish time and value, for the driver to check and summarise.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis

from benchmarks.queue_apps._common import SINK, URL


def _collect(runs: int, started: float) -> dict[str, object]:
    sink = redis.Redis.from_url(URL)
    ends: list[list[float]] = []
    deadline = time.time() + 600
    while len(ends) < runs and time.time() < deadline:
        item = sink.blpop([SINK], timeout=5)
        if item is not None:
            ends.append(json.loads(item[1]))
    return {"started": started, "ends": ends}


async def _submit_arq(runs: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(URL))
    for i in range(runs):
        await pool.enqueue_job("first", i)
    await pool.aclose()


def main() -> None:
    system, runs = sys.argv[1], int(sys.argv[2])
    started = time.time()
    if system == "arq":
        asyncio.run(_submit_arq(runs))
    else:
        module = __import__(f"benchmarks.queue_apps.{system}_app", fromlist=["submit"])
        for i in range(runs):
            module.submit(i)
    print(json.dumps(_collect(runs, started)))


if __name__ == "__main__":
    main()
