"""PubSubs that worker subprocesses serve in tests/test_faults.py.

    python -m permflow worker tests.fault_app:NAME --redis URL --prefix P --lease L

Each is a three-process chain x → WORK → DONE → OUT; the OUT value is
``{"value": ..., "pid": ...}`` so a test can tell which worker did the work.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from permflow import PubSub, Topic

#: The input that makes the middle step of ``poison`` kill its worker process.
POISON = -1
#: Seconds the middle step of ``slow`` takes: runs stay in flight that long.
SLOW_SECONDS = 1.0

WORK = Topic("work")
DONE = Topic("done")


def _tagged(value: int) -> dict[str, int]:
    return {"value": value, "pid": os.getpid()}


def expected(x: int) -> int:
    """The OUT value (without pid) every chain here gives for a healthy input ``x``."""
    return (x + 1) * 2


async def _double_slowly(x: int) -> int:
    await anyio.sleep(SLOW_SECONDS)
    return x * 2


async def _crash_on_poison(x: int) -> int:
    if x == POISON + 1:
        os._exit(1)  # a crash no exception handler sees: the worker process dies
    await anyio.sleep(0.05)
    return x * 2


def _chain(middle: Any, **settings: Any) -> PubSub:
    return PubSub(
        Topic.IN.subscribe() | (lambda x: x + 1) | WORK.publish(),
        WORK.subscribe() | middle | DONE.publish(),
        DONE.subscribe() | _tagged | Topic.OUT.publish(),
        **settings,
    )


#: x → x + 1 → (x + 1) * 2 → OUT, at once.
quick = _chain(lambda x: x * 2)

#: The same with a middle step of SLOW_SECONDS.
slow = _chain(_double_slowly)

#: The same with a middle step of 0.05 s that calls os._exit(1) for the input
#: POISON; a delivery is dead-lettered after max_deliveries=3 attempts.
poison = _chain(_crash_on_poison, max_deliveries=3)
