"""Exceptions raised by permflow.

Every error permflow raises on its own account derives from one root::

    PermflowError
     ├── DefinitionError      (also ValueError)   a topic, chain or PubSub is malformed
     ├── ConfigError          (also ValueError, TypeError) an argument or config value is invalid
     ├── CycleError           (also RecursionError) a run looped: depth limit or exact repeat
     ├── SerializationError   (also TypeError)    a value cannot be stored by the connection
     ├── PoisonMessageError                        a delivery kept failing; it was dead-lettered
     ├── RunTimeoutError      (also TimeoutError)  a run passed its ``timeout``
     ├── NoWorkersError                            no worker was alive to take a run (_remote)
     ├── WorkerRunError                            a run failed on a worker with a foreign error (_remote)
     └── ConnectionFailedError                     the store (e.g. Redis) could not be reached
          └── ReplicationError                     a write is stored, but not on enough replicas

Exceptions raised by user steps are not wrapped: ``invoke`` re-raises them
with their own type and message.

Warnings: ``PermflowWarning`` (a ``UserWarning``) for definitions that are
valid but almost certainly not what was meant (see ``PubSub(inputs=...)``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionFailedError",
    "CycleError",
    "DefinitionError",
    "PermflowError",
    "PermflowWarning",
    "PoisonMessageError",
    "ReplicationError",
    "RunTimeoutError",
    "SerializationError",
]


class PermflowError(Exception):
    """Root of every error permflow raises on its own account."""


class PermflowWarning(UserWarning):
    """A definition that works but is almost certainly a mistake (a topic no
    process publishes to, no way to reach ``Topic.OUT``)."""


class DefinitionError(PermflowError, ValueError):
    """A topic, chain or PubSub definition is invalid (raised at build time)."""


class ConfigError(PermflowError, ValueError, TypeError):
    """An argument or ``config`` value is invalid (a wrong type or value):
    raised before anything runs or is stored."""


class CycleError(PermflowError, RecursionError):
    """A run looped: its lineage passed ``recursion_limit``, or a process
    received an equal value again along one lineage.

    ``topics`` names the topics of the cycle, in order, when known.
    """

    def __init__(self, message: str, *, topics: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.topics = topics


class SerializationError(PermflowError, TypeError):
    """A published value cannot be stored by the connection.

    Raised before anything of the failing commit is stored.
    """


class PoisonMessageError(PermflowError):
    """A delivery failed ``max_deliveries`` times and was moved to ``Topic.ERROR``."""


class RunTimeoutError(PermflowError, TimeoutError):
    """A run did not become idle within its ``timeout``."""


class ConnectionFailedError(PermflowError):
    """The connection's store could not be reached or answered with an error."""


class ReplicationError(ConnectionFailedError):
    """A write is stored on the primary, but fewer replicas than asked for
    (``RedisPubSubConnection(replicas=N)``) acknowledged it in time: a failover
    before they catch up may lose it.

    ``acknowledged`` and ``replicas`` say how many replicas acknowledged and how
    many were asked for.
    """

    def __init__(self, message: str, *, acknowledged: int, replicas: int) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.replicas = replicas
