"""``MessageStream``: what ``PubSub.astream`` returns.

``async for message in pubsub.astream(...): break`` must be safe without any
ceremony. An async generator holding the run's task group cannot give that:
Python closes an abandoned generator later, from another task, where exiting
the group's cancel scope is an error. So the run lives in a helper task whose
lifetime this iterator controls, and no cancel scope spans a ``yield``:

* ``aclose()`` (or leaving ``async with``) cancels the run and waits for it;
* an iterator dropped after ``break`` cancels the run as it is collected.

The run's own tasks still live in one task group inside the helper task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import final

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._message import Message

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
    ) -> None:
        self._run = run
        self._finish = finish
        self._send, self._receive = anyio.create_memory_object_stream[Message](math.inf)
        self._helper: _Helper | None = None
        self._thread = threading.get_ident()

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        if self._helper is None:
            self._helper = _Helper(self._run, self._send)
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            return await self._receive.receive()
        await self.aclose()
        if self._helper.failure is not None:
            raise self._helper.failure
        await self._finish()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the run (if still going) and wait until it has stopped."""
        self._receive.close()
        self._send.close()
        helper = self._helper
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

    def __init__(self, messages: Iterator[Message]) -> None:
        self._messages = messages

    def __iter__(self) -> SyncMessageStream:
        return self

    def __next__(self) -> Message:
        return next(self._messages)

    def close(self) -> None:
        """Stop the run (if still going) and wait until it has stopped."""
        close = getattr(self._messages, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> SyncMessageStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
