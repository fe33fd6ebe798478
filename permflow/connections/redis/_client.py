"""One redis client bound to one event loop, sending scripts in batches.

A script call costs the client far more (packing, taking a pooled connection,
a system call each way, parsing) than it costs Redis. When one call is on the
wire, calls made meanwhile on the same loop queue up and leave together as one
pipeline when it returns: an idle client answers at once, a busy one amortises
the per-call cost over everything waiting. Each call is still one script, so
each state change stays atomic; a pipeline only shares the round trip.

Dropped connections: a connection the server closed while it sat idle is
noticed before anything is sent on it and replaced. When a connection drops
with calls on the wire, each call whose reply was lost is sent once more on a
fresh connection, in a form that is safe whether or not the first one ran
(``AGAIN``). A server that does not answer at all is not retried: the call
fails after the socket timeout.

On a Redis Cluster client each script goes to the primary of its run's hash
slot by itself (every script declares its keys, which share one slot), at most
``_CLUSTER_CONCURRENCY`` at once per loop. redis-py follows MOVED and ASK
redirections and waits out TRYAGAIN; a call refused with CLUSTERDOWN (never
executed) is sent again for up to ``_CLUSTER_RETRY_SECONDS``, and a dropped
connection is handled as above. redis-py's own resending is bypassed (calls
name their node), so no call is ever executed twice by accident.

With ``replicas=N`` (``_replication``), a batch that holds a durable write ends
with ``WAIT`` on the same connection, sent and answered in the same round trip;
on a cluster, each durable script and its ``WAIT`` share one connection to the
slot's primary (``_cluster_wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import anyio

from ..._errors import ConfigError
from . import _scripts as lua
from . import _work_scripts as work_lua
from ._cluster_wait import call_and_wait
from ._replication import DURABLE, Replication

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["Bound"]

_SCRIPTS = {
    "REGISTER": lua.REGISTER,
    "PUBLISH": lua.PUBLISH,
    "COMMIT": lua.COMMIT,
    "FETCH": lua.FETCH,
    "RENEW": lua.RENEW,
    "RELEASE": lua.RELEASE,
    "SKIP": lua.SKIP,
    "UNFETCH": lua.UNFETCH,
    "OUTSTANDING": lua.OUTSTANDING,
    "DELETE": lua.DELETE,
    "MARK": lua.MARK,
    "CLAIM": work_lua.CLAIM,
    "RENEW_CLAIMS": work_lua.RENEW_CLAIMS,
    "FINISH": work_lua.FINISH,
    "PROGRESS": work_lua.PROGRESS,
    "ANNOUNCE": work_lua.ANNOUNCE,
    "UNMARK": work_lua.UNMARK,
    "HEARTBEAT": work_lua.HEARTBEAT,
    "LIVE_WORKERS": work_lua.LIVE_WORKERS,
    "CHARGE": lua.CHARGE,
    "RECOMMIT": lua.RECOMMIT,
    "REFETCH": lua.REFETCH,
    "REPUBLISH": lua.REPUBLISH,
    "ACK_FETCH": lua.ACK_FETCH,
    "REACK_FETCH": lua.REACK_FETCH,
    "START": lua.START,
    "RESTART": lua.RESTART,
}

#: What to send when a call's reply was lost with its connection. Every other
#: script is idempotent (sending it twice does what sending it once does) or,
#: like CLAIM, harmless twice; these would not be, so each has a twin that
#: first finds out what the lost call did.
AGAIN = {
    "COMMIT": "RECOMMIT",
    "PUBLISH": "REPUBLISH",
    "FETCH": "REFETCH",
    "ACK_FETCH": "REACK_FETCH",
    "START": "RESTART",
}

_Call = tuple[str, list[str], list[Any], "asyncio.Future[Any]"]

#: Script calls one loop has on the wire at once on a Redis Cluster client
#: (each takes a connection of its node's pool, 100 by default).
_CLUSTER_CONCURRENCY = 32
#: How long a call refused by a cluster that is down or changing (CLUSTERDOWN,
#: an uncovered slot) is sent again before it fails.
_CLUSTER_RETRY_SECONDS = 5.0


class Bound:
    """One redis client and its scripts, bound to one event loop."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        loop: asyncio.AbstractEventLoop,
        *,
        own_pool: bool,
        reconnects: bool = True,
        cluster: bool = False,
        replication: Replication | None = None,
    ) -> None:
        self.client: Any = client  # replies are parsed by hand by the connection
        self.loop = loop
        self.cluster = cluster
        self._slots = asyncio.Semaphore(_CLUSTER_CONCURRENCY) if cluster else None
        self.scripts = {name: client.register_script(source) for name, source in _SCRIPTS.items()}
        # (state id, process, owner) -> FETCH reply a commit fetched ahead. The engine
        # asks for it right after the commit returns, before this loop runs anything
        # else; whatever is still here at any other call was not wanted.
        self.ahead: dict[tuple[str, str, str], tuple[Any, Any, bytes]] = {}
        self._direct = 0
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        # Calls made one at a time (a run alone on its loop) reuse one connection
        # rather than taking and returning a pooled one each time. Only in a pool
        # this connection made: a pool you passed in is not ours to hold from.
        self._keep = own_pool
        self._kept: Any = None
        self._reconnects = reconnects
        self._replication = replication

    async def aclose(self) -> None:
        """Close the client's connections. A cluster client whose last call failed
        on a lost node (it means to map the slots anew) skips its own closing, so
        its nodes are closed here as well."""
        await self.client.aclose()
        if self.cluster:
            manager = self.client.nodes_manager
            for nodes in ("nodes_cache", "startup_nodes"):
                with contextlib.suppress(Exception):  # a node already gone: nothing to close
                    await manager.aclose(nodes)

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self._direct and self._sender is None:
            self._direct += 1
            try:
                (reply,) = await self._exchange([(name, keys, args)], alone=True)
            finally:
                self._direct -= 1
            if isinstance(reply, Exception):
                raise reply
            return reply
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
        try:
            replies = await self._exchange([call[:3] for call in batch])
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
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _exchange(
        self, calls: list[tuple[str, list[str], list[Any]]], *, alone: bool = False
    ) -> list[Any]:
        """Send ``calls`` at once; their replies (an exception for a refused one).
        ``alone``: no other call is on the wire (it may use the kept connection)."""
        from redis.exceptions import AuthenticationError, NoScriptError
        from redis.exceptions import ConnectionError as Dropped

        if self.cluster:
            # each call on its own: one failing neither fails the others nor leaves them
            # running unowned (re-mapping the slots after the client was closed)
            answers = await asyncio.gather(*(self._cluster_call(*c) for c in calls), return_exceptions=True)
            for answer in answers:
                if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                    raise answer
            return list(answers)
        replies: list[Any] = []
        # the replies of the WAITs that end the batch (durable writes only); a
        # reply lost with its connection is sent again, and so is its WAIT
        waits: list[Any] | None = None
        if self._replication is not None and any(call[0] in DURABLE for call in calls):
            waits = []
        try:
            await self._write_read(calls, alone, replies, waits)
        except _NotSent as exc:  # nothing reached the server (it is down): nothing to resend
            raise exc.error from exc.error.__cause__
        except Dropped as exc:
            if isinstance(exc, AuthenticationError) or not self._reconnects:
                raise
            # The connection dropped with calls on the wire: send the unanswered ones
            # again on a fresh connection, each in a form safe to send twice.
            lost = [(AGAIN.get(name, name), keys, args) for name, keys, args in calls[len(replies) :]]
            calls = calls[: len(replies)] + lost
            again: list[Any] = []
            if lost or waits is not None:
                try:
                    await self._write_read(lost, False, again, waits, fence=True)
                except _NotSent as down:  # the server went away meanwhile
                    raise down.error from exc
            replies += again
        missing = [k for k, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # the server forgot the scripts (restart, SCRIPT FLUSH): load, send again
            for name in {calls[k][0] for k in missing}:
                await self.client.script_load(self.scripts[name].script)
            again = []
            await self._write_read([calls[k] for k in missing], alone, again, waits)
            for k, reply in zip(missing, again, strict=True):
                replies[k] = reply
        if waits is not None:
            assert self._replication is not None
            self._replication.confirm(calls, replies, waits)
        return replies

    async def _cluster_call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script on the primary of its slot: its reply, or the exception
        Redis refused it with (anything else is raised)."""
        from redis.exceptions import (
            AuthenticationError,
            ClusterDownError,
            NoScriptError,
            ResponseError,
            SlotNotCoveredError,
        )
        from redis.exceptions import ConnectionError as Dropped

        assert self._slots is not None
        client = self.client
        deadline = self.loop.time() + _CLUSTER_RETRY_SECONDS
        resent = loaded = False
        async with self._slots:
            if self._replication is not None and name in DURABLE:  # WAIT on its connection
                return await call_and_wait(
                    self, name, keys, args,
                    replication=self._replication, reconnects=self._reconnects, deadline=deadline,
                )  # fmt: skip
            while True:
                try:
                    await client.initialize()  # after a failure, the client maps the slots anew
                    node = client.get_node_from_key(keys[0]) if keys else client.get_random_node()
                    sha = self.scripts[name].sha
                    command = ("EVALSHA", sha, len(keys), *keys, *args)
                    return await client.execute_command(*command, target_nodes=node)
                except NoScriptError:
                    if loaded:
                        raise
                    loaded = True  # this node forgot the script (restart, SCRIPT FLUSH, new node)
                    await client.script_load(self.scripts[name].script)
                except (ClusterDownError, SlotNotCoveredError):
                    if self.loop.time() > deadline:  # refused, so never executed: safe to resend
                        raise
                    await asyncio.sleep(0.1)
                except ResponseError as exc:
                    return exc
                except Dropped as exc:
                    if isinstance(exc, AuthenticationError) or not self._reconnects or resent:
                        raise
                    resent = True  # the reply was lost: send it once more, in a form safe twice
                    name = AGAIN.get(name, name)

    async def _write_read(
        self,
        calls: list[tuple[str, list[str], list[Any]]],
        alone: bool,
        replies: list[Any],
        waits: list[Any] | None = None,
        *,
        fence: bool = False,
    ) -> None:
        """Send ``calls`` on one connection and append their replies to ``replies``
        as they arrive (so a caller knows which were answered if it drops). With
        ``waits``, end with ``WAIT`` (after a fence write if ``fence``: a fresh
        connection) and append its reply there."""
        from redis.exceptions import ResponseError

        pool = getattr(self.client, "connection_pool", None)
        tail: list[bytes] = []
        if waits is not None and self._replication is not None:
            tail = [self._replication.fence_write] if fence else []
            tail.append(self._replication.wait)
        if tail and pool is None:  # WAIT must follow the writes on their connection
            raise ConfigError(
                "replicas= needs a client with one connection pool (redis.asyncio.Redis), "
                f"not {type(self.client).__name__}"
            )
        if pool is None:  # e.g. a cluster client: let it route the pipeline
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(self.scripts[name].sha, len(keys), *keys, *args)
            async with pipe:
                replies += await pipe.execute(raise_on_error=False)
            return
        packed = b"".join(_pack(self.scripts[name].sha, keys, args) for name, keys, args in calls)
        packed += b"".join(tail)
        keep = alone and self._keep
        if keep and self._kept is not None:
            connection, self._kept = self._kept, None
        else:
            try:
                connection = await pool.get_connection()
            except Exception as exc:
                raise _NotSent(exc) from exc
        try:
            try:
                await _fresh(connection)
            except Exception as exc:
                raise _NotSent(exc) from exc
            await _send(connection, packed)
            for _ in calls:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # the reply was read whole: the socket stays usable
                    replies.append(exc)
            if waits is not None and tail:
                answers = []
                for _ in tail:
                    try:
                        answers.append(await connection.read_response())
                    except ResponseError as exc:  # e.g. WAIT sent to a replica
                        answers.append(exc)
                waits.append(next((a for a in answers if isinstance(a, Exception)), answers[-1]))
        except BaseException:
            # redis-py closed the socket on the way out: a half-read reply never
            # reaches the next call. The connection object goes back to the pool,
            # even from a cancelled caller (or the pool would shrink for good).
            with anyio.CancelScope(shield=True) as scope:
                # no network wait here (the socket is already closed), bounded all the same
                scope.deadline = anyio.current_time() + 1.0
                await pool.release(connection)
            raise
        if keep:
            self._kept = connection
        else:
            await pool.release(connection)


class _NotSent(Exception):
    """Connecting failed: no call of the batch reached the server."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def _fresh(connection: Any) -> None:
    """Make sure ``connection`` is open and was not closed by the server while
    it sat idle (a killed client, a restart): sending on it would lose the call."""
    check = getattr(connection, "can_read", None) or connection.can_read_destructive  # redis-py < 8
    try:
        stale = await check()
    except Exception:  # not connected, or the socket is gone
        stale = True
    if stale:
        await connection.disconnect()
        await connection.connect()


async def _send(connection: Any, packed: bytes) -> None:
    """Send ``packed`` on ``connection``. A write the socket takes at once (the
    usual case: a few hundred bytes) costs no task: redis-py would wrap it in
    ``asyncio.wait_for``, which starts one per call. A write that must wait for
    the socket goes through redis-py (its socket timeout and error handling)."""
    writer: Any = getattr(connection, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or transport.is_closing() or transport.get_write_buffer_size():
        await connection.send_packed_command(packed, check_health=False)
        return
    writer.write(packed)
    if transport.get_write_buffer_size():  # the socket did not take it all: wait, bounded
        await connection.send_packed_command(b"", check_health=False)


def _pack(sha: str, keys: list[str], args: list[Any]) -> bytes:
    """``EVALSHA sha len(keys) *keys *args`` in the Redis protocol."""
    items: list[bytes] = []
    for item in (*keys, *args):
        kind = type(item)  # the exact types first: this runs for every argument of every call
        if kind is str:
            items.append(item.encode())
        elif kind is bytes:
            items.append(item)
        elif kind is int or kind is float:
            items.append(repr(item).encode())
        elif isinstance(item, bytes):
            items.append(bytes(item))
        elif isinstance(item, str):
            items.append(str(item).encode())
        elif isinstance(item, int | float) and not isinstance(item, bool):
            items.append(repr(item).encode())
        else:
            raise TypeError(f"cannot send {type(item).__name__} to Redis")
    count = b"%d" % len(keys)
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%s\r\n" % (
        3 + len(items), sha.encode(), len(count), count
    )  # fmt: skip
    return head + b"".join([b"$%d\r\n%b\r\n" % (len(data), data) for data in items])
