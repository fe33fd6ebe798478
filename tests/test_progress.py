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


async def test_a_call_for_help_keeps_the_stop_and_failure_marks(
    connection: PubSubConnection,
) -> None:
    """A worker's announce(help=True) keeps a client's stop request; a client's announce clears it."""
    with anyio.fail_after(10):
        await connection.request_stop("s")
        await connection.mark_failed("s", {"error": "ValueError", "message": "bad"})
        await connection.announce("s", help=True)
        kept = (await connection.stop_requested("s"), await connection.failure("s"))
        claims = await connection.claim("w", limit=5, max_seconds=1)
        await connection.announce("s")
        cleared = (await connection.stop_requested("s"), await connection.failure("s"))
        later = await connection.claim("w", limit=5, max_seconds=1)
        for claim in (*claims, *later):
            await connection.finish(claim)
    assert kept == (True, {"error": "ValueError", "message": "bad"})
    assert cleared == (False, None)
    assert [(c.state_id, c.help) for c in claims] == [("s", True)]
    assert [(c.state_id, c.help) for c in later] == [("s", False)]
