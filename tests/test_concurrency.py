"""Concurrency inside a run and across runs: overlap, limits, timeouts, batches."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from permflow import PermflowError, PubSub, RunTimeoutError, Topic


def _meeting(n: int) -> Any:
    """``n`` async steps that each finish only once all ``n`` have started."""
    arrived = 0
    everyone = anyio.Event()

    async def meet(x: Any) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            everyone.set()
        await everyone.wait()
        return x

    return meet


@pytest.mark.anyio
async def test_subscribers_of_one_message_run_concurrently() -> None:
    """Two async subscribers of one message, each waiting for the other's event, both finish."""
    a_in, b_in = anyio.Event(), anyio.Event()

    async def a(x: str) -> str:
        a_in.set()
        await b_in.wait()
        return x + "a"

    async def b(x: str) -> str:
        b_in.set()
        await a_in.wait()
        return x + "b"

    pubsub = PubSub(
        Topic.IN.subscribe() | a | Topic.OUT.publish(),
        Topic.IN.subscribe() | b | Topic.OUT.publish(),
    )
    with anyio.fail_after(5):
        assert sorted(await pubsub.ainvoke("x")) == ["xa", "xb"]


@pytest.mark.anyio
async def test_sync_subscribers_of_one_message_run_concurrently() -> None:
    """Two blocking sync subscribers that meet at a barrier both finish."""
    barrier = threading.Barrier(2)

    def meet(x: str) -> str:
        barrier.wait(timeout=10)
        return x

    pubsub = PubSub(
        Topic.IN.subscribe(name="one") | meet | Topic.OUT.publish(),
        Topic.IN.subscribe(name="two") | meet | Topic.OUT.publish(),
    )
    with anyio.fail_after(15):
        assert await pubsub.ainvoke("x") == ["x", "x"]


@pytest.mark.anyio
async def test_messages_of_one_subscriber_run_concurrently() -> None:
    """One process handles several messages of its topic at the same time."""
    meet = _meeting(5)
    work = Topic("work")
    pubsub = PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe() | meet | Topic.OUT.publish(),
    )
    with anyio.fail_after(5):
        assert sorted(await pubsub.ainvoke([1, 2, 3, 4, 5])) == [1, 2, 3, 4, 5]


@pytest.mark.anyio
async def test_every_delivery_of_a_wide_fan_out_runs_concurrently() -> None:
    """A hundred deliveries that each wait until all have started all finish (none waits for a free task)."""
    meet = _meeting(100)
    work = Topic("work")
    pubsub = PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe() | meet | Topic.OUT.publish(),
    )
    with anyio.fail_after(5):
        assert sorted(await pubsub.ainvoke(list(range(100)))) == list(range(100))


@pytest.mark.anyio
async def test_two_waiting_deliveries_among_many_fast_ones_meet() -> None:
    """Two deliveries waiting for each other, far apart among fast ones of one fan-out, both finish."""
    meet = _meeting(2)

    async def step(x: int) -> int:
        return await meet(x) if x in (10, 90) else x

    work = Topic("work")
    pubsub = PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe() | step | Topic.OUT.publish(),
    )
    with anyio.fail_after(5):
        assert sorted(await pubsub.ainvoke(list(range(100)))) == list(range(100))


def _tracked(**settings: Any) -> tuple[PubSub, dict[str, int]]:
    """Six deliveries over two processes; records the most steps running at once."""
    state = {"now": 0, "peak": 0, "done": 0}

    async def step(x: int) -> int:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        state["now"] -= 1
        state["done"] += 1
        return x

    work = Topic("work")
    pubsub = PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe(name="first") | step | Topic.OUT.publish(),
        work.subscribe(name="second") | step | Topic.OUT.publish(),
        **settings,
    )
    return pubsub, state


@pytest.mark.anyio
async def test_without_limit_steps_overlap() -> None:
    """Without max_concurrency, steps of one run overlap (the control for the limit tests)."""
    pubsub, state = _tracked()
    assert len(await pubsub.ainvoke([1, 2, 3])) == 6
    assert state["peak"] > 1


