"""progress(): what a client of workers reads to follow a run, on both connections."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from permflow import InMemoryPubSubConnection, Message, PubSubConnection, RedisPubSubConnection
from permflow.connections import Subscription

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
async def connection(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[PubSubConnection]:
    if request.param == "memory":
        conn: PubSubConnection = InMemoryPubSubConnection()
    else:
        conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
    async with conn:
        yield conn


async def test_progress_reports_new_messages_counts_and_failure(
    connection: PubSubConnection,
) -> None:
    """progress gives the messages after an id, the outstanding counts and the failure mark."""
    with anyio.fail_after(10):
        await connection.register("s", [Subscription("p", "t"), Subscription("q", "u")])
        first, second = await connection.publish("s", [Message("t", 1, "s", 0.0), Message("u", 2, "s", 0.0)])
        everything = await connection.progress("s", None, ["p", "q"])
        later = await connection.progress("s", first.id, ["p", "q"])
        nothing_new = await connection.progress("s", second.id, ["p"])
        await connection.mark_failed("s", {"error": "ValueError", "message": "bad"})
        failed = await connection.progress("s", second.id, ["p"])
        await connection.announce("s")  # a new announcement clears the failure
        cleared = await connection.progress("s", second.id, ["p"])
    assert [m.value for m in everything.messages] == [1, 2]
    assert everything.outstanding == {"p": 1, "q": 1} and everything.failure is None
    assert [m.value for m in later.messages] == [2]
    assert nothing_new.messages == [] and nothing_new.outstanding == {"p": 1}
    assert failed.failure == {"error": "ValueError", "message": "bad"}
    assert cleared.failure is None
