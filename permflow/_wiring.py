"""Wiring mistakes a PubSub's topology gives away, found when it is built.

Two findings, each a ``PermflowWarning`` (``warnings.warn``, so they can be
filtered or turned into errors) and an entry of ``Graph.problems``:

* a topic that processes read but no process publishes to, that is not
  ``Topic.IN`` or ``Topic.ERROR`` and not declared fed from outside
  (``PubSub(..., inputs=[...])``): usually a misspelled name;
* no process can publish to ``Topic.OUT``: ``invoke()`` will always return
  ``[]`` (usually a chain missing its final ``Topic.OUT.publish()``).

A topic published but never read is fine (a stream may read it), and so is a
chain that ends without publishing (a sink). A ``route`` without declared
topics may publish anywhere, so it silences both findings.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ._graph import DYNAMIC, Graph
from ._topic import ERROR_NAME, IN_NAME, OUT_NAME

__all__ = ["find_problems"]


def find_problems(graph: Graph, inputs: Iterable[str]) -> list[str]:
    """What looks miswired in ``graph``, given the topics fed from outside."""
    published = {t for targets in graph.writes.values() for t in targets}
    if DYNAMIC in published:
        return []
    fed = {IN_NAME, ERROR_NAME, *inputs}
    problems = []
    unread: dict[str, list[str]] = {}
    for process, topic in graph.reads.items():
        if topic not in published and topic not in fed:
            unread.setdefault(topic, []).append(process)
    for topic, readers in unread.items():
        who = ", ".join(repr(p) for p in readers)
        close = difflib.get_close_matches(topic, sorted(published - {OUT_NAME}), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            f"topic {topic!r} is read by {who} but no process publishes to it{hint}; if it is fed "
            f"from outside, declare it: PubSub(..., inputs=[Topic({topic!r})])"
        )
    if OUT_NAME not in published:
        problems.append(
            "no process publishes to Topic.OUT, so invoke() will always return []: end the chain "
            "that gives the result with '| Topic.OUT.publish()'"
        )
    return problems
