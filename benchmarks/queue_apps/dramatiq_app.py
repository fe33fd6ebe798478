"""The pipeline on Dramatiq: a ``pipeline`` of three actors on the Redis broker
(default prefetch and threads; results go to the sink, no results backend)."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from benchmarks.queue_apps._common import SINK, URL, burn, record

dramatiq.set_broker(RedisBroker(url=URL))
_sink = redis.Redis.from_url(URL)


@dramatiq.actor
def first(i: int) -> list[int]:
    return [i, i + 1]


@dramatiq.actor
def middle(pair: list[int]) -> list[int]:
    return [pair[0], burn(pair[1])]


@dramatiq.actor
def last(pair: list[int]) -> None:
    _sink.rpush(SINK, record(pair[0], pair[1] + 1))


def submit(i: int) -> None:
    dramatiq.pipeline([first.message(i), middle.message(), last.message()]).run()
