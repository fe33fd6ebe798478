"""How runs look inside Redis: key names, message entries, packed replies.

Plain functions, no I/O: the connection encodes messages into script
arguments here and decodes what Redis sends back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..._message import Message
from ..._serialization import CorruptEntryError, Serializer

__all__ = [
    "decode",
    "encode",
    "escape",
    "flat",
    "glob_escape",
    "id_key",
    "stored",
    "streams",
    "text",
    "unescape",
    "unpack_entries",
]


def encode(messages: Sequence[Message], serializer: Serializer) -> list[Any]:
    """Serialize every value first: nothing is sent if one cannot be stored."""
    args: list[Any] = [len(messages)]
    dumps = serializer.dumps
    for m in messages:
        trail = json.dumps(m.trail, separators=(",", ":"))
        args += (m.topic, dumps(m.value, m.topic), repr(float(m.published_at)), m.depth, trail)
    return args


def decode(key: str, entry_id: Any, fields: list[Any], state_id: str, serializer: Serializer) -> Message:
    """The message stored as entry ``entry_id`` of stream ``key``."""
    eid = text(entry_id)
    try:
        f = {text(k): v for k, v in zip(fields[::2], fields[1::2], strict=True)}
        written = text(f["s"])
        if written != serializer.name:
            raise CorruptEntryError(
                f"entry {eid} of Redis key {key!r} was written with serializer {written!r}, but "
                f"this connection uses {serializer.name!r}: open the connection with the "
                "serializer its writers use (and never unpickle what untrusted writers stored)"
            )
        value = serializer.loads(f["v"])
        trail = tuple(_trail_entry(t) for t in json.loads(f["r"]))
        log_id = text(f.get("l", entry_id))
        return Message(text(f["t"]), value, state_id, float(f["p"]), log_id, int(f["d"]), trail)
    except CorruptEntryError:
        raise
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptEntryError(
            f"entry {eid} of Redis key {key!r} is not a permflow message "
            f"({type(exc).__name__}: {exc}); something else wrote to this key"
        ) from exc


def stored(state_id: str, messages: Sequence[Message], ids: list[Any]) -> list[Message]:
    """``messages`` as stored under ``state_id``, with the log ids Redis gave them."""
    return [
        Message(m.topic, m.value, state_id, m.published_at, text(i), m.depth, m.trail)
        for m, i in zip(messages, ids, strict=True)
    ]


def text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def unpack_entries(packed: bytes) -> list[tuple[bytes, bytes, list[bytes]]]:
    """Split FETCH's packed reply (``<len>:<bytes>`` pieces: id, attempt, field
    count, fields...) into (id, attempt, fields) entries."""
    pieces: list[bytes] = []
    i, end = 0, len(packed)
    while i < end:
        colon = packed.index(b":", i)
        stop = colon + 1 + int(packed[i:colon])
        pieces.append(packed[colon + 1 : stop])
        i = stop
    entries = []
    k = 0
    while k < len(pieces):
        n = int(pieces[k + 2])
        entries.append((pieces[k], pieces[k + 1], pieces[k + 3 : k + 3 + n]))
        k += 3 + n
    return entries


def streams(reply: Any) -> list[tuple[Any, list[Any]]]:
    """(stream, entries) pairs of an XREAD/XREADGROUP reply."""
    return [(stream, entries) for stream, entries in reply or ()]


def flat(fields: Any) -> list[Any]:
    if isinstance(fields, dict):
        return [x for kv in fields.items() for x in kv]
    return list(fields)


def _trail_entry(raw: Any) -> tuple[str, str, str]:
    if not isinstance(raw, list) or len(raw) != 3 or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"bad trail entry {raw!r}")
    return (raw[0], raw[1], raw[2])


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def escape(state_id: str) -> str:
    """Keep ``{`` and ``}`` out of keys so the hash tag is exactly the state id."""
    return state_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def unescape(text: str) -> str:
    return text.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
