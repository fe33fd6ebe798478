"""The records that travel between topics: ``Message`` and ``Delivery``."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Delivery", "Message", "MessageList", "TrailEntry"]

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


class MessageList(list[Message]):
    """What ``peek`` returns: a plain list of messages, drawn as a table in Jupyter."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        """An HTML table: id, topic, value (shortened repr), depth, published at."""
        from ._markup import escape, shorten

        state_ids = {message.state_id for message in self}
        whose = f" of state id {next(iter(state_ids))!r}" if len(state_ids) == 1 else ""
        count = f"{len(self)} message{'' if len(self) == 1 else 's'}{whose}"
        rows = [
            f"<tr><td>{escape(str(m.id))}</td><td>{escape(str(m.topic))}</td>"
            f"<td><code>{escape(shorten(_short_repr(m.value), MAX_VALUE))}</code></td>"
            f"<td>{escape(str(m.depth))}</td><td>{escape(_when(m.published_at))}</td></tr>"
            for m in self[:MAX_ROWS]
        ]
        if len(self) > MAX_ROWS:
            more = f"… {len(self) - MAX_ROWS} more (index the list to see them)"
            rows.append(f'<tr><td colspan="5">{more}</td></tr>')
        return (
            f'<table class="permflow-messages"><caption>{escape(count)}</caption>'
            "<thead><tr><th>id</th><th>topic</th><th>value</th><th>depth</th>"
            "<th>published at</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )


#: Longest value repr shown in a table cell, and most rows shown.
MAX_VALUE, MAX_ROWS = 120, 500
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = MAX_VALUE, MAX_VALUE, 3


def _short_repr(value: Any) -> str:
    try:
        return _REPR.repr(value)
    except Exception as exc:  # a value whose repr fails still gets a row
        return f"<{type(value).__name__}: repr failed with {type(exc).__name__}>"


def _when(published_at: float) -> str:
    """Local date and time, to the millisecond."""
    try:
        return datetime.fromtimestamp(published_at).isoformat(sep=" ", timespec="milliseconds")
    except (ValueError, OverflowError, OSError, TypeError):
        return repr(published_at)
