"""The static graph of a PubSub: topics, processes, cycles, and its Mermaid drawing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import mermaid_labels

from permflow import Graph, PubSub, Topic, route

draft, review, revise = Topic("draft"), Topic("review"), Topic("revise")


def _loop() -> PubSub:
    """IN → draft → review → revise → draft …, with review also leaving to OUT."""
    return PubSub(
        Topic.IN.subscribe(name="start") | draft.publish(),
        draft.subscribe(name="write") | (lambda x: x) | review.publish(),
        review.subscribe(name="judge")
        | route(lambda x: Topic.OUT if x else revise, topics=[Topic.OUT, revise]),
        revise.subscribe(name="fix") | (lambda x: x) | draft.publish(),
    )


def _straight() -> PubSub:
    return PubSub(
        Topic.IN.subscribe(name="a") | draft.publish(),
        draft.subscribe(name="b") | review.publish(),
        review.subscribe(name="c") | Topic.OUT.publish(),
    )


def _edges(mermaid: str) -> set[tuple[str, str, str]]:
    """(source name, arrow, target name) for each edge of a Mermaid drawing."""
    names = dict(re.findall(r'(\w+)\(?\["(.*?)"\]', mermaid))
    edges = set()
    for src, arrow, dst in re.findall(r"^\s*(\w+) (==>|-->|-\.->)(?:\|\w+\|)? (\w+)", mermaid, re.M):
        edges.add((names.get(src, src), arrow, names.get(dst, dst)))
    return edges


def _rotated(cycle: list[str], first: str) -> list[str]:
    i = cycle.index(first)
    return cycle[i:] + cycle[:i]


def test_graph_lists_topics_and_processes() -> None:
    """graph() names every topic and every process, with what each reads and writes."""
    pubsub = _loop()
    graph = pubsub.graph()
    assert isinstance(graph, Graph)
    assert set(graph.topics) == {"__in__", "__out__", "draft", "review", "revise"}
    assert list(graph.reads) == pubsub.process_names == ["start", "write", "judge", "fix"]
    assert graph.reads == {"start": "__in__", "write": "draft", "judge": "review", "fix": "revise"}
    assert graph.writes["start"] == ("draft",)
    assert set(graph.writes["judge"]) == {"__out__", "revise"}


def test_three_topic_loop_is_listed_once_in_order() -> None:
    """A loop through draft → review → revise is listed once, with its topics in loop order."""
    cycles = _loop().graph().cycles
    assert len(cycles) == 1
    assert _rotated(cycles[0], "draft") == ["draft", "review", "revise"]


def test_acyclic_chain_has_no_cycles() -> None:
    """A straight chain of topics has no cycles."""
    assert _straight().graph().cycles == []


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_self_loop_is_a_cycle() -> None:
    """A process publishing to the topic it reads forms a one-topic cycle."""
    pubsub = PubSub(
        Topic.IN.subscribe() | draft.publish(),
        draft.subscribe() | (lambda x: x) | draft.publish(),
    )
    assert pubsub.graph().cycles == [["draft"]]


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_two_loops_are_both_listed() -> None:
    """Two separate loops are listed as two cycles."""
    a, b, c, d = (Topic(n) for n in "abcd")
    pubsub = PubSub(
        Topic.IN.subscribe() | a.publish() | c.publish(),
        a.subscribe() | b.publish(),
        b.subscribe() | a.publish(),
        c.subscribe() | d.publish(),
        d.subscribe() | c.publish(),
    )
    cycles = sorted(sorted(cycle) for cycle in pubsub.graph().cycles)
    assert cycles == [["a", "b"], ["c", "d"]]


def test_mermaid_names_every_topic_and_process() -> None:
    """to_mermaid() text mentions every topic and every process name."""
    pubsub = PubSub(*_loop().processes, Topic.IN.subscribe() | (lambda x: x) | Topic.OUT.publish())
    text = pubsub.graph().to_mermaid()
    assert text.startswith("flowchart")
    shown = {text for _, text in mermaid_labels(text)}
    assert shown >= {*pubsub.graph().topics, *pubsub.process_names}


def test_mermaid_escapes_quotes_in_names() -> None:
    """A process name containing a double quote does not break the drawing."""
    pubsub = PubSub(Topic.IN.subscribe(name='say "hi"') | Topic.OUT.publish())
    text = pubsub.graph().to_mermaid()
    assert 'say "hi"' not in text
    assert "say #quot;hi#quot;" in text


def test_mermaid_marks_cycle_edges() -> None:
    """Edges on the loop are drawn thick; the entry and exit edges are drawn thin."""
    edges = _edges(_loop().graph().to_mermaid())
    thick = {(s, d) for s, arrow, d in edges if arrow == "==>"}
    thin = {(s, d) for s, arrow, d in edges if arrow == "-->"}
    assert thick == {
        ("draft", "write"),
        ("write", "review"),
        ("review", "judge"),
        ("judge", "revise"),
        ("revise", "fix"),
        ("fix", "draft"),
    }
    assert thin == {("__in__", "start"), ("start", "draft"), ("judge", "__out__")}


def test_mermaid_of_acyclic_chain_has_no_thick_edges() -> None:
    """Without cycles, no edge is marked as a cycle edge."""
    text = _straight().graph().to_mermaid()
    assert "==>" not in text
    assert ("b", "-->", "review") in _edges(text)


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_declared_route_edges_appear() -> None:
    """route(..., topics=[...]) contributes an edge to each declared topic."""
    big, small = Topic("big"), Topic("small")
    pubsub = PubSub(
        Topic.IN.subscribe(name="sort") | route(lambda n: big if n > 10 else small, topics=[big, small])
    )
    graph = pubsub.graph()
    assert graph.writes["sort"] == ("big", "small")
    assert {"big", "small"} <= set(graph.topics)
    edges = _edges(graph.to_mermaid())
    assert ("sort", "-->", "big") in edges
    assert ("sort", "-->", "small") in edges


def test_undeclared_route_shows_as_dynamic() -> None:
    """A route without declared topics is drawn as a dynamic edge, not as any topic."""
    choose: Any = lambda n: Topic("even") if n % 2 == 0 else Topic("odd")  # noqa: E731
    pubsub = PubSub(Topic.IN.subscribe(name="pick") | route(choose))
    graph = pubsub.graph()
    assert graph.writes["pick"] == ("?",)
    assert "even" not in graph.topics and "?" not in graph.topics
    text = graph.to_mermaid()
    assert "-.->" in text
    assert "route" in text


def test_undeclared_route_still_routes() -> None:
    """A dynamic route publishes to whichever topic its selector picks at run time."""
    even, odd = Topic("even"), Topic("odd")
    pubsub = PubSub(
        Topic.IN.subscribe() | route(lambda n: even if n % 2 == 0 else odd),
        even.subscribe() | (lambda n: f"even {n}") | Topic.OUT.publish(),
        odd.subscribe() | (lambda n: f"odd {n}") | Topic.OUT.publish(),
    )
    assert pubsub.invoke(3) == ["odd 3"]
    assert pubsub.invoke(4) == ["even 4"]


def test_joins_are_marked() -> None:
    """A join process is recorded as such and labelled in the drawing."""
    pubsub = PubSub(
        Topic.IN.subscribe(name="fan") | draft.publish_each(),
        draft.join(name="gather") | Topic.OUT.publish(),
    )
    graph = pubsub.graph()
    assert graph.joins == frozenset({"gather"})
    assert "|join|" in graph.to_mermaid()


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_publishing_to_several_topics_lists_each_once() -> None:
    """A chain publishing to one topic twice and to another once lists each written topic once."""
    pubsub = PubSub(Topic.IN.subscribe(name="p") | draft.publish() | review.publish() | draft.publish())
    assert pubsub.graph().writes["p"] == ("draft", "review")
