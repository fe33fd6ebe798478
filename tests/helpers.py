"""Small helpers shared by test modules (imported as ``helpers``)."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from permflow import PubSubConnection


async def each_line(stream: AsyncIterable[bytes]) -> AsyncIterator[list[str]]:
    """The lines of a byte stream (a subprocess's stderr) as they arrive, a chunk's worth at a time."""
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield [raw.decode(errors="replace") for raw in complete]


def call_with_deadline(func: Callable[[], Any], seconds: float = 20) -> Any:
    """Call ``func`` in a daemon thread; fail (instead of hanging) if it does not return."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(("ok", func()))
        except BaseException as exc:
            box.append(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"call did not return within {seconds}s: deadlock")
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


async def wakes_a_waiter(
    connection: PubSubConnection, state_id: str, action: Callable[[], Awaitable[object]]
) -> None:
    """Start a ``wait_for_change`` on ``state_id``, run ``action``, and return once the
    waiter woke (a 10 s backstop fails the test if it never does)."""
    woke = anyio.Event()

    async def waiter() -> None:
        await connection.wait_for_change(state_id, 30)
        woke.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await action()
            await woke.wait()


def mermaid_labels(mermaid: str) -> list[tuple[str, str]]:
    """Each quoted label of a Mermaid drawing as (HTML Mermaid makes of it, text a
    browser shows), following Mermaid's ``encodeEntities``/``decodeEntities``:
    ``#35;`` becomes ``&#35;``, ``#lt;`` becomes ``&lt;``; lines naming
    ``style``/``classDef`` with a colour lose their last ``;``."""
    text = re.sub(r"style.*:\S*#.*;", lambda m: m.group()[:-1], mermaid)
    text = re.sub(r"classDef.*:\S*#.*;", lambda m: m.group()[:-1], text)

    def entity(match: re.Match[str]) -> str:
        code = match.group(1)
        return f"&#{code.lstrip('+')};" if re.fullmatch(r"\+?[0-9]+", code) else f"&{code};"

    text = re.sub(r"#([A-Za-z0-9_]+);", entity, text)
    return [(label, html.unescape(label)) for label in re.findall(r'\["(.*?)"\]', text)]


def counted(calls: list[Any], *, fail_first: int = 0, is_async: bool = False) -> Callable[[Any], Any]:
    """A step that records each real execution and doubles its input (the first
    ``fail_first`` executions raise ``RuntimeError``)."""

    def double(x: Any) -> Any:
        calls.append(x)
        if len(calls) <= fail_first:
            raise RuntimeError(f"attempt {len(calls)} failed")
        return x * 2

    async def adouble(x: Any) -> Any:
        return double(x)

    return adouble if is_async else double
