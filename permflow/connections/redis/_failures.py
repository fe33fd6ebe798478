"""Redis failures as permflow errors, each with a hint that fits what happened.

A dropped or refused connection, a server that does not answer, bad
credentials, a missing ACL permission, a cluster node reached without cluster
mode, a cluster that is down or moving slots, a server too old for the commands
permflow needs, and a key of the wrong type (corrupt data) each say so, and
what to do about it. Corrupt or missing data is a
``CorruptEntryError`` (the run is broken, the store is fine); everything else a
``ConnectionFailedError`` (the store, or the way to it, is at fault).
"""

from __future__ import annotations

from ..._errors import ConnectionFailedError, PermflowError
from ..._serialization import CorruptEntryError

__all__ = ["ACL_COMMANDS", "convert"]

#: The command categories a restricted Redis user needs (README, "Redis users
#: and ACLs"; tested in tests/test_faults.py).
ACL_COMMANDS = "+@scripting +@stream +@hash +@set +@string +@keyspace -@dangerous"

_REDIRECTED = ("MOVED", "ASK")
#: Replies about keys a cluster node does not serve (a slot moving, or keys of
#: several slots in one call): about the cluster's layout, not the data.
_NOT_LOCAL = ("CROSSSLOT", "non local key", "non-local key", "not served by this node")
#: Replies of a server that is up but cannot serve now: an outage, not bad data.
_UNAVAILABLE = ("OOM", "BUSY", "READONLY", "MASTERDOWN", "NOREPLICAS", "LOADING", "TRYAGAIN", "CLUSTERDOWN")


def convert(
    exc: Exception, *, where: str, prefix: str, doing: str, timeout: float | None, cluster: bool = False
) -> PermflowError:
    """``exc``, raised by redis-py while ``doing``, as the permflow error to raise."""
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        ClusterDownError,
        NoPermissionError,
        RedisClusterException,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import TimeoutError as NoAnswer

    reason = str(exc).rstrip(".")
    head = f"Redis at {where}"
    if isinstance(exc, RedisClusterException):
        if "not enabled" in reason.lower():
            return ConnectionFailedError(
                f"{head} is not a Redis Cluster, while {doing}: {reason}. Connect to one server "
                "with redis:// (or rediss://), without '+cluster' and cluster=True."
            )
        return ConnectionFailedError(
            f"The Redis Cluster at {where} could not serve a call while {doing}: "
            f"{type(exc).__name__}: {reason}. Check that its nodes are reachable and cover every "
            "hash slot (redis-cli --cluster check HOST:PORT); the next call maps the cluster anew."
        )
    if isinstance(exc, AuthenticationError) or reason.startswith(("NOAUTH", "WRONGPASS", "invalid username")):
        return ConnectionFailedError(
            f"{head} refused the credentials while {doing}: {reason}. Check the user name and "
            "password in the URL (redis://user:password@host:port/db)."
        )
    if isinstance(exc, NoAnswer):
        after = f" within the socket timeout ({timeout}s)" if timeout else ""
        return ConnectionFailedError(
            f"{head} did not answer{after} while {doing}: {reason}. The server may be frozen, "
            "overloaded or cut off by the network; nothing was stored by a call that timed out "
            "unless its run says so when resumed."
        )
    if not isinstance(exc, ResponseError):  # the connection failed or dropped
        return ConnectionFailedError(
            f"{head} failed while {doing}: {type(exc).__name__}: {reason}. Check that the server "
            "is running and reachable; the next call reconnects."
        )
    if isinstance(exc, NoPermissionError) or "NOPERM" in reason or "can't run this command" in reason:
        reason = reason if "NOPERM" in reason else f"NOPERM {reason}"
        return ConnectionFailedError(
            f"{head} denied a command while {doing}: {reason}. The Redis user needs the key "
            f"patterns '~{{{prefix}:*' and '~{{{prefix}}}:*' and the commands '{ACL_COMMANDS}' "
            "(see the README, 'Redis users and ACLs')."
        )
    # redis-py strips the error code of the replies it parses into their own types
    if isinstance(exc, AskError):  # MovedError too
        reason = f"{'MOVED' if type(exc).__name__ == 'MovedError' else 'ASK'} {reason}"
    elif isinstance(exc, ClusterDownError | TryAgainError) and not reason.startswith(_UNAVAILABLE):
        reason = f"{'TRYAGAIN' if isinstance(exc, TryAgainError) else 'CLUSTERDOWN'} {reason}"
    redirected = reason.startswith(_REDIRECTED) or any(f" {w} " in f" {reason} " for w in _REDIRECTED)
    if redirected and not cluster:
        return ConnectionFailedError(
            f"{head} is a Redis Cluster node, and the keys of this call live on another node, "
            f"while {doing}: {reason}. Connect in cluster mode: redis+cluster://host:port (or "
            "from_url(..., cluster=True), or pass a redis.asyncio.RedisCluster client)."
        )
    if redirected or any(word.lower() in reason.lower() for word in _NOT_LOCAL):
        return ConnectionFailedError(
            f"The Redis Cluster at {where} kept sending a call elsewhere while {doing}: {reason}. "
            "Its slots are moving (resharding, failover) or its nodes disagree about them; nothing "
            "was changed by the refused call. Try again once the cluster settles "
            "(redis-cli --cluster check HOST:PORT)."
        )
    lowered = reason.lower()
    if any(text in lowered for text in ("unknown command", "unknown subcommand", "unknown redis command")):
        return ConnectionFailedError(
            f"{head} does not know a command permflow needs while {doing}: {reason}. permflow "
            "needs Redis 6.2 or later (or Valkey)."
        )
    if reason.startswith(_UNAVAILABLE):
        return ConnectionFailedError(
            f"{head} cannot serve requests now, while {doing}: {reason}. permflow retries where it "
            "is safe; check the server (memory, replication, a long script) or, on a Redis "
            "Cluster, that every slot is served (redis-cli --cluster check HOST:PORT)."
        )
    if "WRONGTYPE" in reason:
        return CorruptEntryError(
            f"{head}: a key permflow uses holds another type of value, while {doing}: {reason}. "
            f"Something other than permflow wrote under prefix {prefix!r}: inspect the keys of "
            "that state id, or delete it."
        )
    # Anything else the server refuses (a missing consumer group, a script error on
    # unexpected data) is about the keys of this run, not the server: corrupt data.
    return CorruptEntryError(
        f"{head} refused a command while {doing}: {reason}. A key under prefix {prefix!r} is "
        "missing or was changed by another program (evicted, deleted by hand): inspect the keys "
        "of that state id, or delete it."
    )
