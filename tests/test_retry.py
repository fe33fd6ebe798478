"""Retries: the back-off schedule (with an injected sleep) and what a failed attempt leaves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import permflow._retry as retry
from permflow import InMemoryPubSubConnection, PubSub, RunnableLambda, Topic


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Waits turned on, recorded instead of slept."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(retry, "_sleep", record)
    retry.set_retry_waits(True)
    try:
        yield recorded
    finally:
        retry.set_retry_waits(False)


def flaky(fails: int) -> Any:
    """A step failing its first ``fails`` calls."""
    calls: list[int] = []

    def step(x: Any) -> Any:
        calls.append(x)
        if len(calls) <= fails:
            raise ConnectionError(f"busy {len(calls)}")
        return x

    return step


def test_back_off_doubles_from_the_initial_wait_up_to_max_wait(waits: list[float]) -> None:
    """Without jitter the waits are initial_wait * 2**n, capped at max_wait."""
    step = RunnableLambda(flaky(6)).with_retry(
        stop_after_attempt=7, initial_wait=0.1, max_wait=1.0, wait_exponential_jitter=False
    )
    assert step.invoke("x") == "x"
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@pytest.mark.parametrize(
    ("draw", "expected"), [("low", [0.1, 0.2, 0.4, 0.8, 1.0]), ("high", [0.2, 0.4, 0.8, 1.0, 1.0])]
)
def test_jitter_stays_between_the_wait_and_twice_it_capped(
    waits: list[float], monkeypatch: pytest.MonkeyPatch, draw: str, expected: list[float]
) -> None:
    """Jitter adds between nothing and the wait itself, and the total never passes max_wait."""
    monkeypatch.setattr(retry.random, "uniform", lambda low, high: low if draw == "low" else high)
    step = RunnableLambda(flaky(5)).with_retry(
        stop_after_attempt=6, initial_wait=0.1, max_wait=1.0, wait_exponential_jitter=True
    )
    assert step.invoke("x") == "x"
    assert waits == pytest.approx(expected)


def test_a_retried_step_keeps_what_earlier_steps_of_the_chain_published() -> None:
    """A failed attempt discards only its own publishes: a publish made before the retried step stays."""
    side, inside = Topic("side"), Topic("inside")
    calls: list[str] = []

    def attempt(x: str) -> str:
        calls.append(x)
        if len(calls) == 1:
            raise ConnectionError("busy")
        return x.upper()

    retried = (inside.publish() | RunnableLambda(attempt)).with_retry(stop_after_attempt=2)
    conn = InMemoryPubSubConnection()
    pubsub = PubSub(Topic.IN.subscribe() | side.publish() | retried | Topic.OUT.publish(), connection=conn)
    assert pubsub.invoke("a", {"state_id": "r"}) == ["A"]
    # 'side' (before the retried part) once; 'inside' once: the failed attempt's copy was discarded
    assert [m.topic for m in conn.peek("r")] == ["__in__", "side", "inside", "__out__"]
