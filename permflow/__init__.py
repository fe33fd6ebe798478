"""permflow: programs as chains that talk over named topics."""

import logging as _logging

from ._cache import clear_local_cache
from ._errors import (
    ConfigError,
    ConnectionFailedError,
    CycleError,
    DefinitionError,
    PermflowError,
    PermflowWarning,
    PoisonMessageError,
    ReplicationError,
    RunTimeoutError,
    SerializationError,
)
from ._execution import Execution
from ._graph import Graph
from ._message import Delivery, Message
from ._process import Process
from ._pubsub import PubSub
from ._remote import NoWorkersError, WorkerRunError
from ._runnable import Runnable, RunnableEach, RunnableLambda, RunnableParallel, RunnableSequence
from ._topic import Topic, route
from .connections import InMemoryPubSubConnection, PubSubConnection, RedisPubSubConnection, Subscription

__version__ = "0.1.0"

# A library logs, the application decides where to: without this handler,
# Python's last-resort handler would print permflow's warnings to stderr.
_logging.getLogger("permflow").addHandler(_logging.NullHandler())

__all__ = [
    "ConfigError",
    "ConnectionFailedError",
    "CycleError",
    "DefinitionError",
    "Delivery",
    "Execution",
    "Graph",
    "InMemoryPubSubConnection",
    "Message",
    "NoWorkersError",
    "PermflowError",
    "PermflowWarning",
    "PoisonMessageError",
    "Process",
    "PubSub",
    "PubSubConnection",
    "RedisPubSubConnection",
    "ReplicationError",
    "RunTimeoutError",
    "Runnable",
    "RunnableEach",
    "RunnableLambda",
    "RunnableParallel",
    "RunnableSequence",
    "SerializationError",
    "Subscription",
    "Topic",
    "WorkerRunError",
    "clear_local_cache",
    "route",
]
