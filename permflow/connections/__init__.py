"""Connections: where runs are stored. The engine talks only to ``PubSubConnection``."""

from ._base import PubSubConnection, Subscription
from .memory import InMemoryPubSubConnection
from .redis import RedisPubSubConnection  # imports redis-py only when first used

__all__ = ["InMemoryPubSubConnection", "PubSubConnection", "RedisPubSubConnection", "Subscription"]
