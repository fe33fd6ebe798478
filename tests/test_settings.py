"""Run settings: validated in the constructor and in ``config``, config wins for one call."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

from permflow import CycleError, InMemoryPubSubConnection, PubSub, Topic

KNOWN = (
    "state_id",
    "recursion_limit",
    "max_concurrency",
    "timeout",
    "step_timeout",
    "max_deliveries",
    "max_processes",
)


def _echo() -> PubSub:
    return PubSub(Topic.IN.subscribe() | Topic.OUT.publish())


def _hops(n: int) -> PubSub:
    """A linear chain IN → h1 → … → h{n} → OUT; its OUT message sits at depth n + 1."""
    topics = [Topic.IN, *(Topic(f"h{i}") for i in range(1, n + 1))]
    chains = [a.subscribe() | (lambda x: x + 1) | b.publish() for a, b in itertools.pairwise(topics)]
    chains.append(topics[-1].subscribe() | Topic.OUT.publish())
    return PubSub(*chains)


def test_unknown_config_key_lists_known_ones() -> None:
    """A misspelt config key fails with ValueError naming it and every known key."""
    with pytest.raises(ValueError) as info:
        _echo().invoke(1, {"recursion_limt": 5})
    text = str(info.value)
    assert "recursion_limt" in text
    for key in KNOWN:
        assert key in text


@pytest.mark.parametrize("value", [0, -1, 1.5, "10", None])
def test_invalid_recursion_limit_in_constructor(value: Any) -> None:
    """recursion_limit must be a positive integer when the PubSub is built."""
    with pytest.raises(ValueError, match="recursion_limit"):
        PubSub(Topic.IN.subscribe() | Topic.OUT.publish(), recursion_limit=value)


@pytest.mark.parametrize("value", [0, -3, "x"])
def test_invalid_recursion_limit_in_config(value: Any) -> None:
    """recursion_limit given in config is validated the same way."""
    with pytest.raises(ValueError, match="recursion_limit"):
        _echo().invoke(1, {"recursion_limit": value})


@pytest.mark.parametrize("value", [0, -1])
def test_invalid_max_concurrency(value: int) -> None:
    """max_concurrency below 1 is refused in the constructor and in config."""
    with pytest.raises(ValueError, match="max_concurrency"):
        PubSub(Topic.IN.subscribe() | Topic.OUT.publish(), max_concurrency=value)
    with pytest.raises(ValueError, match="max_concurrency"):
        _echo().invoke(1, {"max_concurrency": value})


@pytest.mark.parametrize("value", [0, -1])
def test_invalid_max_deliveries(value: int) -> None:
    """max_deliveries below 1 is refused in the constructor and in config."""
    with pytest.raises(ValueError, match="max_deliveries"):
        PubSub(Topic.IN.subscribe() | Topic.OUT.publish(), max_deliveries=value)
    with pytest.raises(ValueError, match="max_deliveries"):
        _echo().invoke(1, {"max_deliveries": value})


@pytest.mark.parametrize("value", ["", 42])
def test_invalid_state_id(value: Any) -> None:
    """A state id must be a non-empty string."""
    with pytest.raises(ValueError, match="state_id"):
        _echo().invoke(1, {"state_id": value})


def test_invalid_config_stores_nothing() -> None:
    """A call refused for its config publishes nothing under its state id."""
    pubsub = _echo()
    with pytest.raises(ValueError):
        pubsub.invoke(1, {"state_id": "refused", "max_deliveries": 0})
    assert pubsub.peek("refused") == []


def test_default_recursion_limit_fits_a_100_process_chain() -> None:
    """A 100-hop linear chain runs under the default settings."""
    assert _hops(100).invoke(0) == [100]


def test_config_recursion_limit_overrides_constructor_for_one_call() -> None:
    """A deeper recursion_limit in config lets one call through; the next call uses the constructor's."""
    pubsub = _hops(4)
    pubsub = PubSub(*pubsub.processes, recursion_limit=2)
    with pytest.raises(CycleError):
        pubsub.invoke(0)
    assert pubsub.invoke(0, {"recursion_limit": 50}) == [4]
    with pytest.raises(CycleError):
        pubsub.invoke(0)


