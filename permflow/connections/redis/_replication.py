"""Writes acknowledged only once replicas have them (``replicas=N``).

Redis replicates asynchronously: a primary answers a write before any replica
has it, so a failover can lose writes their callers were told are stored. With
``replicas=N``, every batch of script calls that holds a write a caller relies
on (``DURABLE``) is followed, on the same connection and in the same round
trip, by ``WAIT N timeout``: Redis answers it once N replicas have everything
that connection wrote (replication is one ordered stream, so everything written
before too), or after the timeout with how many did. Those calls then return
only if N replicas acknowledged; otherwise they raise ``Unreplicated``, which
the connection turns into ``ReplicationError``.

``WAIT`` waits for the replication offset its own connection last saw. When a
connection drops with calls on the wire and they are sent again on a fresh one,
their twins may find the lost calls already done and write nothing; on a
server that records a connection's offset only when it writes, a ``WAIT`` there
would cover nothing. So a small write goes first (``fence``, a key that expires
within a second): the ``WAIT`` after it covers everything the dropped
connection wrote, on any server version.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

from ..._errors import ConfigError, ReplicationError

__all__ = ["DURABLE", "Replication", "Unreplicated", "command", "replication", "slot_fence"]

#: Scripts whose writes a caller is told are stored: a run's registration, its
#: published input, the commit of a delivery (and the twins sent when a reply
#: was lost), handing deliveries back, failure and stop marks, deletion, and
#: announcements to workers. Leases, fetches, claims and heartbeats are not:
#: losing one costs a redelivery after ``lease`` at most.
DURABLE = frozenset(
    {
        "REGISTER",
        "PUBLISH",
        "REPUBLISH",
        "START",
        "RESTART",
        "COMMIT",
        "RECOMMIT",
        "RELEASE",
        "MARK",
        "DELETE",
        "ANNOUNCE",
        "UNMARK",
    }
)


@dataclass(frozen=True)
class Replication:
    """How many replicas must acknowledge a durable write, and how long to wait."""

    replicas: int
    timeout: float
    fence: str

    @property
    def wait(self) -> bytes:
        """``WAIT replicas timeout_ms`` in the Redis protocol."""
        return command("WAIT", self.replicas, max(1, math.ceil(self.timeout * 1000)))

    @property
    def fence_write(self) -> bytes:
        """A write of this connection's own, so that a ``WAIT`` after it covers
        everything written before on any connection."""
        return command("SET", self.fence, "1", "PX", 1000)

    def fence_write_in(self, slot: int) -> bytes:
        """``fence_write`` on a Redis Cluster: a key of hash slot ``slot``, so that it
        goes to the node (and connection) that wrote the keys of that slot."""
        return command("SET", slot_fence(self.fence, slot), "1", "PX", 1000)

    def confirm(
        self, calls: list[tuple[str, list[str], list[Any]]], replies: list[Any], waits: list[Any]
    ) -> None:
        """Replace the replies of durable ``calls`` by ``Unreplicated`` unless
        every ``WAIT`` of their batch counted enough replicas."""
        refused = next((w for w in waits if isinstance(w, Exception)), None)
        acked = 0 if refused is not None or not waits else min(int(w) for w in waits)
        if acked >= self.replicas:
            return
        for k, (name, _, _) in enumerate(calls):
            if name in DURABLE and not isinstance(replies[k], Exception):
                replies[k] = Unreplicated(acked, self, refused)


class Unreplicated(Exception):
    """A durable call is stored on the primary, on fewer replicas than asked for."""

    def __init__(self, acked: int, replication: Replication, refused: Exception | None = None) -> None:
        super().__init__(f"{acked} of {replication.replicas} replicas acknowledged")
        self.acked = acked
        self.replication = replication
        self.refused = refused

    def convert(self, *, where: str, doing: str) -> ReplicationError:
        needed, timeout = self.replication.replicas, self.replication.timeout
        if self.refused is not None:
            reason = str(self.refused).split(".")[0]
            if "NOPERM" in reason or "permission" in reason:
                reason += "; with replicas= the Redis user needs '+wait' too"
            how = f"WAIT was refused ({reason})"
        else:
            how = f"{self.acked} of {needed} replica{'s' if needed > 1 else ''} acknowledged"
        return ReplicationError(
            f"Redis at {where}: {how} within replica_timeout={timeout}s while {doing}. The write "
            "IS stored on the primary and counts (a committed delivery stays acked), but a "
            "failover before the replicas catch up may lose it. Check the replicas (INFO "
            "replication: link status and lag) or raise replica_timeout; resuming the run with "
            "invoke(None, {'state_id': ...}) carries on from what the primary stored.",
            acknowledged=self.acked,
            replicas=needed,
        )


def replication(
    replicas: object, replica_timeout: object, socket_timeout: float | None, fence: str
) -> Replication | None:
    """The checked settings (None for ``replicas=0``), or ``ConfigError``."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ConfigError(
            f"replicas must be an int of at least 0 (0: do not wait for replicas), got {replicas!r}"
        )
    if (
        isinstance(replica_timeout, bool)
        or not isinstance(replica_timeout, int | float)
        or not 0 < replica_timeout < math.inf
    ):
        raise ConfigError(
            f"replica_timeout must be a positive, finite number of seconds, got {replica_timeout!r}"
        )
    if replicas == 0:
        return None
    if socket_timeout and replica_timeout >= socket_timeout:
        raise ConfigError(
            f"replica_timeout ({replica_timeout}s) must be shorter than socket_timeout ({socket_timeout}s): "
            "the connection waits for the replicas while reading the reply"
        )
    return Replication(replicas, float(replica_timeout), fence)


@functools.lru_cache(maxsize=1024)
def slot_fence(fence: str, slot: int) -> str:
    """A key of hash slot ``slot`` for the fence ``{prefix}:fence``:
    ``{prefix:%f<n>}:fence`` for the first ``n`` that hashes there (``%f`` is no
    escaped state id, so state id listings leave it out)."""
    from redis.crc import key_slot

    prefix = fence[1 : fence.index("}")]
    for n in itertools.count():
        key = f"{{{prefix}:%f{n}}}:fence"
        if key_slot(key.encode()) == slot:
            return key
    raise AssertionError("unreachable")


def command(*parts: object) -> bytes:
    """One command in the Redis protocol."""
    encoded = [str(part).encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)
