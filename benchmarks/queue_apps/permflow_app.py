"""The pipeline on permflow: three processes chained by topics, run by
``permflow worker benchmarks.queue_apps.permflow_app:pipeline`` processes."""

from __future__ import annotations

from benchmarks.queue_apps._common import burn
from permflow import PubSub, Topic

one, two = Topic("one"), Topic("two")


def first(i: int) -> int:
    return i + 1


def last(x: int) -> int:
    return x + 1


pipeline = PubSub(
    Topic.IN.subscribe() | first | one.publish(),
    one.subscribe() | burn | two.publish(),
    two.subscribe() | last | Topic.OUT.publish(),
)
