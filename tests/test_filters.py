"""Filtered subscriptions: ``topic.subscribe(when=...)`` and ``topic.join(when=...)``.

What every connection must do is in ``permflow.testing.FilterSuite`` (run for
memory and Redis by tests/test_conformance.py). Here: definitions and names,
the graph, what a rejected message costs (no thread hop, no slot, no span, one
Redis round trip), and workers in this process.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from permflow import DefinitionError, InMemoryPubSubConnection, PubSub, Topic
from permflow._worker import Worker

NUMBERS = Topic("numbers")


def is_even(n: int) -> bool:
    return n % 2 == 0


def is_odd(n: int) -> bool:
    return n % 2 == 1


def tenfold(n: int) -> int:
    return n * 10


def fan_out() -> Any:
    return Topic.IN.subscribe(name="fan") | (lambda n: list(range(n))) | NUMBERS.publish_each()


# -- definitions and names ------------------------------------------------------


@pytest.mark.parametrize("when", [3, "n > 1", [is_even]])
def test_a_predicate_that_is_not_callable_is_refused_at_definition(when: Any) -> None:
    """when= must be callable: anything else fails with DefinitionError naming the topic and the value."""
    with pytest.raises(DefinitionError, match=r"Topic\('numbers'\)\.subscribe\(\): when= must be a function"):
        NUMBERS.subscribe(when=when)
    with pytest.raises(
        DefinitionError, match=r"Topic\('numbers'\)\.join\(\): when= .*" + type(when).__name__
    ):
        NUMBERS.join(when=when)


def test_an_async_predicate_is_refused_at_definition() -> None:
    """An async predicate would be truthy unawaited: DefinitionError says to use a plain function."""

    async def later(n: int) -> bool:
        return True

    with pytest.raises(DefinitionError, match=r"when=.*later is an async function.*plain"):
        NUMBERS.subscribe(when=later)


def test_processes_differing_only_in_their_predicate_get_distinct_stable_names() -> None:
    """The predicate is part of a derived name; a lambda's carries its digest; names= still win."""

    def build() -> PubSub:
        return PubSub(
            fan_out(),
            NUMBERS.subscribe(when=is_even) | tenfold | Topic.OUT.publish(),
            NUMBERS.subscribe(when=is_odd) | tenfold | Topic.OUT.publish(),
            NUMBERS.subscribe(when=lambda n: n > 3) | tenfold | Topic.OUT.publish(),
            NUMBERS.join(when=is_even) | sum | Topic.OUT.publish(),
            NUMBERS.subscribe(name="chosen", when=is_even) | tenfold | Topic.OUT.publish(),
        )

    names = build().process_names
    assert names[1:3] == [
        "numbers.subscribe(when=is_even) | tenfold | publish(__out__)",
        "numbers.subscribe(when=is_odd) | tenfold | publish(__out__)",
    ]
    assert re.fullmatch(
        r"numbers\.subscribe\(when=\S*<lambda>#[0-9a-f]{12}\) \| tenfold \| publish\(__out__\)", names[3]
    )
    assert names[4] == "numbers.join(when=is_even) | sum | publish(__out__)"
    assert names[5] == "chosen"
    assert build().process_names == names  # stable: the same definitions give the same names
    plain = (NUMBERS.subscribe() | tenfold).name
    assert plain == "numbers.subscribe | tenfold"  # names without a predicate are unchanged


def test_with_name_pipes_and_wrappers_keep_the_predicate() -> None:
    """Renaming, piping more steps, retry and timeout wrappers all keep ``when``."""
    process = NUMBERS.subscribe(when=is_even) | tenfold
    assert (process | str).when is is_even
    assert process.with_name("renamed").when is is_even
    assert process.with_retry(stop_after_attempt=2).when is is_even
    assert process.with_timeout(5).when is is_even
    assert (NUMBERS.subscribe() | tenfold).when is None
    assert repr(NUMBERS.subscribe(when=is_even)) == "Topic('numbers').subscribe(when=is_even)"


async def test_outside_a_run_a_filtered_chain_runs_its_steps(anyio_backend: str) -> None:
    """Unit-testing a chain: ``chain.ainvoke(x)`` runs the steps, whatever the predicate says."""
    chain = NUMBERS.subscribe(when=is_even) | tenfold
    assert await chain.ainvoke(3) == 30


# -- the graph --------------------------------------------------------------------