@pytest.mark.anyio
async def test_max_concurrency_one_serialises_steps() -> None:
    """max_concurrency=1 lets only one step run at a time, and every step still runs."""
    pubsub, state = _tracked(max_concurrency=1)
    with anyio.fail_after(5):
        assert sorted(await pubsub.ainvoke([1, 2, 3])) == [1, 1, 2, 2, 3, 3]
    assert state["peak"] == 1
    assert state["done"] == 6


@pytest.mark.anyio
async def test_max_concurrency_two_caps_at_two() -> None:
    """max_concurrency=2 lets at most two steps run at a time."""
    pubsub, state = _tracked(max_concurrency=2)
    await pubsub.ainvoke([1, 2, 3])
    assert state["peak"] == 2


@pytest.mark.anyio
async def test_max_concurrency_limits_sync_steps() -> None:
    """max_concurrency=1 also serialises blocking sync steps running in threads."""
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    two_started = threading.Event()

    def step(x: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if state["now"] == 2:
                two_started.set()
        two_started.wait(0.05)  # the workload: a call that blocks a little
        with lock:
            state["now"] -= 1
        return x

    work = Topic("work")
    pubsub = PubSub(
        Topic.IN.subscribe() | work.publish_each(),
        work.subscribe() | step | Topic.OUT.publish(),
        max_concurrency=1,
    )
    with anyio.fail_after(10):
        assert sorted(await pubsub.ainvoke([1, 2, 3, 4])) == [1, 2, 3, 4]
    assert state["peak"] == 1


def _stuck() -> PubSub:
    async def stuck(x: Any) -> Any:
        await anyio.Event().wait()
        return x

    return PubSub(Topic.IN.subscribe() | stuck | Topic.OUT.publish())


@pytest.mark.anyio
async def test_step_timeout_fails_the_run_with_timeout_error() -> None:
    """A step passing step_timeout fails the run with TimeoutError."""
    pubsub = PubSub(*_stuck().processes, step_timeout=0.05)
    with anyio.fail_after(5):
        with pytest.raises(TimeoutError):
            await pubsub.ainvoke(1)


@pytest.mark.anyio
@pytest.mark.parametrize(("setting", "error"), [("step_timeout", TimeoutError), ("timeout", RunTimeoutError)])
async def test_timeouts_from_config(setting: str, error: type[Exception]) -> None:
    """step_timeout and timeout given in config apply to that call."""
    with anyio.fail_after(5):
        with pytest.raises(error):
            await _stuck().ainvoke(1, {setting: 0.05})


@pytest.mark.anyio
async def test_step_timeout_goes_to_error_topic_when_handled() -> None:
    """With a Topic.ERROR subscriber, a timed-out step is reported there and the run carries on."""
    errors = Topic.ERROR.subscribe() | (lambda record: record["error"]) | Topic.OUT.publish()
    pubsub = PubSub(*_stuck().processes, errors, step_timeout=0.05)
    with anyio.fail_after(5):
        assert await pubsub.ainvoke(1) == ["TimeoutError"]


@pytest.mark.anyio
async def test_step_timeout_spares_fast_steps() -> None:
    """Steps finishing within step_timeout are not affected by it."""
    pubsub = PubSub(Topic.IN.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(), step_timeout=5)
    assert await pubsub.ainvoke(1) == [2]


@pytest.mark.anyio
async def test_run_timeout_raises_run_timeout_error() -> None:
    """A run passing its timeout raises RunTimeoutError naming the state id, and keeps its state."""
    pubsub = PubSub(*_stuck().processes, timeout=0.05)
    with anyio.fail_after(5):
        with pytest.raises(RunTimeoutError, match="slow-run") as info:
            await pubsub.ainvoke(1, {"state_id": "slow-run"})
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, PermflowError)
    assert [m.topic for m in await pubsub.apeek("slow-run")] == ["__in__"]


@pytest.mark.anyio
async def test_run_timeout_spares_fast_runs() -> None:
    """A run finishing within its timeout returns normally."""
    pubsub = PubSub(Topic.IN.subscribe() | Topic.OUT.publish(), timeout=5)
    assert await pubsub.ainvoke("ok") == ["ok"]


