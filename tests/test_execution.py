"""Where sync steps run: worker threads first, inline once proven fast, threads again for good."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import call_with_deadline

from permflow import PubSub, RunnableLambda, Topic
from permflow._execution import SLOW_RUNS, SLOW_SECONDS, WARMUP_RUNS

ROOT = Path(__file__).resolve().parents[1]


class Probe:
    """A sync step recording the thread of every call; optionally slow or nesting.

    Each instance is its own function as far as the execution policy is
    concerned, so tests do not share observations.
    """

    def __init__(self, nested: PubSub | None = None) -> None:
        self.threads: list[threading.Thread] = []
        self.slow = False
        self.nested = nested

    def __call__(self, x: Any) -> Any:
        self.threads.append(threading.current_thread())
        if self.slow:
            time.sleep(SLOW_SECONDS * 5)  # the workload: a blocking call
        if self.nested is not None:
            return self.nested.invoke(x)[0]
        return x


def _echo() -> PubSub:
    return PubSub(Topic.IN.subscribe() | (lambda x: x) | Topic.OUT.publish())


async def _warm_until_inline(step: RunnableLambda, probe: Probe, loop: threading.Thread) -> int:
    """Call ``step`` until a call runs on the loop thread; return that call's index."""
    for i in range(50):
        await step.ainvoke(i)
        if probe.threads[-1] is loop:
            return i
    pytest.fail(f"a trivial step never moved inline in 50 calls: {probe.threads}")


@pytest.mark.anyio
async def test_sync_step_starts_in_a_worker_thread() -> None:
    """A sync step's first WARMUP_RUNS calls run in worker threads, not on the event loop."""
    loop = threading.current_thread()
    probe = Probe()
    step = RunnableLambda(probe)
    for i in range(WARMUP_RUNS):
        assert await step.ainvoke(i) == i
    assert len(probe.threads) == WARMUP_RUNS
    assert all(t is not loop for t in probe.threads)


@pytest.mark.anyio
async def test_fast_sync_step_moves_inline_after_warmup() -> None:
    """After WARMUP_RUNS fast calls, a trivial sync step runs on the event loop thread and stays there."""
    loop = threading.current_thread()
    probe = Probe()
    step = RunnableLambda(probe)
    first_inline = await _warm_until_inline(step, probe, loop)
    assert first_inline >= WARMUP_RUNS
    for i in range(10):
        await step.ainvoke(i)
    assert all(t is loop for t in probe.threads[first_inline:])


@pytest.mark.anyio
async def test_slow_inline_runs_in_a_row_send_step_back_to_threads_for_good() -> None:
    """SLOW_RUNS slow inline calls in a row pin the step to worker threads, however fast it is afterwards."""
    loop = threading.current_thread()
    probe = Probe()
    step = RunnableLambda(probe)
    await _warm_until_inline(step, probe, loop)
    probe.slow = True
    for _ in range(SLOW_RUNS):
        await step.ainvoke("slow")
        assert probe.threads[-1] is loop  # the slow calls themselves still ran inline
    probe.slow = False
    before = len(probe.threads)
    for i in range(WARMUP_RUNS * 4):
        await step.ainvoke(i)
    assert all(t is not loop for t in probe.threads[before:])


@pytest.mark.anyio
async def test_one_slow_inline_run_between_fast_ones_keeps_step_inline() -> None:
    """A slow inline call now and then (a GC pause, a busy machine) does not demote a fast step."""
    loop = threading.current_thread()
    probe = Probe()
    step = RunnableLambda(probe)
    await _warm_until_inline(step, probe, loop)
    for _ in range(3):
        probe.slow = True
        await step.ainvoke("slow")
        probe.slow = False
        await step.ainvoke("fast")
    assert step.sync_runner is not None and step.sync_runner.runs_inline
    before = len(probe.threads)
    for i in range(WARMUP_RUNS):
        await step.ainvoke(i)
    assert all(t is loop for t in probe.threads[before:])


@pytest.mark.anyio
async def test_slow_thread_run_restarts_warmup() -> None:
    """A slow call in a worker thread resets the count of fast calls needed to move inline."""
    loop = threading.current_thread()
    probe = Probe()
    step = RunnableLambda(probe)
    for i in range(WARMUP_RUNS - 1):
        await step.ainvoke(i)
    probe.slow = True
    await step.ainvoke("slow")
    probe.slow = False
    for i in range(WARMUP_RUNS - 1):
        await step.ainvoke(i)
    assert all(t is not loop for t in probe.threads)


@pytest.mark.anyio
async def test_execution_thread_pins_to_worker_threads() -> None:
    """``execution="thread"`` keeps a trivial step in worker threads forever."""
    loop = threading.current_thread()
    probe = Probe()
    step = RunnableLambda(probe, execution="thread")
    for i in range(WARMUP_RUNS * 5):
        await step.ainvoke(i)
    assert all(t is not loop for t in probe.threads)


@pytest.mark.anyio
async def test_execution_inline_pins_to_the_loop() -> None:
    """``execution="inline"`` runs a step on the event loop thread from its first call, even when slow."""
    loop = threading.current_thread()
    probe = Probe()
    probe.slow = True
    step = RunnableLambda(probe, execution="inline")
    for i in range(WARMUP_RUNS + 2):
        await step.ainvoke(i)
    assert all(t is loop for t in probe.threads)


