"""Value serializers: exact round trips, clear refusals, no unpickling by default."""

from __future__ import annotations

import datetime as dt
import math
import pickle
import uuid
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest

from permflow import SerializationError
from permflow._serialization import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    resolve_serializer,
)

JSON = JsonSerializer()

ROUND_TRIPS: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**100),
    1.5,
    -0.0,
    1e308,
    0.1 + 0.2,
    "",
    "héllo ✓ \x00",
    [],
    {},
    [1, [2, [3, None]]],
    {"a": {"b": [1, "x", None]}},
    (),
    (1, (2, "three"), [4]),
    b"\x00\xffbytes",
    bytearray(b"ab"),
    {1, 2, 3},
    frozenset({"a", (1, 2)}),
    {1: "int key", (2, 3): "tuple key", None: "none key", 1.5: "float key"},
    {"__pf__": "a user key that looks like a tag", "v": 1},
    dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.date(2024, 2, 29),
    dt.time(23, 59, 1, 5),
    dt.timedelta(days=-1, seconds=5, microseconds=7),
    Decimal("3.14159265358979323846264338327950288"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    complex(1, -2),
]


def same(a: Any, b: Any) -> bool:
    """Equal and of exactly the same types, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a == 0:
        return math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=lambda v: type(v).__name__)
def test_json_round_trips_exactly(value: Any) -> None:
    """Every supported value comes back equal and with the same types, nested or not."""
    restored = JSON.loads(JSON.dumps(value, "t"))
    assert same(restored, value)
    assert same(JSON.loads(JSON.dumps([value, {"k": value}], "t")), [value, {"k": value}])


def test_json_keeps_nan_and_infinities() -> None:
    """Non-finite floats survive the JSON serializer."""
    nan, inf, ninf = JSON.loads(JSON.dumps([math.nan, math.inf, -math.inf], "t"))
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf


class Color(Enum):
    RED = "red"


class Point(NamedTuple):
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        (Color.RED, "Color"),
        (Point(1, 2), "Point"),
        ({"nested": [1, {"deep": object()}]}, "object"),
        (dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris")), "datetime"),
    ],
)
def test_json_refuses_what_it_cannot_store_exactly(value: Any, type_name: str) -> None:
    """Unsupported values (and subclasses that would lose their type) fail naming type and topic."""
    with pytest.raises(SerializationError) as info:
        JSON.dumps(value, "reports")
    assert type_name in str(info.value)
    assert "'reports'" in str(info.value)
    assert "pickle" in str(info.value)


def test_json_names_where_inside_the_value() -> None:
    """The refusal says where in a nested value the bad part is."""
    with pytest.raises(SerializationError, match=r"\['nested'\]\[1\]\['deep'\]"):
        JSON.dumps({"nested": [1, {"deep": object()}]}, "t")


def test_json_refuses_self_referencing_values() -> None:
    """A list that contains itself fails clearly instead of crashing."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="'t'"):
        JSON.dumps(loop, "t")


@pytest.mark.parametrize(
    "garbage", [b"not json", b'{"__pf__": "nope", "v": 1}', b'{"__pf__": "bytes", "v": "!"}']
)
def test_json_loads_rejects_garbage_with_value_error(garbage: bytes) -> None:
    """Bytes that are not a permflow JSON value raise ValueError, never something stranger."""
    with pytest.raises(ValueError):
        JSON.loads(garbage)


def test_json_never_unpickles() -> None:
    """A pickle payload handed to the JSON serializer is rejected, not executed."""
    with pytest.raises(ValueError):
        JSON.loads(pickle.dumps({"a": 1}))


def test_pickle_round_trips_any_picklable_value() -> None:
    """The pickle serializer keeps types JSON refuses, such as enums and named tuples."""
    ps = PickleSerializer()
    value = {"color": Color.RED, "point": Point(1, 2)}
    assert ps.loads(ps.dumps(value, "t")) == value


def test_pickle_refuses_unpicklable_values_naming_the_topic() -> None:
    """An unpicklable value raises SerializationError naming its type and topic."""
    with pytest.raises(SerializationError, match=r"function.*'jobs'|'jobs'.*function|lambda"):
        PickleSerializer().dumps(lambda: None, "jobs")


def test_resolve_serializer() -> None:
    """Names pick the built-in serializers; objects with the protocol pass; others fail clearly."""
    assert isinstance(resolve_serializer("json"), JsonSerializer)
    assert isinstance(resolve_serializer("pickle"), PickleSerializer)

    class Upper:
        name = "upper"

        def dumps(self, value: Any, topic: str) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    custom = Upper()
    assert resolve_serializer(custom) is custom
    assert isinstance(custom, Serializer)
    with pytest.raises(ValueError, match="yaml"):
        resolve_serializer("yaml")
    with pytest.raises(TypeError, match="serializer"):
        resolve_serializer(42)  # type: ignore[arg-type]
