"""One redis client bound to one event loop, sending scripts in batches.

A script call costs the client far more (packing, taking a pooled connection,
a system call each way, parsing) than it costs Redis. When one call is on the
wire, calls made meanwhile on the same loop queue up and leave together as one
pipeline when it returns: an idle client answers at once, a busy one amortises
the per-call cost over everything waiting. Each call is still one script, so
each state change stays atomic; a pipeline only shares the round trip.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from . import _redis_scripts as lua

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Bound"]

_NAMES = ("REGISTER", "PUBLISH", "COMMIT", "FETCH", "RENEW", "RELEASE", "SKIP", "UNFETCH", "DELETE")

_Call = tuple[str, list[str], list[Any], "asyncio.Future[Any]"]


class Bound:
    """One redis client and its scripts, bound to one event loop."""

    def __init__(self, client: Redis, loop: asyncio.AbstractEventLoop) -> None:
        self.client: Any = client  # replies are parsed by hand by the connection
        self.loop = loop
        self.scripts = {name: client.register_script(getattr(lua, name)) for name in _NAMES}
        # (state id, process, owner) -> FETCH reply a commit fetched ahead. The engine
        # asks for it right after the commit returns, before this loop runs anything
        # else; whatever is still here at any other call was not wanted.
        self.ahead: dict[tuple[str, str, str], tuple[Any, Any, bytes]] = {}
        self._direct = 0
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self._direct and self._sender is None:
            self._direct += 1
            try:
                return await self.scripts[name](keys=keys, args=args)
            finally:
                self._direct -= 1
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue.append((name, keys, args, future))
        if self._sender is None:
            self._sender = self.loop.create_task(self._send_queued())
        return await future

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                # A caller cancelled before its call left gives it up, as with a direct call.
                batch = [call for call in self._queue if not call[3].done()]
                self._queue = []
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None
            for *_, future in self._queue:  # only left behind if this task was cancelled
                future.cancel()
            self._queue = []

    async def _send(self, batch: list[_Call]) -> None:
        from redis.exceptions import NoScriptError

        try:
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.evalsha(self.scripts[name].sha, len(keys), *keys, *args)
            async with pipe:
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for *_, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (name, keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):  # the server forgot the scripts (restart, flush)
                try:
                    reply = await self.scripts[name](keys=keys, args=args)
                except Exception as exc:
                    reply = exc
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
