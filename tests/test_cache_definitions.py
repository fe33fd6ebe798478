"""Defining cached steps: default names, bad arguments, and what caching leaves unchanged."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from permflow import DefinitionError, PubSub, RunnableLambda, Topic
from permflow._cache import RunnableCached


def square(x: int) -> int:
    return x * x


def test_the_default_name_is_the_functions_qualified_name() -> None:
    """A def's cache is named by its __qualname__ (the same in a script and in a worker importing it);
    the step keeps its display name (and the process its name)."""
    cached = RunnableLambda(square).with_cache()
    assert isinstance(cached, RunnableCached)
    assert cached.cache_name == "square"
    assert cached.name == "square"
    chain = Topic.IN.subscribe() | square | Topic.OUT.publish()
    assert (Topic.IN.subscribe() | cached | Topic.OUT.publish()).name == chain.name


@pytest.mark.parametrize(
    ("func", "problem"),
    [(lambda x: x, "lambda"), (functools.partial(square), "no function name")],
    ids=["lambda", "partial"],
)
def test_a_step_without_a_stable_name_needs_name(func: Any, problem: str) -> None:
    """A lambda or a partial has no stable name: DefinitionError saying to pass name=; with name= it works."""
    with pytest.raises(DefinitionError, match=problem) as caught:
        RunnableLambda(func).with_cache()
    assert "with_cache(name=" in str(caught.value)
    assert RunnableLambda(func).with_cache(name="mine").cache_name == "mine"


def test_a_chain_of_several_steps_needs_a_name() -> None:
    """A process without an explicit name and with several steps cannot be cached without name=."""
    chain = Topic.IN.subscribe() | square | Topic.OUT.publish()
    with pytest.raises(DefinitionError, match="with_cache\\(name="):
        chain.with_cache()
    assert chain.with_cache(name="sq").name == chain.name
    named = (Topic.IN.subscribe(name="squarer") | square | Topic.OUT.publish()).with_cache()
    assert named.name == "squarer"


def test_caching_leaves_the_graph_unchanged() -> None:
    """A cached step or chain keeps its topics and edges: the graph is the one of the uncached program."""
    items = Topic("items")
    plain = PubSub(Topic.IN.subscribe() | items.publish(), items.subscribe() | square | Topic.OUT.publish())
    cached = PubSub(
        Topic.IN.subscribe() | items.publish(),
        (items.subscribe() | square | Topic.OUT.publish()).with_cache(name="sq"),
    )
    assert cached.graph().to_mermaid() == plain.graph().to_mermaid()
    assert cached.process_names == plain.process_names


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"key": "id"}, "key"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1.5}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"version": 1.5}, "version"),
        ({"version": True}, "version"),
    ],
)
def test_bad_arguments_fail_at_definition(kwargs: dict[str, Any], problem: str) -> None:
    """Each bad argument of with_cache raises DefinitionError naming it."""
    with pytest.raises(DefinitionError, match=f"with_cache\\({problem}="):
        RunnableLambda(square).with_cache(**kwargs)
