"""PubSubs that worker subprocesses serve in tests/test_worker_processes.py.

    python -m permflow worker tests.worker_app:chain --redis URL --prefix P

Everything a worker needs to find its runs (Redis URL, key prefix, lease)
comes from its command line: the CLI swaps the in-memory connection below for
Redis. Steps put ``os.getpid()`` into their outputs so a test can tell which
worker process did the work.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from permflow import PubSub, RedisPubSubConnection, RunnableLambda, Topic

#: Seconds the slow steps wait: the workload of a run, long enough for a test
#: to kill or stop a worker while it holds deliveries.
SLOW_SECONDS = 0.2
ITEM_SECONDS = 0.05

PLUS_ONE = Topic("plus_one")
DOUBLED = Topic("doubled")
WORK = Topic("work")
ITEMS = Topic("items")
SQUARES = Topic("squares")


#: A directory where steps of different worker processes meet (set by tests that
#: must see both workers work): a step waits there until a step of another
#: worker process arrived too, so one worker cannot do all the work.
MEET_DIR = os.environ.get("PERMFLOW_TEST_MEET_DIR")


def meet_another_worker() -> None:
    """Wait (up to 20 s) until a step of another worker process has been here too."""
    if not MEET_DIR:
        return
    open(os.path.join(MEET_DIR, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 20
    while len(os.listdir(MEET_DIR)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for another process, which no event here can signal


def _tagged(value: int) -> dict[str, int]:
    meet_another_worker()
    return {"value": value, "pid": os.getpid()}


async def _slow_double(x: int) -> int:
    await anyio.sleep(SLOW_SECONDS)
    return x * 2


async def _slow_square(x: int) -> dict[str, int]:
    await anyio.sleep(ITEM_SECONDS)
    return await anyio.to_thread.run_sync(_tagged, x * x)


def _total(squares: list[dict[str, int]]) -> dict[str, Any]:
    return {
        "sum": sum(s["value"] for s in squares),
        "count": len(squares),
        "pids": sorted({s["pid"] for s in squares}),
    }


#: x → x + 1 → (x + 1) * 2, three processes; OUT gets {"value", "pid"}.
chain = PubSub(
    Topic.IN.subscribe() | (lambda x: x + 1) | PLUS_ONE.publish(),
    PLUS_ONE.subscribe() | (lambda x: x * 2) | DOUBLED.publish(),
    DOUBLED.subscribe() | _tagged | Topic.OUT.publish(),
)

#: The same shape with a 0.2 s async step in the middle.
slow_chain = PubSub(
    Topic.IN.subscribe() | (lambda x: x + 1) | WORK.publish(),
    WORK.subscribe() | _slow_double | DOUBLED.publish(),
    DOUBLED.subscribe() | _tagged | Topic.OUT.publish(),
)

#: n → squares of 0..n-1 (one message each, 0.05 s apiece) → one join:
#: {"sum", "count", "pids" of the workers that squared}.
fan_out = PubSub(
    Topic.IN.subscribe() | (lambda n: list(range(n))) | ITEMS.publish_each(),
    ITEMS.subscribe() | _slow_square | SQUARES.publish(),
    SQUARES.join() | _total | Topic.OUT.publish(),
)


def _is_even(n: int) -> bool:
    return n % 2 == 0


#: n → 0..n-1, of which only the even ones are squared (a filtered subscription;
#: the odd ones never reach the step) → one join, as in ``fan_out``.
filtered = PubSub(
    Topic.IN.subscribe() | (lambda n: list(range(n))) | ITEMS.publish_each(),
    ITEMS.subscribe(when=_is_even) | _slow_square | SQUARES.publish(),
    SQUARES.join() | _total | Topic.OUT.publish(),
)


#: A directory where the ``marker`` resource notes its life (set by the resource test):
#: a line in ``made-<pid>`` each time it is made, ``closed-<pid>`` once it is exited.
RESOURCE_DIR = os.environ.get("PERMFLOW_TEST_RESOURCE_DIR")


@contextlib.asynccontextmanager
async def _marker() -> AsyncIterator[int]:
    """A resource (an async context manager) that leaves a trace in ``RESOURCE_DIR``."""
    pid, where = os.getpid(), Path(RESOURCE_DIR or ".")
    async with await anyio.open_file(where / f"made-{pid}", "a") as made:
        await made.write("made\n")
    yield pid
    await anyio.Path(where / f"closed-{pid}").write_text("closed\n")


def _stamped(x: int, resources: Any) -> dict[str, int]:
    return {"value": x, "pid": os.getpid(), "resource_pid": resources["marker"]}


#: x → {"value", "pid", "resource_pid"}: the step asks for a shared resource.
with_resources = PubSub(
    Topic.IN.subscribe() | _stamped | Topic.OUT.publish(),
    resources={"marker": _marker},
)

#: A file each real execution of ``_expensive`` appends its pid to (set by cache tests).
EXECUTIONS_FILE = os.environ.get("PERMFLOW_TEST_EXECUTIONS_FILE")


def _expensive(x: int) -> dict[str, int]:
    if EXECUTIONS_FILE:
        with open(EXECUTIONS_FILE, "a") as log:
            log.write(f"{os.getpid()}\n")
    return {"value": x * 10, "pid": os.getpid()}


#: x → {"value": 10x, "pid"}, cached: a hit returns the pid of the process that computed it.
cached = PubSub(Topic.IN.subscribe() | RunnableLambda(_expensive).with_cache() | Topic.OUT.publish())


def _crunch(n: int) -> dict[str, int]:
    """CPU work, run in a process of the worker's pool: its pid is neither the worker's nor the client's."""
    return {"value": sum(range(n)), "pid": os.getpid()}


#: n → sum(range(n)) in a worker process of the worker's pool of one → OUT {"value", "pid"}.
crunch = PubSub(
    Topic.IN.subscribe() | RunnableLambda(_crunch, execution="process") | Topic.OUT.publish(),
    max_processes=1,
)


def client(pubsub: PubSub, url: str, prefix: str, *, lease: float = 30.0) -> PubSub:
    """``pubsub`` over Redis at ``url``/``prefix``, submitting its runs to workers."""
    connection = RedisPubSubConnection.from_url(url, prefix=prefix, lease=lease)
    return pubsub.with_connection(connection).with_workers()
