"""Redis failures as permflow errors, each with a hint that fits what happened.

A dropped or refused connection, a server that does not answer, bad
credentials, a missing ACL permission, a cluster node, a server too old for
the commands permflow needs, and a key of the wrong type (corrupt data) each
say so, and what to do about it. Corrupt or missing data is a
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

_CLUSTER = ("MOVED", "ASK", "CROSSSLOT")
#: Replies of a server that is up but cannot serve now: an outage, not bad data.
_UNAVAILABLE = ("OOM", "BUSY", "READONLY", "MASTERDOWN", "NOREPLICAS", "LOADING", "TRYAGAIN", "CLUSTERDOWN")


def convert(exc: Exception, *, where: str, prefix: str, doing: str, timeout: float | None) -> PermflowError:
    """``exc``, raised by redis-py while ``doing``, as the permflow error to raise."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
    from redis.exceptions import TimeoutError as NoAnswer

    reason = str(exc).rstrip(".")
    head = f"Redis at {where}"
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
    if reason.startswith(_CLUSTER) or any(f" {word} " in f" {reason} " for word in _CLUSTER):
        return ConnectionFailedError(
            f"{head} answered as a Redis Cluster node while {doing}: {reason}. "
            "RedisPubSubConnection needs one Redis server (a primary), not a cluster."
        )
    if "unknown command" in reason.lower() or "unknown subcommand" in reason.lower():
        return ConnectionFailedError(
            f"{head} does not know a command permflow needs while {doing}: {reason}. permflow "
            "needs Redis 6.2 or later (or Valkey)."
        )
    if reason.startswith(_UNAVAILABLE):
        return ConnectionFailedError(
            f"{head} cannot serve requests now, while {doing}: {reason}. permflow retries where it "
            "is safe; check the server (memory, replication, a long script)."
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