def test_execution_must_be_known() -> None:
    """An unknown execution mode is refused when the step is made."""
    with pytest.raises(ValueError, match="execution"):
        RunnableLambda(lambda x: x, execution="fast")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_steps_from_one_function_learn_together() -> None:
    """Steps made from the same function code share what was learnt about its speed."""
    loop = threading.current_thread()
    seen: list[threading.Thread] = []
    funcs = [(lambda x: seen.append(threading.current_thread()) or x) for _ in range(2)]
    first, second = RunnableLambda(funcs[0]), RunnableLambda(funcs[1])
    for i in range(50):
        await first.ainvoke(i)
        if seen[-1] is loop:
            break
    assert seen[-1] is loop
    await second.ainvoke(0)
    assert seen[-1] is loop


@pytest.mark.anyio
async def test_step_calling_sync_invoke_is_pinned_to_threads() -> None:
    """A step that once called another PubSub's sync invoke never moves inline, even when fast later."""
    loop = threading.current_thread()
    probe = Probe(nested=_echo())
    step = RunnableLambda(probe)
    assert await step.ainvoke("n") == "n"
    probe.nested = None
    for i in range(WARMUP_RUNS * 4):
        await step.ainvoke(i)
    assert all(t is not loop for t in probe.threads)


def _run_isolated(code: str, seconds: float = 5) -> str:
    """Run ``code`` in a fresh interpreter, so a deadlock cannot wedge this session's loop."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"nested invoke did not return within {seconds}s: deadlock")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_inline_step_calling_sync_invoke_does_not_deadlock() -> None:
    """A step forced inline (on the run's loop thread) can call another PubSub's sync invoke."""
    code = """
        import threading
        from permflow import PubSub, RunnableLambda, Topic

        inner = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())
        threads = []

        async def where(x):
            threads.append(threading.current_thread())
            return x

        def nest(x):
            threads.append(threading.current_thread())
            return inner.invoke(x)[0]

        step = RunnableLambda(nest, execution="inline")
        outer = PubSub(Topic.IN.subscribe() | where | step | Topic.OUT.publish())
        print(outer.invoke("deep"), threads[0] is threads[1])
    """
    assert _run_isolated(code) == "['deep'] True"


def test_async_step_calling_sync_invoke_does_not_deadlock() -> None:
    """An ``async def`` step (on the run's loop thread) can call another PubSub's sync invoke."""
    code = """
        from permflow import PubSub, Topic

        inner = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())

        async def nest(x):
            return inner.invoke(x)[0] + "!"

        outer = PubSub(Topic.IN.subscribe() | nest | Topic.OUT.publish())
        print([outer.invoke("a"), outer.invoke("b")])
    """
    assert _run_isolated(code) == "[['a!'], ['b!']]"


def test_auto_step_calling_sync_invoke_does_not_deadlock() -> None:
    """A default (auto) sync step can call another PubSub's sync invoke, many times over."""
    probe = Probe(nested=_echo())
    outer = PubSub(Topic.IN.subscribe() | probe | Topic.OUT.publish())
    for i in range(WARMUP_RUNS * 3):
        assert call_with_deadline(lambda i=i: outer.invoke(i)) == [i]


def test_nested_sync_invokes_three_levels_deep_inline() -> None:
    """Inline steps nesting sync invokes two levels deep (loop thread, then its helper) never deadlock."""
    code = """
        from permflow import PubSub, RunnableLambda, Topic

        def level(pubsub):
            def call(x):
                return pubsub.invoke(x)[0]
            step = RunnableLambda(call, execution="inline")
            return PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())

        inner = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())
        print(level(level(inner)).invoke("x"))
    """
    assert _run_isolated(code) == "['x']"


def test_nested_async_steps_calling_sync_invoke_two_levels_deep() -> None:
    """``async def`` steps nesting sync invokes two levels deep never deadlock."""
    code = """
        from permflow import PubSub, Topic

        def level(pubsub):
            async def call(x):
                return pubsub.invoke(x)[0]
            return PubSub(Topic.IN.subscribe() | call | Topic.OUT.publish())

        inner = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())
        print(level(level(inner)).invoke("y"))
    """
    assert _run_isolated(code) == "['y']"


def _fan_out(step: Any) -> PubSub:
    work = Topic("work")
    return PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe() | step | Topic.OUT.publish(),
    )


@pytest.mark.anyio
async def test_forty_blocking_steps_run_at_the_same_time() -> None:
    """Forty blocking sync steps that each wait for all forty at a barrier all finish."""
    barrier = threading.Barrier(40)

    def meet(x: int) -> int:
        barrier.wait(timeout=15)
        return x

    with anyio.fail_after(30):
        out = await _fan_out(meet).ainvoke(list(range(40)))
    assert sorted(out) == list(range(40))


@pytest.mark.anyio
async def test_forty_sleeping_steps_overlap() -> None:
    """Forty steps blocking 0.2 s each take far less than the 8 s they would take one by one."""

    def block(x: int) -> int:
        time.sleep(0.2)  # the workload: a blocking call
        return x

    started = time.perf_counter()
    out = await _fan_out(block).ainvoke(list(range(40)))
    elapsed = time.perf_counter() - started
    assert sorted(out) == list(range(40))
    assert elapsed < 2.0
