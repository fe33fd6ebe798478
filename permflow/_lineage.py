"""Lineage of messages: depth, and exact-repeat detection on cycles."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ._errors import CycleError
from ._message import Message, TrailEntry

__all__ = ["check_repeat", "depth_exceeded", "fingerprint"]


def _fallback(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(map(repr, obj))
    if isinstance(obj, bytes):
        return obj.hex()
    return repr(obj)


def fingerprint(value: Any) -> str:
    """A short digest equal for equal values (JSON-like values, dataclasses,
    anything with a value-based repr), stable across processes."""
    try:
        data = json.dumps(value, sort_keys=True, default=_fallback, separators=(",", ":"))
    except (TypeError, ValueError):
        data = repr(value)
    return hashlib.blake2b(data.encode(), digest_size=12).hexdigest()


def check_repeat(process: str, message: Message, trail: tuple[TrailEntry, ...]) -> TrailEntry:
    """Raise ``CycleError`` if ``process`` already received an equal value along
    this lineage; else return the trail entry for this hop."""
    entry = (process, fingerprint(message.value), message.topic)
    for i, (name, digest, _) in enumerate(trail):
        if name == process and digest == entry[1]:
            topics = tuple(t for _, _, t in trail[i:])
            raise CycleError(
                f"process {process!r} received an equal value again along one lineage "
                f"(state id {message.state_id!r}): the cycle runs through topics "
                f"{' → '.join((*topics, topics[0]))}. Make the loop change its value or stop "
                "it with a condition.",
                topics=topics,
            )
    return entry


def depth_exceeded(process: str, message: Message, limit: int, cycles: list[list[str]]) -> CycleError:
    known = "; ".join(" → ".join(c + c[:1]) for c in cycles) or "none found statically"
    return CycleError(
        f"run {message.state_id!r} passed recursion_limit={limit}: process {process!r} "
        f"on topic {message.topic!r} would publish at depth {message.depth + 1}. "
        f"Cycles in this PubSub: {known}. Raise recursion_limit in the config if "
        "the run is legitimately this deep.",
        topics=tuple(cycles[0]) if cycles else (),
    )