def test_graph_marks_filtered_edges() -> None:
    """Graph.filtered names the filtered processes; Mermaid draws their edges ``-- when -->``
    (``== when ==>`` on a cycle, ``-- join when -->`` for a join); the SVG labels and explains them."""
    again = Topic("again")
    pubsub = PubSub(
        fan_out(),
        NUMBERS.subscribe(name="evens", when=is_even) | tenfold | Topic.OUT.publish(),
        NUMBERS.subscribe(name="all") | Topic.OUT.publish(),
        NUMBERS.join(name="sum odd", when=is_odd) | sum | Topic.OUT.publish(),
        again.subscribe(name="loop", when=lambda n: n < 3) | (lambda n: n + 1) | again.publish(),
        inputs=[again],
    )
    graph = pubsub.graph()
    assert graph.filtered == frozenset({"evens", "sum odd", "loop"})
    lines = graph.to_mermaid().splitlines()
    assert "  t1 -- when --> p1" in lines
    assert "  t1 --> p2" in lines
    assert "  t1 -- join when --> p3" in lines
    assert "  t2 == when ==> p4" in lines
    svg = graph._repr_mimebundle_()["text/html"]
    assert ">when</text>" in svg and ">join when</text>" in svg
    assert "when: a filtered subscription" in svg
    described = repr(pubsub).splitlines()
    assert "  'evens' reads 'numbers' (filtered by when=), writes '__out__'" in described
    assert "  'all' reads 'numbers', writes '__out__'" in described


def test_an_unfiltered_graph_has_no_when() -> None:
    """Without predicates nothing is marked: no filtered process, no ``when`` in Mermaid or SVG."""
    graph = PubSub(fan_out(), NUMBERS.subscribe() | Topic.OUT.publish()).graph()
    assert graph.filtered == frozenset()
    assert "when" not in graph.to_mermaid()
    svg = graph._repr_mimebundle_()["text/html"]
    assert ">when</text>" not in svg and "filtered subscription" not in svg


# -- what a rejected message costs -------------------------------------------------


async def test_the_predicate_runs_on_the_event_loop_thread_and_the_step_never_runs(
    anyio_backend: str,
) -> None:
    """A sync predicate is called inline (on the loop's thread); rejected values never reach the step,
    even a step that runs in a worker thread."""
    loop_thread = threading.get_ident()
    judged: list[tuple[int, int]] = []
    stepped: list[tuple[int, int]] = []

    def is_big(n: int) -> bool:
        judged.append((n, threading.get_ident()))
        return n >= 4

    def blocking_step(n: int) -> int:  # run in a worker thread by execution="thread"
        stepped.append((n, threading.get_ident()))
        return n

    from permflow import RunnableLambda

    pubsub = PubSub(
        fan_out(),
        NUMBERS.subscribe(when=is_big)
        | RunnableLambda(blocking_step, execution="thread")
        | Topic.OUT.publish(),
        connection=InMemoryPubSubConnection(),
    )
    with anyio.fail_after(10):
        assert sorted(await pubsub.ainvoke(6)) == [4, 5]
    assert sorted(n for n, _ in judged) == list(range(6))
    assert {thread for _, thread in judged} == {loop_thread}
    assert sorted(n for n, _ in stepped) == [4, 5]
    assert all(thread != loop_thread for _, thread in stepped)  # the step did hop: the predicate did not


async def test_a_rejected_message_takes_no_slot_and_no_trace_span(anyio_backend: str) -> None:
    """With max_concurrency=1 held by a step, rejected messages are still acked (they need no slot),
    and the tracer only sees the messages the step ran on."""
    traced: list[tuple[str, Any]] = []
    holding, release = anyio.Event(), anyio.Event()

    @contextmanager
    def trace(process: str, message: Any) -> Iterator[None]:
        traced.append((process, message.value))
        yield

    async def hold(n: int) -> int:
        if not holding.is_set():  # the first even number holds the only slot
            holding.set()
            await release.wait()
        return n

    conn = InMemoryPubSubConnection()
    pubsub = PubSub(
        fan_out(),
        NUMBERS.subscribe(name="evens", when=is_even) | hold | Topic.OUT.publish(),
        connection=conn,
        max_concurrency=1,
        trace=trace,
    )
    config = {"state_id": "slot"}
    outs: list[Any] = []

    async def run() -> None:
        outs.extend(await pubsub.ainvoke(6, config))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await holding.wait()
            # the one slot is held by the step: the odd numbers are acked all the same
            while (await conn.outstanding("slot", ["evens"]))["evens"] != 3:
                await conn.wait_for_change("slot", 0.2)
            release.set()
    assert sorted(outs) == [0, 2, 4]
    assert sorted(v for p, v in traced if p == "evens") == [0, 2, 4]


