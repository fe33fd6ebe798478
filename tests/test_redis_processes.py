"""Runs cross OS processes through Redis: started in one, peeked and resumed in another.

The child (tests/redis_child.py) runs "job" through prepare → work → slow → OUT.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio
import redis_child

from permflow import RedisPubSubConnection

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("redis_child.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def fresh_child_module() -> None:
    redis_child.CALLS.clear()
    redis_child.BLOCK = False


@pytest.fixture
async def keys_cleaned(redis_url: str, redis_prefix: str) -> AsyncIterator[None]:
    yield
    raw = redis.asyncio.Redis.from_url(redis_url)
    async for key in raw.scan_iter(match=f"{{{redis_prefix}:*"):
        await raw.delete(key)
    await raw.aclose()


async def start_child(redis_url: str, prefix: str, state_id: str, mode: str) -> anyio.abc.Process:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return await anyio.open_process([sys.executable, str(CHILD), redis_url, prefix, state_id, mode], env=env)


async def read_line(child: anyio.abc.Process) -> str:
    """The child's next stdout line (bytes arrive in chunks)."""
    assert child.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        try:
            data += await child.stdout.receive(1)
        except anyio.EndOfStream:
            assert child.stderr is not None
            errors = b"".join([chunk async for chunk in child.stderr])
            raise AssertionError(f"child ended early: {errors.decode()}") from None
    return data.decode().strip()


def values_by_topic(messages: list[Any]) -> list[tuple[str, Any]]:
    return [(m.topic, m.value) for m in messages]


JOB_LOG = [("__in__", "job"), ("work", "job:prepared"), ("__out__", "job:prepared:done")]


async def test_a_finished_run_is_peeked_and_continued_in_another_process(
    redis_url: str, redis_prefix: str, keys_cleaned: None
) -> None:
    """Process B sees the whole log of A's finished run and continues it without redoing A's work."""
    with anyio.fail_after(30):
        async with await start_child(redis_url, redis_prefix, "done", "finish") as child:
            assert json.loads(await read_line(child)) == ["job:prepared:done"]
            assert await child.wait() == 0
        async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as conn:
            assert values_by_topic(await conn.apeek("done")) == JOB_LOG
            pubsub = redis_child.build(conn)
            assert await pubsub.ainvoke("more", {"state_id": "done"}) == ["more:prepared:done"]
            assert redis_child.CALLS == ["more:prepared"]
            assert len(await conn.apeek("done")) == 6


async def test_a_run_left_early_resumes_in_another_process(
    redis_url: str, redis_prefix: str, keys_cleaned: None
) -> None:
    """A broke out of its stream and exited; B resumes with None and stores each message once."""
    with anyio.fail_after(30):
        async with await start_child(redis_url, redis_prefix, "left", "break") as child:
            while (line := await read_line(child)) == "STARTED":
                pass  # the slow step may start before A leaves; it is cancelled then
            assert line == "BROKE"
            assert await child.wait() == 0
        async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix) as conn:
            assert values_by_topic(await conn.apeek("left")) == JOB_LOG[:2]
            pubsub = redis_child.build(conn)
            assert await pubsub.ainvoke(None, {"state_id": "left"}) == ["job:prepared:done"]
            assert redis_child.CALLS == ["job:prepared"]
            assert values_by_topic(await conn.apeek("left")) == JOB_LOG


async def test_a_killed_run_is_resumed_after_its_lease(
    redis_url: str, redis_prefix: str, keys_cleaned: None
) -> None:
    """A is SIGKILLed mid-step; B (1 s lease) re-runs that step once and the log holds each message once."""
    with anyio.fail_after(30):
        async with await start_child(redis_url, redis_prefix, "killed", "hang") as child:
            assert await read_line(child) == "STARTED"
            os.kill(child.pid, signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
        async with RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=1.0) as conn:
            assert values_by_topic(await conn.apeek("killed")) == JOB_LOG[:2]
            pubsub = redis_child.build(conn)
            assert await pubsub.ainvoke(None, {"state_id": "killed"}) == ["job:prepared:done"]
            assert redis_child.CALLS == ["job:prepared"]
            assert values_by_topic(await conn.apeek("killed")) == JOB_LOG
            assert await conn.outstanding("killed", pubsub.process_names) == dict.fromkeys(
                pubsub.process_names, 0
            )