def test_config_recursion_limit_can_lower_the_constructor_one() -> None:
    """A lower recursion_limit in config fails a call the constructor's limit allows."""
    pubsub = _hops(4)
    with pytest.raises(CycleError, match="recursion_limit=2"):
        pubsub.invoke(0, {"recursion_limit": 2})
    assert pubsub.invoke(0) == [4]


def _concurrency_probe(**settings: Any) -> tuple[PubSub, list[int]]:
    """Five processes on IN; each records how many steps run at the same time."""
    state = {"now": 0}
    peaks: list[int] = []

    async def step(x: int) -> int:
        state["now"] += 1
        peaks.append(state["now"])
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        state["now"] -= 1
        return x

    chains = [Topic.IN.subscribe(name=f"p{i}") | step | Topic.OUT.publish() for i in range(5)]
    return PubSub(*chains, **settings), peaks


@pytest.mark.anyio
async def test_config_max_concurrency_overrides_constructor_for_one_call() -> None:
    """max_concurrency=1 in config serialises one call; without it the same PubSub overlaps steps."""
    pubsub, peaks = _concurrency_probe()
    assert await pubsub.ainvoke(1, {"max_concurrency": 1}) == [1] * 5
    assert max(peaks) == 1
    peaks.clear()
    assert await pubsub.ainvoke(1) == [1] * 5
    assert max(peaks) > 1


@pytest.mark.anyio
async def test_constructor_max_concurrency_applies_to_every_call() -> None:
    """max_concurrency given to the constructor limits every call."""
    pubsub, peaks = _concurrency_probe(max_concurrency=2)
    for _ in range(2):
        assert await pubsub.ainvoke(1) == [1] * 5
    assert max(peaks) == 2


def test_settings_survive_with_connection() -> None:
    """with_connection keeps the PubSub's settings."""

    pubsub = PubSub(*_hops(4).processes, recursion_limit=2)
    moved = pubsub.with_connection(InMemoryPubSubConnection())
    with pytest.raises(CycleError):
        moved.invoke(0)


# -- what the in-memory connection keeps --------------------------------------


def _counting(connection: InMemoryPubSubConnection) -> PubSub:
    return PubSub(Topic.IN.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(), connection=connection)


def test_runs_without_state_id_leave_nothing_behind() -> None:
    """Ten thousand invokes without a state id leave the in-memory connection empty."""
    connection = InMemoryPubSubConnection()
    pubsub = _counting(connection)
    for i in range(10_000):
        assert pubsub.invoke(i) == [i + 1]
    assert connection.state_ids() == []


def test_streams_and_batches_without_state_id_leave_nothing_behind() -> None:
    """Finished streams and batches without a state id leave the connection empty too."""
    connection = InMemoryPubSubConnection()
    pubsub = _counting(connection)
    for i in range(50):
        assert [m.value for m in pubsub.stream(i)] == [i, i + 1]
    assert pubsub.batch(list(range(50))) == [[i + 1] for i in range(50)]
    assert connection.state_ids() == []


def test_given_state_id_is_kept_until_deleted() -> None:
    """State under a user-given state id stays, across calls, until pubsub.delete(state_id)."""
    connection = InMemoryPubSubConnection()
    pubsub = _counting(connection)
    for i in range(100):
        pubsub.invoke(i)
    assert pubsub.invoke(1, {"state_id": "keep-me"}) == [2]
    assert pubsub.invoke(5, {"state_id": "keep-me"}) == [6]
    assert connection.state_ids() == ["keep-me"]
    assert [m.value for m in pubsub.peek("keep-me")] == [1, 2, 5, 6]
    pubsub.delete("keep-me")
    assert connection.state_ids() == []
    assert pubsub.peek("keep-me") == []
