"""The records that travel between topics: ``Message`` and ``Delivery``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Delivery", "Message", "TrailEntry"]

#: One step of a message's lineage through a process that lies on a cycle:
#: (process name, fingerprint of the value it received, topic it came from).
TrailEntry = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Message:
    """A value published on a topic within one run (state id).

    ``id`` is assigned by the connection when the message is stored; ids grow
    in global publish order within a state id. ``depth`` is the number of
    process hops from the input that caused it (inputs have depth 0).
    """

    topic: str
    value: Any
    state_id: str
    published_at: float
    id: str = ""
    depth: int = 0
    trail: tuple[TrailEntry, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Messages handed to one process, in flight until committed or released.

    A ``subscribe`` process gets one message per delivery; a ``join`` process
    gets every not-yet-joined message of its topic in one delivery.
    ``attempt`` counts how often these messages were delivered to this
    process (1 on first delivery). ``handle`` is the connection's own token.
    ``suspect``: its previous holder vanished while holding it (its lease
    ran out), so it may be what killed that holder; the engine runs it alone
    and charges the attempt (``PubSubConnection.charge``) only when it starts.
    """

    state_id: str
    process: str
    messages: tuple[Message, ...]
    attempt: int = 1
    handle: Any = None
    suspect: bool = False