@pytest.mark.anyio
async def test_abatch_runs_independent_runs_concurrently() -> None:
    """abatch runs its inputs at the same time, each in its own run, results in input order."""
    meet = _meeting(3)
    pubsub = PubSub(Topic.IN.subscribe() | meet | (lambda x: x * 10) | Topic.OUT.publish())
    with anyio.fail_after(5):
        assert await pubsub.abatch([1, 2, 3]) == [[10], [20], [30]]


@pytest.mark.anyio
async def test_abatch_runs_do_not_see_each_other() -> None:
    """Runs of one batch with their own state ids keep separate logs."""
    pubsub = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())
    configs = [{"state_id": f"batch-{i}"} for i in range(3)]
    assert await pubsub.abatch(["a", "b", "c"], configs) == [["a"], ["b"], ["c"]]
    for i, value in enumerate("abc"):
        assert [m.value for m in await pubsub.apeek(f"batch-{i}")] == [value, value]


@pytest.mark.anyio
async def test_abatch_max_concurrency_limits_runs() -> None:
    """abatch(max_concurrency=1) runs one run at a time."""
    state = {"now": 0, "peak": 0}

    async def step(x: int) -> int:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        state["now"] -= 1
        return x

    pubsub = PubSub(Topic.IN.subscribe() | step | Topic.OUT.publish())
    assert await pubsub.abatch([1, 2, 3, 4], max_concurrency=1) == [[1], [2], [3], [4]]
    assert state["peak"] == 1


@pytest.mark.anyio
async def test_abatch_refuses_one_state_id_for_many_runs() -> None:
    """A single state id for several batch inputs is refused, since batch runs are independent."""
    pubsub = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())
    with pytest.raises(ValueError, match="state"):
        await pubsub.abatch([1, 2], {"state_id": "shared"})


@pytest.mark.anyio
async def test_abatch_failure_propagates() -> None:
    """One failing run of a batch makes abatch raise, carrying that run's original error."""

    def picky(x: int) -> int:
        if x == 2:
            raise ArithmeticError("two is not welcome")
        return x

    pubsub = PubSub(Topic.IN.subscribe() | picky | Topic.OUT.publish())
    with pytest.raises(Exception) as info:
        await pubsub.abatch([1, 2, 3])
    assert _carries(info.value, ArithmeticError, "two is not welcome")


def _carries(exc: BaseException, kind: type[BaseException], text: str) -> bool:
    """Whether ``exc`` is, or groups, an exception of ``kind`` whose message is ``text``."""
    if isinstance(exc, kind) and str(exc) == text:
        return True
    return any(_carries(inner, kind, text) for inner in getattr(exc, "exceptions", ()))


def _blocked_sync(release: threading.Event) -> PubSub:
    def blocked(x: Any) -> Any:
        release.wait(30)
        return x

    return PubSub(Topic.IN.subscribe() | blocked | Topic.OUT.publish())


@pytest.mark.anyio
@pytest.mark.parametrize(("setting", "error"), [("step_timeout", TimeoutError), ("timeout", RunTimeoutError)])
async def test_timeouts_stop_waiting_for_a_blocked_sync_step(setting: str, error: type[Exception]) -> None:
    """step_timeout and a run timeout fail the run promptly even while a sync step is blocked."""
    release = threading.Event()
    try:
        with anyio.fail_after(5):
            with pytest.raises(error):
                await _blocked_sync(release).ainvoke(1, {setting: 0.05})
    finally:
        release.set()


@pytest.mark.anyio
async def test_step_timeout_does_not_count_waiting_for_a_slot() -> None:
    """With max_concurrency=1, steps queued behind others are timed only once they run."""

    async def step(x: int) -> int:
        await anyio.sleep(0.3)  # the workload: each step takes 0.3 s of its 0.5 s budget
        return x

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda n: list(range(n))) | Topic("each").publish_each(),
        Topic("each").subscribe() | step | Topic.OUT.publish(),
        max_concurrency=1,
        step_timeout=0.5,
    )
    with anyio.fail_after(10):
        assert sorted(await pubsub.ainvoke(3)) == [0, 1, 2]
