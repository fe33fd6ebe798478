"""``MessageStream``: what ``PubSub.astream`` returns.

``async for message in pubsub.astream(...): break`` must be safe without any
ceremony. An async generator holding the run's task group cannot give that:
Python closes an abandoned generator later, from another task, where exiting
the group's cancel scope is an error. So the run lives in a helper task whose
lifetime this iterator controls, and no cancel scope spans a ``yield``:

* ``aclose()`` (or leaving ``async with``) cancels the run and waits for it;
* an iterator dropped after ``break`` cancels the run as it is collected.

The run's own tasks still live in one task group inside the helper task.

``SyncMessageStream`` (what ``PubSub.stream`` returns) runs such a stream on
permflow's background loop and hands its messages over through a queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import math
import queue
import threading
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, final

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._message import Message
from ._portal import portal
from ._tracebacks import trim_traceback

__all__ = ["MessageStream", "SyncMessageStream"]

_helpers: set[asyncio.Task[None]] = set()


class _Helper:
    """The task running the run. Holds no reference to its ``MessageStream``,
    so that a dropped stream is collected (and cancels this) while it runs."""

    def __init__(
        self,
        run: Callable[[Callable[[Message], None]], Awaitable[None]],
        send: MemoryObjectSendStream[Message],
    ) -> None:
        self.run = run
        self.send = send
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.failure: BaseException | None = None
        self.wake: Callable[[Callable[[], object]], object]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio
            import trio

            self.wake = trio.lowlevel.current_trio_token().run_sync_soon
            trio.lowlevel.spawn_system_task(self.main, context=contextvars.copy_context())
        else:
            self.wake = loop.call_soon_threadsafe
            task = loop.create_task(self.main())
            _helpers.add(task)
            task.add_done_callback(_helpers.discard)

    def emit(self, message: Message) -> None:
        try:
            self.send.send_nowait(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the consumer left; the run is being cancelled

    async def main(self) -> None:
        try:
            with self.send, self.scope:
                await self.run(self.emit)
        except Exception as exc:
            self.failure = exc
        finally:
            self.done.set()


@final
class MessageStream:
    """Async iterator over a run's messages; also an async context manager."""

    def __init__(
        self,
        run: Callable[[Callable[[Message], None]], Awaitable[None]],
        finish: Callable[[], Awaitable[None]],
        *,
        state_id: str,
    ) -> None:
        self._run = run
        self._finish = finish
        self._send, self._receive = anyio.create_memory_object_stream[Message](math.inf)
        self._helper: _Helper | None = None
        self._thread = threading.get_ident()
        self._state_id = state_id
        self._read = 0
        self._status = "not started"

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        if self._helper is None:
            self._helper = _Helper(self._run, self._send)
            self._status = "running"
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            message = await self._receive.receive()
            self._read += 1
            return message
        await self.aclose()
        if self._helper.failure is not None:
            self._status = f"failed: {type(self._helper.failure).__name__}"
            raise self._helper.failure
        self._status = "finished"
        await self._finish()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the run (if still going) and wait until it has stopped."""
        self._receive.close()
        self._send.close()
        helper = self._helper
        if self._status in ("not started", "running"):
            self._status = "stopped"
        if helper is not None:
            helper.scope.cancel()
            with anyio.CancelScope(shield=True):
                await helper.done.wait()

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return _describe(self._state_id, self._status, self._read)

    def __del__(self) -> None:
        self._receive.close()
        helper = self._helper
        if helper is None:
            self._send.close()
        elif not helper.done.is_set():
            if threading.get_ident() == self._thread:
                helper.scope.cancel()
            else:
                helper.wake(helper.scope.cancel)


@final
class SyncMessageStream:
    """What ``PubSub.stream`` returns: an iterator that is also a context
    manager. ``close()`` (or leaving ``with``) stops the run right away."""

    def __init__(self, open: Callable[[], MessageStream], *, state_id: str) -> None:
        self._messages = _pump(open)
        self._state_id = state_id
        self._status = "not started"
        self._read = 0

    def __iter__(self) -> SyncMessageStream:
        return self

    def __next__(self) -> Message:
        if self._status == "not started":
            self._status = "running"
        try:
            message = next(self._messages)
        except StopIteration:
            if self._status == "running":
                self._status = "finished"
            raise
        except Exception as exc:
            self._status = f"failed: {type(exc).__name__}"
            raise
        self._read += 1
        return message

    def close(self) -> None:
        """Stop the run (if still going) and wait until it has stopped."""
        if self._status in ("not started", "running"):
            self._status = "stopped"
        self._messages.close()

    def __enter__(self) -> SyncMessageStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return _describe(self._state_id, self._status, self._read)


def _describe(state_id: str, status: str, read: int) -> str:
    """What a stream is: its state id, and whether the consumer has started it,
    is reading it, has read it to the end, stopped it early, or saw it fail."""
    messages = f"{read} message{'' if read == 1 else 's'} read"
    return f"<permflow stream of state id {state_id!r} ({status}, {messages})>"


def _pump(open: Callable[[], MessageStream]) -> Generator[Message, None, None]:
    """The messages of ``open()``, a stream run on permflow's background loop;
    closing this generator stops that run and waits for it."""
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    scopes: list[anyio.CancelScope] = []

    async def pump() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            try:
                async with open() as messages:
                    async for message in messages:
                        inbox.put(("message", message))
            except Exception as exc:
                inbox.put(("error", exc))
                return
        inbox.put(("end", None))

    with portal() as p:
        future = p.start_task_soon(pump)
        try:
            while True:
                kind, item = inbox.get()
                if kind == "message":
                    yield item
                elif kind == "error":
                    trim_traceback(item)
                    raise item
                else:
                    return
        finally:
            if not future.done():
                p.call(scopes[0].cancel)
                # the run was cancelled on purpose; its outcome no longer matters
                with contextlib.suppress(concurrent.futures.CancelledError, Exception):
                    future.result()
