"""Errors say where they happened and what to do, and every one permflow raises is a PermflowError."""

from __future__ import annotations

import traceback
from typing import Any

import anyio
import pytest

from permflow import (
    ConfigError,
    InMemoryPubSubConnection,
    PermflowError,
    PubSub,
    RunnableLambda,
    RunTimeoutError,
    Topic,
)


def boom(x: Any) -> Any:
    raise KeyError(f"no {x}")


def failing() -> PubSub:
    middle = Topic("middle")
    return PubSub(
        Topic.IN.subscribe(name="first") | (lambda x: x) | middle.publish(),
        middle.subscribe(name="lookup") | boom | Topic.OUT.publish(),
    )


def test_a_failing_step_says_which_process_and_topic() -> None:
    """The step's own exception carries a note naming the process, the topic and the message id."""
    with pytest.raises(KeyError, match="no x") as info:
        failing().invoke("x")
    notes = getattr(info.value, "__notes__", [])
    assert any(
        n.startswith("permflow: process 'lookup' failed on topic 'middle' (message id ") for n in notes
    ), notes


def test_the_traceback_keeps_the_users_frames_and_drops_the_engines() -> None:
    """Between the caller and the failing step, the traceback shows no engine or anyio frames."""
    with pytest.raises(KeyError) as info:
        failing().invoke("x")
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "boom"  # the user's step is still the last frame
    # the caller's line, then the step: permflow's frames in between are gone
    assert [f.name for f in frames] == [
        "test_the_traceback_keeps_the_users_frames_and_drops_the_engines",
        "boom",
    ]


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"state_id": ""}, "state_id must be a non-empty string"),
        ({"timeout": -1}, "timeout must be a positive number"),
        ({"recursion_limit": 0}, "recursion_limit must be a positive integer"),
        ({"bogus": 1}, "unknown config keys"),
        ("not a dict", "config must be a dict"),
    ],
)
def test_bad_config_is_a_permflow_error_and_still_a_value_or_type_error(config: Any, says: str) -> None:
    """A bad config raises ConfigError: a PermflowError that is also a ValueError and a TypeError."""
    pubsub = PubSub(Topic.IN.subscribe() | str.upper | Topic.OUT.publish())
    with pytest.raises(ConfigError, match=says) as info:
        pubsub.invoke("x", config)
    assert isinstance(info.value, PermflowError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


@pytest.mark.anyio
async def test_a_timeout_without_a_state_id_does_not_promise_a_resume() -> None:
    """Without a state_id the timeout says the state was deleted; with one, how to resume it."""
    gate = anyio.Event()

    async def stuck(x: Any) -> Any:
        await gate.wait()
        return x

    conn = InMemoryPubSubConnection()
    pubsub = PubSub(Topic.IN.subscribe() | stuck | Topic.OUT.publish(), connection=conn, timeout=0.05)
    with pytest.raises(RunTimeoutError, match=r"state was deleted .no state_id was given") as info:
        await pubsub.ainvoke("x")
    assert "invoke the same state id again" not in str(info.value)
    with pytest.raises(RunTimeoutError, match="invoke the same state id again to resume"):
        await pubsub.ainvoke("x", {"state_id": "kept"})
    assert [m.topic for m in await conn.apeek("kept")] == ["__in__"]


@pytest.mark.parametrize("kind", ["dict", "map"])
def test_a_failing_branch_of_a_parallel_step_raises_its_own_error(kind: str) -> None:
    """A dict step or .map() whose branch fails raises that branch's exception itself, not a group."""
    step: Any = {"ok": (lambda x: x), "bad": boom} if kind == "dict" else RunnableLambda(boom).map()
    pubsub = PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())
    with pytest.raises(KeyError, match="no x") as info:
        pubsub.invoke("x" if kind == "dict" else ["x"])
    assert type(info.value) is KeyError
