"""A legitimate loop: draft → review → revise → review … until approved.

``route`` publishes the review either to ``Topic.OUT`` (approved) or back to
``revise``. A variant whose reviewer never approves is stopped with
``CycleError`` instead of running forever.

    python examples/draft_review_loop.py
"""

from collections.abc import Callable
from typing import Any

from permflow import CycleError, PermflowError, PubSub, Topic, route

Doc = dict[str, Any]
draft, revise = Topic("draft"), Topic("revise")


def write(subject: str) -> Doc:
    return {"text": f"A note on {subject}.", "version": 1}


def review(doc: Doc) -> Doc:
    """Approves from the third version on."""
    return {**doc, "approved": doc["version"] >= 3}


def rewrite(doc: Doc) -> Doc:
    return {"text": f"{doc['text']} Now clearer.", "version": doc["version"] + 1}


def approved_or_revise(doc: Doc) -> Topic:
    return Topic.OUT if doc["approved"] else revise


def editor(reviewer: Callable[[Doc], Doc]) -> PubSub:
    return PubSub(
        Topic.IN.subscribe() | write | draft.publish(),
        draft.subscribe() | reviewer | route(approved_or_revise, topics=[Topic.OUT, revise]),
        revise.subscribe() | rewrite | draft.publish(),
    )


pubsub = editor(review)

# The static graph knows about the loop before anything runs.
graph = pubsub.graph()
print("cycles:", graph.cycles)
assert graph.cycles == [["draft", "revise"]]
print(graph.to_mermaid())

(final,) = pubsub.invoke("topics")
print("approved:", final)
assert final == {"text": "A note on topics. Now clearer. Now clearer.", "version": 3, "approved": True}

# A reviewer that never approves: every revision differs, so only the depth
# limit can stop it. recursion_limit (default 1000) is set per call here.
stubborn = editor(lambda doc: {**doc, "approved": False})
try:
    stubborn.invoke("topics", config={"recursion_limit": 20})
except CycleError as exc:
    assert isinstance(exc, RecursionError) and isinstance(exc, PermflowError)
    assert exc.topics == ("draft", "revise")
    print("runaway stopped:", exc)
else:
    raise AssertionError("the runaway loop was not stopped")

# A loop that sends an equal value around again fails at once, naming the cycle.
echo = PubSub(
    Topic.IN.subscribe() | draft.publish(),
    draft.subscribe() | route(lambda doc: Topic.OUT if doc == "done" else revise, topics=[Topic.OUT, revise]),
    revise.subscribe() | (lambda doc: doc) | draft.publish(),
)
try:
    echo.invoke("same")
except CycleError as exc:
    assert exc.topics == ("draft", "revise"), exc.topics
    print("exact repeat stopped:", exc)
else:
    raise AssertionError("the exact repeat was not stopped")
