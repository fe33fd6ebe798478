"""The public namespace: what ``import permflow`` offers, and what it does not pull in."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import types
from abc import ABCMeta
from pathlib import Path

import pytest

import permflow

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_sorted() -> None:
    """``permflow.__all__`` is kept in sorted order."""
    assert permflow.__all__ == sorted(permflow.__all__)


def test_all_has_no_duplicates() -> None:
    """Every public name appears once in ``__all__``."""
    assert len(permflow.__all__) == len(set(permflow.__all__))


@pytest.mark.parametrize("name", permflow.__all__)
def test_every_exported_name_imports(name: str) -> None:
    """Each name in ``__all__`` can be imported from the package."""
    namespace: dict[str, object] = {}
    exec(f"from permflow import {name}", namespace)
    assert namespace[name] is getattr(permflow, name)


def test_every_public_attribute_is_exported() -> None:
    """Public objects of the package (not submodules) are all listed in ``__all__``."""
    public = {
        name
        for name, value in vars(permflow).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(permflow.__all__)


@pytest.mark.parametrize(
    "name", ["Topic", "PubSub", "InMemoryPubSubConnection", "Message", "PermflowError", "CycleError"]
)
def test_required_names_exist(name: str) -> None:
    """The names every user needs are public."""
    assert name in permflow.__all__


def test_message_has_required_fields() -> None:
    """A Message has topic, value, state_id and published_at."""
    names = {f.name for f in dataclasses.fields(permflow.Message)}
    assert {"topic", "value", "state_id", "published_at"} <= names
    message = permflow.Message("t", 1, "sid", 2.0)
    assert (message.topic, message.value, message.state_id, message.published_at) == ("t", 1, "sid", 2.0)


def test_message_is_frozen() -> None:
    """A Message cannot be changed after it was made."""
    message = permflow.Message("t", 1, "sid", 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.value = 2  # type: ignore[misc]


def test_streamed_messages_are_messages() -> None:
    """stream() yields Message records carrying the run's state id."""
    chain = permflow.Topic.IN.subscribe() | permflow.Topic.OUT.publish()
    pubsub = permflow.PubSub(chain)
    messages = list(pubsub.stream("v", {"state_id": "api-stream"}))
    assert all(isinstance(m, permflow.Message) for m in messages)
    assert [(m.topic, m.value, m.state_id) for m in messages] == [
        ("__in__", "v", "api-stream"),
        ("__out__", "v", "api-stream"),
    ]
    assert all(isinstance(m.published_at, float) for m in messages)


def test_error_tree() -> None:
    """CycleError is both a PermflowError and a RecursionError; the others fit the tree."""
    assert issubclass(permflow.CycleError, permflow.PermflowError)
    assert issubclass(permflow.CycleError, RecursionError)
    assert issubclass(permflow.RunTimeoutError, permflow.PermflowError)
    assert issubclass(permflow.RunTimeoutError, TimeoutError)
    assert issubclass(permflow.PermflowError, Exception)


def test_in_memory_connection_is_the_default() -> None:
    """A PubSub without a connection uses an InMemoryPubSubConnection."""
    chain = permflow.Topic.IN.subscribe() | permflow.Topic.OUT.publish()
    assert isinstance(permflow.PubSub(chain).connection, permflow.InMemoryPubSubConnection)


def test_design_snippet_works_as_written() -> None:
    """The introductory example returns ['abc']."""
    from permflow import InMemoryPubSubConnection, PubSub, Topic

    topic_one = Topic("one")
    chain_one = Topic.IN.subscribe() | (lambda x: x + "b") | topic_one.publish()
    chain_two = topic_one.subscribe() | (lambda x: x + "c") | Topic.OUT.publish()

    conn = InMemoryPubSubConnection()
    pubsub = PubSub(processes=(chain_one, chain_two), connection=conn)

    assert pubsub.invoke("a") == ["abc"]


def test_import_does_not_pull_optional_dependencies() -> None:
    """``import permflow`` loads neither redis nor langchain."""
    code = "import sys, permflow\nprint(sorted(m for m in ('redis', 'langchain_core') if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_package_is_typed() -> None:
    """The package ships a py.typed marker."""
    assert (Path(permflow.__file__).parent / "py.typed").is_file()


def _undocumented() -> list[str]:
    """Public names of ``permflow.__all__`` (its functions, classes, and their methods and
    properties defined in permflow) that lack a docstring of their own. An implementation
    of a method of an abstract base (the connection protocol) inherits that method's
    documented contract."""
    missing = []
    for name in permflow.__all__:
        obj = getattr(permflow, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip():
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for attr in dir(obj):
            owner = next((k for k in obj.__mro__ if attr in vars(k)), None)
            if attr.startswith("_") or owner is None or not owner.__module__.startswith("permflow"):
                continue
            value = vars(owner)[attr]
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if not (callable(value) or isinstance(value, property)) or (value.__doc__ or "").strip():
                continue
            overridden = [
                vars(k)[attr] for k in owner.__mro__[1:] if attr in vars(k) and isinstance(k, ABCMeta)
            ]
            if not any((base.__doc__ or "").strip() for base in overridden):
                missing.append(f"{name}.{attr} (defined in {owner.__qualname__})")
    return sorted(set(missing))


def test_every_public_callable_has_a_docstring() -> None:
    """Every public class, function, method and property reachable from ``permflow.__all__`` is documented."""
    assert _undocumented() == []
