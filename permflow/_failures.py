"""What a failing delivery becomes: a ``Topic.ERROR`` record, a dead letter,
or the run's failure.

A process that raises on a delivery publishes an error record to
``Topic.ERROR`` when the program handles errors (some process reads it);
otherwise the exception fails the run, with a note naming the process, the
topic, the message id and the state id. A delivery redelivered more than
``max_deliveries`` times is dead-lettered: committed with an error record in
place of its outputs, so that it never runs again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ._errors import PermflowError, PoisonMessageError
from ._message import Delivery, Message
from ._topic import ERROR_NAME
from ._tracebacks import add_note, mark_step_error

if TYPE_CHECKING:
    from ._delivery import Delivering
    from ._plan import Step

__all__ = ["dead_letter", "describe", "error_record", "step_failed"]

_log = logging.getLogger("permflow.run")


def step_failed(
    run: Delivering, step: Step, delivery: Delivery, source: Message, value: Any, exc: Exception
) -> list[tuple[str, Any]]:
    """What ``step`` failing on ``delivery`` publishes: a ``Topic.ERROR`` record
    when something handles errors; else ``exc`` is raised again, noted."""
    _log.info(
        "process %r failed on a message of topic %r (state id %r): %r",
        step.name,
        source.topic,
        run.state_id,
        exc,
    )
    if run.plan.handles_errors and source.topic != ERROR_NAME:
        return [(ERROR_NAME, error_record(step.name, source.topic, value, exc, delivery.attempt))]
    if run.failed_at is None:
        run.failed_at = (step.name, source.topic)
    add_note(
        exc,
        f"permflow: process {step.name!r} failed on topic {source.topic!r} "
        f"(message id {source.id}, state id {run.state_id!r})",
    )
    mark_step_error(exc)  # the user's frames tell the story: trimmed at the API
    raise exc


async def dead_letter(
    run: Delivering, step: Step, delivery: Delivery, source: Message
) -> list[tuple[Step, Delivery]]:
    """Commit ``delivery``, redelivered too often, with an error record in place
    of its outputs; raise ``PoisonMessageError`` unless something handles errors.
    Returns what the record gave the processes reading ``Topic.ERROR``."""
    attempts = delivery.attempt - 1
    text = (
        f"process {step.name!r} failed on a message of topic {source.topic!r} "
        f"{attempts} times (max_deliveries={run.settings.max_deliveries}); "
        "it was moved to Topic.ERROR"
    )
    value = [m.value for m in delivery.messages] if step.join else source.value
    record = error_record(step.name, source.topic, value, PoisonMessageError(text), attempts)
    error = Message(ERROR_NAME, record, run.state_id, time.time(), "", source.depth + 1)
    handled = run.plan.handles_errors
    capacity = run.capacity
    if not handled and capacity is not None:
        # a client of workers must see the failure before the ack makes the run idle
        await capacity.report_failure(run.state_id, record)
    follow = await run.commit(step, delivery, [error])
    _log.warning("%s (state id %r)", text, run.state_id)
    if not handled:
        raise PoisonMessageError(f"{text} (state id {run.state_id!r})")
    return follow


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON-compatible fields: its type name and message."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return {"error": name, "message": str(exc), "permflow": isinstance(exc, PermflowError)}


def error_record(process: str, topic: str, value: Any, exc: BaseException, attempt: int) -> dict[str, Any]:
    """What a ``Topic.ERROR`` message carries: JSON-compatible, self-describing."""
    return {"process": process, "topic": topic, "input": value, **describe(exc), "attempt": attempt}
