"""Tracing hooks and logging: what operators see of a run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from permflow import InMemoryPubSubConnection, Message, PubSub, RunnableLambda, Topic

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]

RETRY_SCRIPT = """
import logging, sys
from permflow import PubSub, RunnableLambda, Topic

if sys.argv[1] != "none":
    logging.basicConfig(level=sys.argv[1])
calls = []
def flaky(x):
    calls.append(x)
    if len(calls) < 3:
        raise ConnectionError("busy")
    return x

step = RunnableLambda(flaky).with_retry(retry_if_exception_type=(ConnectionError,), initial_wait=0.001)
assert PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish()).invoke("x") == ["x"]
"""


async def test_trace_wraps_every_step_execution() -> None:
    """The trace hook is entered and left around each step, with its process and message."""
    events: list[tuple[str, str, Any]] = []

    @contextmanager
    def trace(process: str, message: Message) -> Iterator[None]:
        events.append(("enter", process, message.value))
        yield
        events.append(("exit", process, message.value))

    one = Topic("one")
    pubsub = PubSub(
        Topic.IN.subscribe(name="first") | (lambda x: x + 1) | one.publish(),
        one.subscribe(name="second") | (lambda x: x * 2) | Topic.OUT.publish(),
        trace=trace,
    )
    with anyio.fail_after(10):
        assert await pubsub.ainvoke(1) == [4]
    assert events == [
        ("enter", "first", 1),
        ("exit", "first", 1),
        ("enter", "second", 2),
        ("exit", "second", 2),
    ]


async def test_trace_sees_a_failing_step() -> None:
    """A step that raises leaves its trace context with that exception."""
    seen: list[BaseException | None] = []

    @contextmanager
    def trace(process: str, message: Message) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            seen.append(exc)
            raise

    def boom(x: int) -> int:
        raise ValueError("no")

    pubsub = PubSub(Topic.IN.subscribe() | boom | Topic.OUT.publish(), trace=trace)
    with anyio.fail_after(10), pytest.raises(ValueError, match="no"):
        await pubsub.ainvoke(1)
    assert [type(e) for e in seen] == [ValueError]


def test_trace_must_be_callable() -> None:
    """A non-callable trace hook fails when the PubSub is built."""
    with pytest.raises(TypeError, match="trace"):
        PubSub(Topic.IN.subscribe() | (lambda x: x), trace="spans")  # type: ignore[arg-type]


async def test_retries_and_redeliveries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A retry logs a warning naming the step; a redelivery on resume logs the attempt."""
    flaky_calls: list[int] = []
    once_calls: list[int] = []

    def flaky(x: int) -> int:
        flaky_calls.append(x)
        if len(flaky_calls) < 2:
            raise ConnectionError("flaky")
        return x

    def fails_once(x: int) -> int:
        once_calls.append(x)
        if len(once_calls) == 1:
            raise RuntimeError("first delivery fails")
        return x

    caplog.set_level(logging.INFO, logger="permflow")
    pubsub = PubSub(
        Topic.IN.subscribe(name="flaky")
        | RunnableLambda(flaky).with_retry(stop_after_attempt=3)
        | Topic.OUT.publish(),
        connection=InMemoryPubSubConnection(),
    )
    resumed = PubSub(Topic.IN.subscribe(name="once") | fails_once | Topic.OUT.publish())
    with anyio.fail_after(10):
        await pubsub.ainvoke(5)
        with pytest.raises(RuntimeError):
            await resumed.ainvoke(7, {"state_id": "logged"})
        await resumed.ainvoke(None, {"state_id": "logged"})
    assert flaky_calls == [5, 5] and once_calls == [7, 7]
    assert "retrying 'test_retries_and_redeliveries_are_logged.<locals>.flaky'" in caplog.text
    assert "redelivering to 'once'" in caplog.text and "attempt 2" in caplog.text


def _run_retry_script(tmp_path: Path, level: str) -> str:
    """Run ``RETRY_SCRIPT`` in a fresh interpreter with logging at ``level``; return its stderr."""
    script = tmp_path / "retry.py"
    script.write_text(RETRY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(script), level], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_retries_print_nothing_unless_logging_is_configured(tmp_path: Path) -> None:
    """A retried step writes nothing to stderr when the application has not configured logging."""
    assert _run_retry_script(tmp_path, "none") == ""


def test_retry_warnings_are_one_line_and_tracebacks_are_for_debug(tmp_path: Path) -> None:
    """At WARNING each retry is one line naming the error; at DEBUG it carries the traceback."""
    warning = _run_retry_script(tmp_path, "WARNING")
    lines = warning.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("WARNING:permflow.retry:retrying 'flaky'") for line in lines)
    assert "(attempt 1 of 3 failed: ConnectionError: busy)" in lines[0]
    assert "Traceback" not in warning
    debug = _run_retry_script(tmp_path, "DEBUG")
    assert debug.count("Traceback (most recent call last)") == 2
    assert 'raise ConnectionError("busy")' in debug
