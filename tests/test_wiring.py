"""Wiring mistakes are warned about when a PubSub is built (permflow/_wiring.py)."""

from __future__ import annotations

import warnings

import pytest

from permflow import DefinitionError, PermflowWarning, PubSub, Topic, route


def build(*processes: object, **options: object) -> tuple[PubSub, list[str]]:
    """The PubSub and the PermflowWarning messages its construction gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pubsub = PubSub(*processes, **options)  # type: ignore[arg-type]
    return pubsub, [str(w.message) for w in caught if issubclass(w.category, PermflowWarning)]


def test_a_misspelled_topic_is_named_with_a_suggestion() -> None:
    """A topic read but published by nobody is warned about, naming it and the close published name."""
    word, words = Topic("word"), Topic("words")
    pubsub, found = build(
        Topic.IN.subscribe() | str.upper | word.publish(),
        words.subscribe(name="count") | len | Topic.OUT.publish(),
    )
    assert len(found) == 1
    assert "topic 'words' is read by 'count'" in found[0] and "did you mean 'word'?" in found[0]
    assert pubsub.graph().problems == found


def test_a_chain_missing_its_final_publish_is_warned_about() -> None:
    """With no process publishing to Topic.OUT, the warning says invoke() will return []."""
    _, found = build(Topic.IN.subscribe() | str.upper)
    assert found == [
        "no process publishes to Topic.OUT, so invoke() will always return []: end the chain that "
        "gives the result with '| Topic.OUT.publish()'"
    ]


def test_a_correct_program_warns_nothing() -> None:
    """Published-but-unread topics, sinks, IN and ERROR readers and declared inputs are all fine."""
    ask, answer, audit = Topic("ask"), Topic("answer"), Topic("audit")
    pubsub, found = build(
        Topic.IN.subscribe() | str.upper | ask.publish() | audit.publish(),  # audit: read by a stream
        answer.subscribe() | str.lower | Topic.OUT.publish(),
        Topic.IN.subscribe() | print,  # a sink
        Topic.ERROR.subscribe() | print,
        inputs=[answer],
    )
    assert found == [] and pubsub.graph().problems == []


def test_inputs_accept_topic_names_and_reject_other_things() -> None:
    """inputs takes topics or names; anything else is a DefinitionError naming it."""
    _, found = build(Topic("answer").subscribe() | str.lower | Topic.OUT.publish(), inputs=["answer"])
    assert found == []
    with pytest.raises(DefinitionError, match=r"inputs must be topics.*42"):
        PubSub(Topic.IN.subscribe() | str.lower | Topic.OUT.publish(), inputs=[42])  # type: ignore[list-item]


def test_a_route_without_declared_topics_silences_the_checks() -> None:
    """A route that may publish anywhere leaves nothing to conclude: no warning."""
    _, found = build(
        Topic.IN.subscribe() | route(lambda x: Topic.OUT),
        Topic("elsewhere").subscribe() | str.upper | Topic.OUT.publish(),
    )
    assert found == []


def test_warnings_point_at_the_users_line_and_can_be_errors() -> None:
    """The warning is attributed to the caller's PubSub(...) line, and an error filter turns it into one."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PubSub(Topic.IN.subscribe() | str.upper)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", PermflowWarning)
        with pytest.raises(PermflowWarning):
            PubSub(Topic.IN.subscribe() | str.upper)


def test_clones_do_not_warn_again() -> None:
    """with_connection and with_workers reuse the checked plan instead of warning a second time."""
    pubsub, found = build(Topic.IN.subscribe() | str.upper)
    assert len(found) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", PermflowWarning)
        clone = pubsub.with_workers()
    assert clone.graph().problems == found and clone.on_workers


@pytest.mark.parametrize("method", ["publish", "publish_each", "subscribe", "join"])
def test_a_topic_method_used_without_calling_it_fails_at_definition(method: str) -> None:
    """`| topic.publish` (no parentheses) is a DefinitionError saying to call it."""
    done = Topic("done")
    with pytest.raises(
        DefinitionError, match=rf"call it to get the step, '\| Topic\('done'\)\.{method}\(\)'"
    ):
        Topic.IN.subscribe() | str.upper | getattr(done, method)
