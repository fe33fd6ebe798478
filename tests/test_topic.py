"""Topics: valid names, reserved topics, and what may not be done with them."""

from __future__ import annotations

from typing import Any

import pytest

from permflow import PubSub, Topic, route


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_topic_name_is_rejected(name: str) -> None:
    """An empty (or blank) topic name fails when the topic is defined."""
    with pytest.raises(ValueError, match="non-empty string"):
        Topic(name)


@pytest.mark.parametrize("name", [None, 1, b"one", ["one"], Topic("one")])
def test_non_string_topic_name_is_rejected(name: Any) -> None:
    """A topic name that is not a string fails with ValueError at definition time."""
    with pytest.raises(ValueError, match="topic name"):
        Topic(name)


def test_reserved_topics_have_their_names() -> None:
    """IN, OUT and ERROR are topics named __in__, __out__ and __error__."""
    assert (Topic.IN.name, Topic.OUT.name, Topic.ERROR.name) == ("__in__", "__out__", "__error__")
    assert all(isinstance(t, Topic) for t in (Topic.IN, Topic.OUT, Topic.ERROR))


def test_reserved_names_build_the_reserved_topics() -> None:
    """A topic built from a reserved name is the reserved topic itself."""
    assert Topic("__in__") == Topic.IN
    assert Topic("__out__") == Topic.OUT
    assert Topic("__error__") == Topic.ERROR


def test_subscribing_to_out_fails_at_definition() -> None:
    """Topic.OUT.subscribe() raises ValueError naming Topic.OUT."""
    with pytest.raises(ValueError, match=r"Topic\.OUT"):
        Topic.OUT.subscribe()


def test_joining_out_fails_at_definition() -> None:
    """Topic.OUT.join() raises ValueError naming Topic.OUT."""
    with pytest.raises(ValueError, match=r"Topic\.OUT"):
        Topic.OUT.join()


def test_out_is_refused_by_name_too() -> None:
    """A topic spelled "__out__" cannot be subscribed to either."""
    with pytest.raises(ValueError, match=r"cannot subscribe to Topic\.OUT"):
        Topic("__out__").subscribe()


def test_publishing_to_in_fails_at_definition() -> None:
    """Topic.IN.publish() raises ValueError naming Topic.IN."""
    with pytest.raises(ValueError, match=r"Topic\.IN"):
        Topic.IN.publish()


def test_publish_each_to_in_fails_at_definition() -> None:
    """Topic.IN.publish_each() raises ValueError naming Topic.IN."""
    with pytest.raises(ValueError, match=r"Topic\.IN"):
        Topic.IN.publish_each()


def test_in_is_refused_by_name_too() -> None:
    """A topic spelled "__in__" cannot be published to either."""
    with pytest.raises(ValueError, match=r"cannot publish to Topic\.IN"):
        Topic("__in__").publish()


def test_route_cannot_declare_in() -> None:
    """route(..., topics=[Topic.IN]) fails at definition time."""
    with pytest.raises(ValueError, match=r"Topic\.IN"):
        route(lambda x: Topic.IN, topics=[Topic.IN])


def test_route_choosing_in_fails_the_run() -> None:
    """A route whose selector picks Topic.IN at run time fails with ValueError."""
    chain = Topic.IN.subscribe() | route(lambda x: Topic.IN)
    with pytest.raises(ValueError, match=r"Topic\.IN"):
        PubSub(chain).invoke(1)


def test_error_topic_is_ordinary() -> None:
    """Topic.ERROR can be subscribed to and published to like any topic."""
    errors = Topic.ERROR.subscribe() | Topic.OUT.publish()
    raise_it = Topic.IN.subscribe() | Topic.ERROR.publish()
    assert PubSub(raise_it, errors).invoke("x") == ["x"]


def test_topics_with_equal_names_are_equal() -> None:
    """Topics compare and hash by name, so they work as dict keys and in sets."""
    a1, a2, b = Topic("a"), Topic("a"), Topic("b")
    assert a1 == a2
    assert hash(a1) == hash(a2)
    assert a1 != b
    assert {a1, a2, b} == {Topic("a"), Topic("b")}
    assert {a1: 1}[a2] == 1


def test_topic_equals_its_name() -> None:
    """A topic compares equal to its name, so ``message.topic == ask`` works; not to other names."""
    assert Topic("a") == "a"
    assert "a" == Topic("a")
    assert Topic("a") != "b"
    assert {Topic("a"): 1}["a"] == 1


def test_topic_repr_names_it() -> None:
    """The repr of a topic shows its name."""
    assert "reviews" in repr(Topic("reviews"))


@pytest.mark.parametrize("name", ["", 3])
def test_invalid_process_name_on_subscribe(name: Any) -> None:
    """topic.subscribe(name=...) rejects empty or non-string names."""
    with pytest.raises(ValueError, match="process name"):
        Topic("a").subscribe(name=name)


def test_topic_names_are_kept_verbatim() -> None:
    """Names with dots, spaces or unicode are kept as given and usable in a run."""
    odd = Topic("draft.v2 → review")
    assert odd.name == "draft.v2 → review"
    chains = (
        Topic.IN.subscribe() | odd.publish(),
        odd.subscribe() | Topic.OUT.publish(),
    )
    assert PubSub(*chains).invoke(5) == [5]
