"""The pipeline on Celery: a canvas ``chain`` of three tasks.

Configured for throughput as Celery's "Optimizing" guide says for many short
tasks: a large prefetch multiplier, early acknowledgement (the default;
``acks_late`` would redeliver after a crash instead), results ignored (the last
task reports to the sink), no gossip/mingle/heartbeat events.
"""

from __future__ import annotations

import redis
from celery import Celery, chain

from benchmarks.queue_apps._common import SINK, URL, burn, record

app = Celery("bench", broker=URL)
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=64,
    task_acks_late=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_sink = redis.Redis.from_url(URL)


@app.task
def first(i: int) -> list[int]:
    return [i, i + 1]


@app.task
def middle(pair: list[int]) -> list[int]:
    return [pair[0], burn(pair[1])]


@app.task
def last(pair: list[int]) -> None:
    _sink.rpush(SINK, record(pair[0], pair[1] + 1))


def submit(i: int) -> None:
    chain(first.s(i), middle.s(), last.s()).apply_async()
