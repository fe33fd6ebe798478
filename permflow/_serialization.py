"""Value serializers: how a connection turns published values into bytes.

``JsonSerializer`` (the default, ``"json"``) is safe to read from anyone: it
round-trips ``dict``, ``list``, ``str``, ``int``, ``float`` (including nan and
±inf), ``bool`` and ``None`` exactly, and with explicit type tags also
``tuple``, ``bytes``, ``bytearray``, ``set``, ``frozenset``, ``complex``,
``datetime.datetime`` / ``date`` / ``time`` / ``timedelta``, ``decimal.Decimal``,
``uuid.UUID``, and dicts with non-``str`` keys (any key of those types).
Anything else, including subclasses of those types (enums, named tuples), is
refused with ``SerializationError`` rather than silently stored as its base
type.

``PickleSerializer`` (``"pickle"``) stores any picklable value. Unpickling runs
code chosen by whoever wrote the bytes: choose it only if everyone who can
write to the store is trusted.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import uuid
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from ._errors import ConfigError, PermflowError, SerializationError

__all__ = [
    "CorruptEntryError",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "resolve_serializer",
]

_TAG = "__pf__"
_PLAIN = (str, int, float, bool, type(None))


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. ``name`` is stored with every entry so
    that a reader configured with another serializer fails clearly."""

    name: str

    def dumps(self, value: Any, topic: str) -> bytes:
        """Encode ``value`` published on ``topic``; raise ``SerializationError``
        naming the value's type and the topic if it cannot be stored."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode what ``dumps`` produced; raise ``ValueError`` on garbage."""
        ...


class CorruptEntryError(PermflowError, ValueError):
    """An entry found in the store cannot be read as a permflow message
    (written by another program, or with another serializer)."""


def _refuse(value: Any, topic: str, path: str, why: str = "") -> SerializationError:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    where = f" at {path}" if path != "value" else ""
    return SerializationError(
        f"cannot store a value of type {name}{where} on topic {topic!r} with the JSON serializer"
        f"{why}. Publish JSON-compatible data (dict, list, str, int, float, bool, None, tuple, "
        "bytes, set, datetime, Decimal, UUID), or pass serializer='pickle' to the connection "
        "if everyone who can write to the store is trusted."
    )


def _encode(value: Any, topic: str, path: str) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_encode(v, topic, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: _encode(v, topic, f"{path}[{k!r}]") for k, v in value.items()}
        pairs = [
            [_encode(k, topic, f"{path} (key {k!r})"), _encode(v, topic, f"{path}[{k!r}]")]
            for k, v in value.items()
        ]
        return {_TAG: "dict", "v": pairs}
    if kind is tuple:
        return {_TAG: "tuple", "v": [_encode(v, topic, f"{path}[{i}]") for i, v in enumerate(value)]}
    if kind is bytes or kind is bytearray:
        return {_TAG: kind.__name__, "v": base64.b64encode(value).decode("ascii")}
    if kind is set or kind is frozenset:
        items = [_encode(v, topic, f"{path} (element)") for v in value]
        return {_TAG: kind.__name__, "v": items}
    if kind is dt.datetime or kind is dt.date or kind is dt.time:
        zone = None if kind is dt.date else value.tzinfo
        if zone is not None and type(zone) is not dt.timezone:
            raise _refuse(value, topic, path, " (only UTC or fixed-offset time zones round-trip)")
        return {_TAG: kind.__name__, "v": value.isoformat()}
    if kind is dt.timedelta:
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is Decimal:
        return {_TAG: "Decimal", "v": str(value)}
    if kind is uuid.UUID:
        return {_TAG: "UUID", "v": str(value)}
    if kind is complex:
        return {_TAG: "complex", "v": [value.real, value.imag]}
    raise _refuse(value, topic, path)


_DECODERS: dict[str, Any] = {
    "dict": lambda v: dict((k, x) for k, x in v),
    "tuple": tuple,
    "bytes": lambda v: base64.b64decode(v, validate=True),
    "bytearray": lambda v: bytearray(base64.b64decode(v, validate=True)),
    "set": set,
    "frozenset": frozenset,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "Decimal": Decimal,
    "UUID": uuid.UUID,
    "complex": lambda v: complex(v[0], v[1]),
}


def _decode(obj: dict[str, Any]) -> Any:
    tag = obj.get(_TAG)
    if tag is None:
        return obj
    decoder = _DECODERS.get(tag)
    if decoder is None or len(obj) != 2 or "v" not in obj:
        raise ValueError(f"unknown type tag {tag!r}")
    return decoder(obj["v"])


class JsonSerializer:
    """The safe default: tagged JSON (see the module docstring for the types)."""

    name = "json"

    def dumps(self, value: Any, topic: str) -> bytes:
        try:
            data = _encode(value, topic, "value")
        except RecursionError:
            raise SerializationError(
                f"cannot store a value on topic {topic!r}: it is nested too deeply or refers to itself"
            ) from None
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return json.loads(data, object_hook=_decode)
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"not a permflow JSON value: {exc}") from exc


class PickleSerializer:
    """Any picklable value. Only if everyone who can write to the store is
    trusted: unpickling runs code chosen by the writer."""

    name = "pickle"

    def dumps(self, value: Any, topic: str) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # pickle raises many types for unpicklable values
            kind = type(value)
            raise SerializationError(
                f"cannot pickle a value of type {kind.__module__}.{kind.__qualname__} published on "
                f"topic {topic!r}: {exc}"
            ) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise ValueError(f"not a pickle: {exc}") from exc


_BUILTIN: dict[str, type[JsonSerializer] | type[PickleSerializer]] = {
    "json": JsonSerializer,
    "pickle": PickleSerializer,
}


def resolve_serializer(spec: str | Serializer) -> Serializer:
    """``"json"``, ``"pickle"`` or an object with ``name``, ``dumps`` and ``loads``."""
    if isinstance(spec, str):
        factory = _BUILTIN.get(spec)
        if factory is None:
            raise ConfigError(f"unknown serializer {spec!r}; use 'json', 'pickle' or a Serializer object")
        return factory()
    if not isinstance(spec, Serializer):
        raise ConfigError(
            f"serializer must be 'json', 'pickle' or an object with name, dumps(value, topic) "
            f"and loads(data); got {spec!r}"
        )
    return spec
