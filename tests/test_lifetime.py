"""A PubSub's lifetime: what it opens for its steps is closed with it."""

from __future__ import annotations

import pytest

from permflow import InMemoryPubSubConnection, PubSub, Topic

pytestmark = pytest.mark.anyio


def _pubsub(conn: InMemoryPubSubConnection | None = None) -> PubSub:
    return PubSub(Topic.IN.subscribe() | (lambda x: x) | Topic.OUT.publish(), connection=conn)


def _record_closes(pubsub: PubSub, closed: list[str], *names: str) -> None:
    for name in names:

        async def closer(name: str = name) -> None:
            closed.append(name)

        pubsub.services.on_close(closer)


def test_close_runs_closers_in_reverse_order() -> None:
    """close() calls what was opened for steps, last opened first."""
    pubsub = _pubsub()
    closed: list[str] = []
    _record_closes(pubsub, closed, "first", "second")
    pubsub.close()
    assert closed == ["second", "first"]


def test_with_block_closes_and_leaves_the_connection_open() -> None:
    """Leaving ``with pubsub:`` closes its services but not the connection it was given."""
    conn = InMemoryPubSubConnection()
    closed: list[str] = []
    with _pubsub(conn) as pubsub:
        _record_closes(pubsub, closed, "pool")
        assert pubsub.invoke("a", {"state_id": "kept"}) == ["a"]
    assert closed == ["pool"]
    assert [m.value for m in conn.peek("kept")] == ["a", "a"]


async def test_async_with_block_closes(anyio_backend: str) -> None:
    """Leaving ``async with pubsub:`` awaits the closers."""
    closed: list[str] = []
    async with _pubsub() as pubsub:
        _record_closes(pubsub, closed, "db")
        assert await pubsub.ainvoke("x") == ["x"]
    assert closed == ["db"]


async def test_a_failing_closer_does_not_stop_the_others(anyio_backend: str) -> None:
    """Every closer runs; the first failure is raised afterwards."""
    pubsub = _pubsub()
    closed: list[str] = []
    _record_closes(pubsub, closed, "a")

    async def broken() -> None:
        raise OSError("socket already gone")

    pubsub.services.on_close(broken)
    _record_closes(pubsub, closed, "c")
    with pytest.raises(OSError, match="already gone"):
        await pubsub.aclose()
    assert closed == ["c", "a"]


def test_with_connection_gets_services_of_its_own() -> None:
    """A PubSub moved to another connection lends its steps that connection."""
    pubsub = _pubsub()
    other = InMemoryPubSubConnection()
    moved = pubsub.with_connection(other)
    assert moved.services.connection is other
    assert pubsub.services.connection is pubsub.connection
