"""Filtered subscriptions: ``topic.subscribe(when=predicate)``.

A predicate is a plain sync callable of a message's value. The engine calls
it inline on the event loop, before anything else is spent on the message
(no step, thread hop, concurrency slot or trace span): a message it rejects
is acked with no outputs and is done for that process. A predicate that
raises is that process failing on that message, like a step.
"""

from __future__ import annotations

import dis
import hashlib
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError, DefinitionError
from ._message import Message
from ._runnable import _is_async_callable, callable_name

if TYPE_CHECKING:
    from ._retry import RunnableRetry

__all__ = ["Predicate", "check_predicate", "predicate_name", "select", "select_again"]

#: ``predicate(value)`` is truthy for the messages a filtered process runs on.
Predicate = Callable[[Any], Any]


def check_predicate(when: Any, where: str) -> Predicate | None:
    """``when`` if it can filter the messages of ``where`` (a head such as
    ``Topic('a').subscribe()``), else ``DefinitionError`` saying why."""
    if when is None:
        return None
    if not callable(when):
        raise DefinitionError(
            f"{where}: when= must be a function of a message's value returning true for the "
            f"messages to run on, got {when!r} of type {type(when).__name__}"
        )
    if _is_async_callable(when):
        raise DefinitionError(
            f"{where}: when={predicate_name(when)} is an async function; a predicate runs inline "
            "on the event loop and must be a plain (sync) function: decide in a step instead if "
            "it needs to await"
        )
    predicate: Predicate = when
    return predicate


def predicate_name(when: Predicate) -> str:
    """How a predicate appears in a derived process name. A lambda's carries a
    digest of its code that, unlike a lambda step's, also covers its operators:
    ``lambda v: v > 1`` and ``lambda v: v < 1`` are the whole difference
    between two filtered chains, so they must not share a name (a name that
    would then depend on the chains' order)."""
    name = callable_name(when)
    code = getattr(when, "__code__", None)
    if "#" not in name or code is None:
        return name
    operators = "\x00".join(_operators(code))
    extra = hashlib.blake2b(operators.encode(), digest_size=2).hexdigest()
    return f"{name}{extra}"


#: Instructions whose argument is an operator, and how to read it stably across
#: Python versions (3.13 writes a comparison feeding a test as ``bool(>)``).
_OPERATOR_CODES = {
    "COMPARE_OP": "argrepr",
    "BINARY_OP": "argrepr",
    "CONTAINS_OP": "argval",
    "IS_OP": "argval",
}


def _operators(code: Any) -> list[str]:
    found: list[str] = []
    for instruction in dis.get_instructions(code):
        how = _OPERATOR_CODES.get(instruction.opname)
        if how is not None:
            text = str(getattr(instruction, how))
            found.append(f"{instruction.opname}:{text.removeprefix('bool(').removesuffix(')')}")
        elif instruction.opname.startswith("UNARY_"):
            found.append(instruction.opname)
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            found.extend(_operators(const))
    return found


def select(when: Predicate, messages: Sequence[Message]) -> list[Message]:
    """The ``messages`` whose value satisfies ``when``, in order. Whatever the
    predicate raises propagates: the process failed on that delivery."""
    kept = []
    for message in messages:
        verdict = when(message.value)
        if verdict.__class__ is not bool and inspect.isawaitable(verdict):
            if inspect.iscoroutine(verdict):
                verdict.close()
            raise ConfigError(
                f"predicate {predicate_name(when)!r} returned an awaitable; when= takes a plain "
                "function returning true or false"
            )
        if verdict:
            kept.append(message)
    return kept


async def select_again(
    when: Predicate, messages: Sequence[Message], retry: RunnableRetry | None, failure: Exception
) -> list[Message]:
    """``select`` after it raised ``failure``: a chain's ``with_retry`` policy
    covers its predicate as it covers its steps (same attempts, waits and
    exception types). Raises the last failure when the attempts are spent."""
    from . import _retry

    if retry is None or not isinstance(failure, retry.retry_on):
        raise failure
    for attempt in range(1, retry.attempts):
        await _retry._sleep(retry.wait_before(attempt))
        try:
            return select(when, messages)
        except Exception as exc:
            if not isinstance(exc, retry.retry_on):
                raise
            failure = exc
    raise failure
