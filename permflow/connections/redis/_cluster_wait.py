"""A durable write on a Redis Cluster, acknowledged once its primary's replicas have it.

``WAIT`` counts the replicas that have what *its own connection* wrote, on the
node it is sent to. So with ``replicas=N`` a durable script goes to the primary
of its run's slot on one connection of that node's pool, followed there by
``WAIT`` in the same round trip (``EVALSHA ... ; WAIT N ms``), rather than
through redis-py's routing, which may take another connection for each command.

Everything redis-py's routing would do is done here on that connection:

- ``MOVED``: the slot map is updated and the call sent to the new owner;
  ``ASK``: sent to the importing node behind ``ASKING``. A redirected script was
  not executed, so sending it again is safe (at most ``_REDIRECTS`` times).
- ``TRYAGAIN`` and ``CLUSTERDOWN`` (refused, never executed) are sent again for
  up to the cluster retry period.
- ``NOSCRIPT``: the script is loaded and sent again, once.
- A connection that drops with the call on the wire: the slot map is read anew
  and the call sent once more, as its twin that is safe whether or not the
  first one ran (``AGAIN``), behind a fence write in the run's slot, so that the
  ``WAIT`` on the fresh connection covers what the lost one wrote. If the
  script's reply had arrived, only the fence and the ``WAIT`` are sent again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._replication import command

if TYPE_CHECKING:
    from ._client import Bound
    from ._replication import Replication

__all__ = ["call_and_wait"]

#: How many MOVED/ASK redirections one call follows at least (for the cluster
#: retry period) before it fails.
_REDIRECTS = 16
_ASKING = command("ASKING")


async def call_and_wait(
    bound: Bound,
    name: str,
    keys: list[str],
    args: list[Any],
    *,
    replication: Replication,
    reconnects: bool,
    deadline: float,
) -> Any:
    """Script ``name`` on its slot's primary, then ``WAIT`` on the same connection:
    its reply (``Unreplicated`` if too few replicas acknowledged it), or the
    exception Redis refused it with; a connection failure is raised."""
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        ClusterDownError,
        MaxConnectionsError,
        MovedError,
        NoScriptError,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as Dropped

    from ._client import AGAIN, _pack

    assert keys, "only durable scripts (which declare their keys) wait"
    client = bound.client
    slot = client.keyslot(keys[0])
    unanswered: Any = _Unanswered
    reply = unanswered
    fence = resent = loaded = False
    redirects = 0
    ask: tuple[str, int] | None = None
    while True:
        await client.initialize()  # after a drop, the client maps the slots anew
        node = client.get_node_from_key(keys[0]) if ask is None else client.get_node(*ask)
        if node is None:  # redirected to a node the map does not know yet
            node, ask = client.get_node_from_key(keys[0]), None
        sent: list[tuple[str, bytes]] = []
        if reply is unanswered:
            sent.append(("script", _pack(bound.scripts[name].sha, keys, args)))
        if fence:
            sent.append(("fence", replication.fence_write_in(slot)))
        if ask is not None:  # ASKING holds for the next command only
            sent = [pair for item in sent for pair in (("asking", _ASKING), item)]
        sent.append(("wait", replication.wait))
        labels = [label for label, _ in sent]
        answers: list[Any] = []
        dropped: Exception | None = None
        try:
            await _exchange(node, b"".join(part for _, part in sent), len(sent), answers)
        except MaxConnectionsError:
            raise  # nothing was sent
        except Dropped as exc:
            if isinstance(exc, AuthenticationError) or not reconnects or resent:
                raise
            dropped = exc
        got = dict(zip(labels, answers, strict=False))  # ASKING's answer is not needed
        answer = got.get("script", unanswered)
        ask = None
        if isinstance(answer, AskError):  # MovedError too: not executed, send it again
            redirects += 1
            if redirects > _REDIRECTS and bound.loop.time() > deadline:
                return answer
            if isinstance(answer, MovedError):
                await client.nodes_manager.move_slot(answer)
            else:
                ask = (answer.host, answer.port)
        elif isinstance(answer, TryAgainError | ClusterDownError):
            if bound.loop.time() > deadline:  # refused, so never executed: safe to resend
                return answer
            await asyncio.sleep(0.1)
        elif isinstance(answer, NoScriptError):
            if loaded:
                return answer
            loaded = True  # this node forgot the script (restart, SCRIPT FLUSH, new node)
            await client.script_load(bound.scripts[name].script)
        elif isinstance(answer, ResponseError):
            return answer  # refused by the script itself: nothing to wait for
        elif answer is not unanswered:
            reply = answer
        if dropped is not None:
            # The connection dropped with the call (or its WAIT) on the wire: once more on
            # a fresh one, in a form safe to send twice, with a fence before the WAIT.
            resent = fence = True
            name = AGAIN.get(name, name)
            client._initialize = True  # as redis-py does after a dropped connection
            continue
        if reply is unanswered:
            continue  # redirected, or refused for now
        waited = [a for label, a in zip(labels, answers, strict=True) if label in ("fence", "wait")]
        wait = next((a for a in waited if isinstance(a, Exception)), waited[-1])
        replies = [reply]
        replication.confirm([(name, keys, args)], replies, [wait])
        return replies[0]


class _Unanswered:
    """No reply of the script has been read yet."""


async def _exchange(node: Any, packed: bytes, count: int, answers: list[Any]) -> None:
    """Send ``packed`` (``count`` commands) on one connection of ``node`` and append
    their replies to ``answers`` as they arrive (a refusal as its exception)."""
    from redis.exceptions import ResponseError

    from ._client import _fresh

    connection = node.acquire_connection()
    try:
        await _fresh(connection)
        await connection.send_packed_command(packed, check_health=False)
        for _ in range(count):
            try:
                answers.append(await connection.read_response())
            except ResponseError as exc:  # read whole: the connection stays usable
                answers.append(exc)
    finally:
        node.release(connection)  # redis-py closed it if it failed midway