async def test_workers_run_filtered_subscriptions(anyio_backend: str) -> None:
    """Two workers of one slot each (a capped fetch after every ack) give the local result;
    the step runs once per matching value only."""
    ran: list[int] = []
    seen: list[int] = []

    def picky(n: int) -> bool:
        seen.append(n)
        return n % 3 == 0

    def record(n: int) -> int:
        ran.append(n)
        return n

    pubsub = PubSub(
        fan_out(),
        NUMBERS.subscribe(when=picky) | record | Topic.OUT.publish(),
        connection=InMemoryPubSubConnection(),
    )
    workers = Worker(pubsub, name="w1", concurrency=1), Worker(pubsub, name="w2", concurrency=1)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for worker in workers:
                await tg.start(worker.run)
            try:
                out = await pubsub.with_workers().ainvoke(20)
            finally:
                for worker in workers:
                    worker.stop()
    assert sorted(out) == [0, 3, 6, 9, 12, 15, 18]
    assert sorted(ran) == [0, 3, 6, 9, 12, 15, 18]
    assert sorted(seen) == list(range(20))


# -- Redis: a rejected message costs one round trip ----------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_redis_ack_and_fetch_is_one_round_trip(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """Acking a rejected delivery and fetching the process's next one is one exchange, one script."""
    from permflow import Message, Subscription

    await redis_conn.register("rt", [Subscription("p", "t")])
    await redis_conn.publish("rt", [Message("t", v, "rt", 0.0) for v in (1, 2)])
    (first,) = await redis_conn.fetch("rt", "p", owner="o", limit=1)
    round_trips.clear()
    (second,) = await redis_conn.ack_and_fetch(first, owner="o")
    assert round_trips == [["ACK_FETCH"]]
    assert second.messages[0].value == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_redis_a_rejected_message_costs_one_script_call(
    anyio_backend: str, redis_conn: Any, round_trips: list[list[str]]
) -> None:
    """In a run, each rejected message costs exactly one script (ACK_FETCH): no commit, no fetch
    of its own; matching ones cost their commit as before."""
    seen: list[int] = []

    def is_even_seen(n: int) -> bool:
        seen.append(n)
        return n % 2 == 0

    pubsub = PubSub(
        fan_out(),
        NUMBERS.subscribe(name="evens", when=is_even_seen) | tenfold | Topic.OUT.publish(),
        connection=redis_conn,
    )
    with anyio.fail_after(20):
        out = await pubsub.ainvoke(10, {"state_id": "trips"})
    scripts = Counter(name for trip in round_trips for name in trip)
    assert sorted(out) == [0, 20, 40, 60, 80]
    assert sorted(seen) == list(range(10))
    assert scripts["ACK_FETCH"] == 5  # one per odd number
    assert scripts["COMMIT"] == 1 + 5  # the fan-out, then one per even number
    assert scripts["FETCH"] == 0  # the input's reader came with START, the numbers with the fan-out's commit
    assert "UNFETCH" not in scripts


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_with_retry_covers_a_raising_predicate(anyio_backend: str) -> None:
    """A predicate that fails once is retried under the chain's with_retry policy; one that
    keeps failing fails the run after the policy's attempts, with its own exception."""
    calls: list[int] = []

    def flaky(n: int) -> bool:
        calls.append(n)
        if len(calls) == 1:
            raise ConnectionError("predicate flake")
        return True

    chain = Topic.IN.subscribe(when=flaky) | (lambda n: n * 2) | Topic.OUT.publish()
    pubsub = PubSub(chain.with_retry(stop_after_attempt=3, initial_wait=0))
    assert await pubsub.ainvoke(5) == [10]
    assert calls == [5, 5]

    def broken(n: int) -> bool:
        calls.append(n)
        raise ConnectionError("predicate down")

    calls.clear()
    chain = Topic.IN.subscribe(when=broken) | (lambda n: n * 2) | Topic.OUT.publish()
    with pytest.raises(ConnectionError, match="predicate down"):
        await PubSub(chain.with_retry(stop_after_attempt=3, initial_wait=0)).ainvoke(5)
    assert calls == [5, 5, 5]
    calls.clear()
    with pytest.raises(ConnectionError, match="predicate down"):
        await PubSub(chain.with_retry(stop_after_attempt=3, retry_if_exception_type=(KeyError,))).ainvoke(5)
    assert calls == [5]  # not an exception the policy retries


def test_lambda_predicates_differing_in_an_operator_name_their_processes_apart() -> None:
    """Two chains whose lambda predicates differ only in an operator get different names that do
    not depend on the order of the chains (no ``#2`` suffix deciding whose stored state is whose)."""
    numbers = Topic("numbers")

    def chains() -> tuple[Any, Any]:
        return (
            numbers.subscribe(when=lambda v: v > 1) | Topic.OUT.publish(),
            numbers.subscribe(when=lambda v: v < 1) | Topic.OUT.publish(),
        )

    big, small = chains()
    assert big.name != small.name
    forward = PubSub(*chains(), inputs=[numbers]).process_names
    backward = PubSub(*reversed(chains()), inputs=[numbers]).process_names
    assert sorted(forward) == sorted(backward) == sorted([big.name, small.name])
    assert not any(name.endswith("#2") for name in forward)
