"""Connections: where runs are stored. The engine talks only to ``PubSubConnection``."""

from ._base import PubSubConnection, Subscription
from .memory import InMemoryPubSubConnection

__all__ = ["InMemoryPubSubConnection", "PubSubConnection", "Subscription"]
