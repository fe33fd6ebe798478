"""Steps and chains: what ``|`` accepts, retries, timeouts, and process names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from permflow import InMemoryPubSubConnection, PubSub, Runnable, RunnableLambda, Topic

ROOT = Path(__file__).resolve().parents[1]


def _double(x: int) -> int:
    return x * 2


async def _aincrement(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + 1


class OnlyInvoke:
    """A foreign runnable offering just ``invoke``."""

    def invoke(self, x: int) -> int:
        return x - 3


class OnlyAinvoke:
    """A foreign runnable offering just ``ainvoke``."""

    async def ainvoke(self, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 10


def _run(*steps: Any, value: Any = 1) -> list[Any]:
    """Run ``IN.subscribe() | steps... | OUT.publish()`` in a PubSub."""
    chain = Topic.IN.subscribe()
    for step in steps:
        chain = chain | step
    return PubSub(chain | Topic.OUT.publish()).invoke(value)


# -- composition with | -----------------------------------------------------


def test_function_piped_into_runnable() -> None:
    """A plain function on the left of ``|`` composes with a runnable on the right."""
    seq = _double | RunnableLambda(_aincrement)
    assert isinstance(seq, Runnable)
    assert seq.invoke(5) == 11


def test_runnable_piped_into_function() -> None:
    """A runnable on the left of ``|`` composes with a plain or async function."""
    assert (RunnableLambda(_aincrement) | _double).invoke(5) == 12
    assert (RunnableLambda(_double) | _aincrement).invoke(5) == 11


def test_dict_on_either_side() -> None:
    """A dict of steps composes on either side of a runnable and runs in parallel to a dict."""
    left = {"d": _double, "i": _aincrement} | RunnableLambda(lambda d: d["d"] + d["i"])
    assert left.invoke(3) == 10
    right = RunnableLambda(_double) | {"d": _double, "same": lambda x: x}
    assert right.invoke(3) == {"d": 12, "same": 6}


def test_chain_with_every_kind_of_step() -> None:
    """Functions, async functions, foreign runnables and dicts all work as steps in a run."""
    out = _run(_double, _aincrement, OnlyInvoke(), OnlyAinvoke(), {"a": _double, "b": _aincrement}, value=4)
    assert out == [{"a": 120, "b": 61}]


def test_nested_dicts_run_in_parallel() -> None:
    """A dict inside a dict gives a nested dict of results."""
    assert _run({"outer": {"inner": _double}, "plain": _aincrement}, value=2) == [
        {"outer": {"inner": 4}, "plain": 3}
    ]


@pytest.mark.anyio
async def test_dict_branches_run_concurrently() -> None:
    """Each branch of a dict waits for the other's event, so both finish only if they overlap."""
    a_ready, b_ready = anyio.Event(), anyio.Event()

    async def a(x: int) -> str:
        a_ready.set()
        await b_ready.wait()
        return "a"

    async def b(x: int) -> str:
        b_ready.set()
        await a_ready.wait()
        return "b"

    with anyio.fail_after(5):
        assert await (RunnableLambda(_double) | {"a": a, "b": b}).ainvoke(1) == {"a": "a", "b": "b"}


def test_only_invoke_object_as_step() -> None:
    """An object with only ``invoke`` is usable as a step."""
    assert _run(OnlyInvoke(), value=10) == [7]


def test_only_ainvoke_object_as_step() -> None:
    """An object with only ``ainvoke`` is usable as a step."""
    assert _run(OnlyAinvoke(), value=10) == [100]


def test_pubsub_as_step_returns_its_out_list() -> None:
    """A nested PubSub used as a step gives the list of what it published to OUT."""
    inner = PubSub(
        Topic.IN.subscribe() | _double | Topic.OUT.publish(),
        Topic.IN.subscribe(name="same") | Topic.OUT.publish(),
    )
    outer = PubSub(Topic.IN.subscribe() | inner | Topic.OUT.publish())
    (result,) = outer.invoke(3)
    assert sorted(result) == [3, 6]


def test_pubsub_as_middle_step() -> None:
    """A nested PubSub between functions gets the previous output and feeds the next step."""
    inner = PubSub(Topic.IN.subscribe() | _aincrement | Topic.OUT.publish())
    assert _run(_double, inner, lambda out: out[0] * 100, value=2) == [500]


def test_langchain_runnable_as_step() -> None:
    """A LangChain RunnableLambda works as a step of a chain inside a run."""
    from langchain_core.runnables import RunnableLambda as LCLambda

    assert _run(LCLambda(lambda x: x + 7), _double, value=1) == [16]
    assert (RunnableLambda(_double) | LCLambda(lambda x: x + 7)).invoke(1) == 9


def test_map_applies_step_to_each_element() -> None:
    """``.map()`` runs the step on each element and keeps the order."""
    assert RunnableLambda(_double).map().invoke([1, 2, 3]) == [2, 4, 6]
    assert _run(RunnableLambda(_aincrement).map(), value=[5, 1]) == [[6, 2]]


@pytest.mark.anyio
async def test_map_runs_elements_concurrently() -> None:
    """Every element of a mapped step waits until all have started, so they overlap."""
    started = 0
    everyone = anyio.Event()

    async def wait_for_all(x: int) -> int:
        nonlocal started
        started += 1
        if started == 4:
            everyone.set()
        await everyone.wait()
        return x

    with anyio.fail_after(5):
        assert await RunnableLambda(wait_for_all).map().ainvoke([1, 2, 3, 4]) == [1, 2, 3, 4]


def test_coercing_a_non_callable_raises_type_error() -> None:
    """A value that is neither a function, a dict nor a runnable cannot be a step."""
    with pytest.raises(TypeError, match="int"):
        Topic.IN.subscribe() | 42
    with pytest.raises(TypeError, match="expected a callable"):
        RunnableLambda("not callable")  # type: ignore[arg-type]


def test_pubsub_rejects_a_non_process() -> None:
    """Passing a runnable or a function where a process is expected raises TypeError naming it."""
    with pytest.raises(TypeError, match="RunnableLambda"):
        PubSub(RunnableLambda(_double))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="_double"):
        PubSub(processes=[_double])  # type: ignore[list-item]


def test_process_cannot_be_piped_into_a_process() -> None:
    """Processes connect through topics, never with ``|`` directly."""
    a = Topic.IN.subscribe() | _double
    b = Topic("x").subscribe() | _double
    with pytest.raises(ValueError, match="through a topic"):
        a | b


def test_partial_of_async_function_is_awaited() -> None:
    """A functools.partial of an async function is awaited as a step, not run as a sync one."""
    import functools

    async def add(x: int, y: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + y

    assert _run(functools.partial(add, y=5), value=1) == [6]


def test_callable_object_with_async_call_is_awaited() -> None:
    """An object whose ``__call__`` is async is awaited as a step."""
    assert _run(Flaky(0), value="same") == ["same"]


def test_nested_pubsub_error_keeps_its_type() -> None:
    """An error inside a nested PubSub step reaches the outer invoke with its own type and message."""

    def fail(x: int) -> int:
        raise ZeroDivisionError(f"cannot split {x}")

    inner = PubSub(Topic.IN.subscribe() | fail | Topic.OUT.publish())
    with pytest.raises(ZeroDivisionError, match="cannot split 3"):
        _run(inner, value=3)


def test_runnable_batch_keeps_input_order() -> None:
    """``runnable.batch`` runs each input and returns results in input order."""
    step = RunnableLambda(_aincrement) | _double
    assert step.batch([3, 1, 2]) == [8, 4, 6]
    assert step.batch([3, 1, 2], max_concurrency=1) == [8, 4, 6]


# -- outside a run -----------------------------------------------------------


def test_chain_invoke_outside_a_run_runs_steps() -> None:
    """``chain.invoke(x)`` runs the steps directly; publishes pass their input through."""
    side = Topic("side")
    chain = Topic.IN.subscribe() | (lambda x: [x, x]) | side.publish_each() | side.publish() | len
    assert chain.invoke(9) == 2
    assert (Topic.IN.subscribe() | _double | side.publish() | _aincrement).invoke(4) == 9


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_chain_invoke_inside_a_step_publishes_nothing() -> None:
    """A chain invoked directly from a step of a run does not publish into that run."""
    chain = Topic.IN.subscribe() | _double | Topic.OUT.publish()
    outer = PubSub(Topic.IN.subscribe() | (lambda x: chain.invoke(x)) | Topic("done").publish())
    assert outer.invoke(5, {"state_id": "direct-chain"}) == []
    log = outer.peek("direct-chain")
    assert [(m.topic, m.value) for m in log] == [("__in__", 5), ("done", 10)]


# -- retries and timeouts ----------------------------------------------------


class Flaky:
    """Raises ``error`` for the first ``failures`` calls, then returns its input."""

    def __init__(self, failures: int, error: type[Exception] = ValueError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self, x: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"attempt {self.calls}")
        return x


def test_retry_until_success() -> None:
    """A step failing twice succeeds on its third attempt."""
    flaky = Flaky(2)
    step = RunnableLambda(flaky).with_retry(stop_after_attempt=3)
    assert step.invoke("ok") == "ok"
    assert flaky.calls == 3


def test_retry_gives_up_after_n_attempts() -> None:
    """A step that always fails is tried exactly N times, then its error propagates."""
    flaky = Flaky(100)
    step = RunnableLambda(flaky).with_retry(stop_after_attempt=4)
    with pytest.raises(ValueError, match="attempt 4"):
        step.invoke(1)
    assert flaky.calls == 4


def test_retry_only_listed_exception_types() -> None:
    """An exception type not listed in retry_if_exception_type is raised at once."""
    flaky = Flaky(1, KeyError)
    step = RunnableLambda(flaky).with_retry(stop_after_attempt=5, retry_if_exception_type=(ValueError,))
    with pytest.raises(KeyError):
        step.invoke(1)
    assert flaky.calls == 1


def test_retry_listed_subclass_is_retried() -> None:
    """A subclass of a listed exception type is retried."""
    flaky = Flaky(2, UnicodeError)
    step = RunnableLambda(flaky).with_retry(stop_after_attempt=3, retry_if_exception_type=(ValueError,))
    assert step.invoke(1) == 1
    assert flaky.calls == 3


def test_retry_needs_at_least_one_attempt() -> None:
    """stop_after_attempt below 1 is refused."""
    with pytest.raises(ValueError, match="stop_after_attempt"):
        RunnableLambda(_double).with_retry(stop_after_attempt=0)


def test_retry_inside_a_run() -> None:
    """A retried step inside a PubSub delivers the successful result once."""
    flaky = Flaky(2)
    assert _run(RunnableLambda(flaky).with_retry(stop_after_attempt=3), value="v") == ["v"]


def test_process_retry_discards_failed_attempts_publishes() -> None:
    """Retrying a whole chain stores only the successful attempt's messages, once."""
    side = Topic("side")
    flaky = Flaky(2)
    chain = (Topic.IN.subscribe() | side.publish() | flaky | Topic.OUT.publish()).with_retry(
        stop_after_attempt=3
    )
    pubsub = PubSub(chain)
    assert pubsub.invoke("x", {"state_id": "retry-chain"}) == ["x"]
    assert flaky.calls == 3
    log = pubsub.peek("retry-chain")
    assert [(m.topic, m.value) for m in log] == [("__in__", "x"), ("side", "x"), ("__out__", "x")]


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_process_retry_gives_up_and_stores_nothing() -> None:
    """A chain failing every attempt fails the run and stores none of its publishes."""
    side = Topic("side")
    flaky = Flaky(100, RuntimeError)
    chain = (Topic.IN.subscribe() | side.publish() | flaky).with_retry(stop_after_attempt=2)
    pubsub = PubSub(chain)
    with pytest.raises(RuntimeError, match="attempt 2"):
        pubsub.invoke("x", {"state_id": "retry-fails"})
    assert flaky.calls == 2
    assert [m.topic for m in pubsub.peek("retry-fails")] == ["__in__"]


@pytest.mark.anyio
async def test_with_timeout_fails_slow_step() -> None:
    """A step that does not finish within its timeout raises TimeoutError."""
    never = anyio.Event()

    async def stuck(x: int) -> int:
        await never.wait()
        return x

    with anyio.fail_after(5):
        with pytest.raises(TimeoutError):
            await RunnableLambda(stuck).with_timeout(0.05).ainvoke(1)


@pytest.mark.anyio
async def test_with_timeout_lets_fast_step_through() -> None:
    """A step that finishes within its timeout returns its result."""
    assert await RunnableLambda(_aincrement).with_timeout(5).ainvoke(1) == 2


def test_timeout_must_be_positive() -> None:
    """with_timeout refuses zero or negative seconds."""
    with pytest.raises(ValueError, match="timeout"):
        RunnableLambda(_double).with_timeout(0)


@pytest.mark.anyio
async def test_retry_around_timeout_retries_timeouts() -> None:
    """with_timeout inside with_retry turns a hung attempt into a retried one."""
    never = anyio.Event()
    calls = 0

    async def hangs_once(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await never.wait()
        return x

    step = (
        RunnableLambda(hangs_once)
        .with_timeout(0.05)
        .with_retry(stop_after_attempt=2, retry_if_exception_type=(TimeoutError,))
    )
    with anyio.fail_after(5):
        assert await step.ainvoke(7) == 7
    assert calls == 2


# -- process names -----------------------------------------------------------

NAMES_SCRIPT = textwrap.dedent(
    """
    from permflow import PubSub, Topic, route

    def shout(x):
        return x.upper()

    async def fetch(x):
        return x

    class Tool:
        def invoke(self, x):
            return x

    draft, review = Topic("draft"), Topic("review")
    pubsub = PubSub(
        Topic.IN.subscribe() | shout | {"a": fetch, "b": Tool()} | draft.publish(),
        draft.subscribe() | (lambda x: x) | review.publish(),
        draft.subscribe() | (lambda x: x + "!") | review.publish(),
        review.join() | len | route(lambda n: Topic.OUT, topics=[Topic.OUT]),
        Topic.ERROR.subscribe(name="errors") | Topic.OUT.publish(),
    )
    """
)


def _names_in_fresh_interpreter(hash_seed: str) -> list[str]:
    code = NAMES_SCRIPT + "\nimport json\nprint(json.dumps(pubsub.process_names))\n"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names: list[str] = json.loads(result.stdout)
    return names


def test_process_names_are_deterministic_across_interpreters() -> None:
    """The same definitions give the same process names in fresh interpreters and here."""
    namespace: dict[str, Any] = {}
    exec(NAMES_SCRIPT, namespace)
    here = namespace["pubsub"].process_names
    assert _names_in_fresh_interpreter("1") == here
    assert _names_in_fresh_interpreter("2") == here
    assert len(set(here)) == len(here) == 5


def test_subscribe_name_overrides_derived_name() -> None:
    """``topic.subscribe(name=...)`` sets the process name, kept as more steps are piped."""
    chain = Topic.IN.subscribe(name="doubler") | _double | Topic.OUT.publish()
    assert chain.name == "doubler"
    assert PubSub(chain).process_names == ["doubler"]


def test_with_name_overrides_derived_name() -> None:
    """``.with_name(...)`` renames a chain without changing what it does."""
    chain = (Topic.IN.subscribe() | _double | Topic.OUT.publish()).with_name("renamed")
    pubsub = PubSub(chain)
    assert pubsub.process_names == ["renamed"]
    assert pubsub.invoke(4) == [8]


def test_derived_name_describes_the_chain() -> None:
    """A derived name mentions the topic read and the steps, so it changes when the chain does."""
    a = Topic.IN.subscribe() | _double | Topic.OUT.publish()
    b = Topic.IN.subscribe() | _aincrement | Topic.OUT.publish()
    assert "__in__" in a.name and "_double" in a.name
    assert a.name != b.name


def test_different_chains_never_share_a_name() -> None:
    """Two chains deriving the same name (lambdas differing only in an operator) get distinct
    names and both run."""
    one = Topic.IN.subscribe() | (lambda x: x + 10) | Topic.OUT.publish()
    two = Topic.IN.subscribe() | (lambda x: x * 10) | Topic.OUT.publish()
    assert one.name == two.name
    pubsub = PubSub(one, two)
    names = pubsub.process_names
    assert len(set(names)) == 2
    assert names[0] == one.name
    assert sorted(pubsub.invoke(3)) == [13, 30]


def test_derived_name_yields_to_an_explicit_one() -> None:
    """A derived name equal to another chain's explicit name gets a suffix instead."""
    derived = Topic.IN.subscribe() | _double | Topic.OUT.publish()
    explicit = (Topic.IN.subscribe() | _aincrement | Topic.OUT.publish()).with_name(derived.name)
    names = PubSub(derived, explicit).process_names
    assert names[1] == derived.name
    assert names[0] != derived.name
    assert len(set(names)) == 2


def test_retried_chains_with_equal_derived_names_get_distinct_names() -> None:
    """Wrapping unnamed chains in with_retry/with_timeout keeps them distinct in one PubSub."""
    one = (Topic.IN.subscribe() | (lambda x: x + 1) | Topic.OUT.publish()).with_retry(stop_after_attempt=2)
    two = (Topic.IN.subscribe() | (lambda x: x * 10) | Topic.OUT.publish()).with_retry(stop_after_attempt=2)
    three = (Topic.IN.subscribe() | (lambda x: x - 1) | Topic.OUT.publish()).with_timeout(5)
    pubsub = PubSub(one, two, three)
    assert len(set(pubsub.process_names)) == 3
    assert sorted(pubsub.invoke(3)) == [2, 4, 30]


def test_with_retry_keeps_the_derived_name() -> None:
    """Retrying a chain does not change the name its stored progress is kept under."""
    chain = Topic.IN.subscribe() | _double | Topic.OUT.publish()
    assert chain.with_retry(stop_after_attempt=2).name == chain.name
    assert chain.with_timeout(1).name == chain.name


def test_explicit_duplicate_names_are_an_error() -> None:
    """Two chains explicitly given one name fail at PubSub definition, naming it."""
    one = Topic.IN.subscribe(name="worker") | _double | Topic.OUT.publish()
    two = (Topic.IN.subscribe() | _aincrement | Topic.OUT.publish()).with_name("worker")
    with pytest.raises(ValueError, match="'worker'"):
        PubSub(one, two)


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_adding_an_unnamed_chain_keeps_each_chains_progress() -> None:
    """A later PubSub on the same state id that adds an unnamed chain in front neither steals
    nor repeats another chain's progress: each sees every message of its topic exactly once."""
    seen: list[tuple[str, int]] = []
    first = Topic.IN.subscribe() | (lambda x: seen.append(("first", x)))
    second = Topic.IN.subscribe() | (lambda x: seen.append(("second", x)))
    connection = InMemoryPubSubConnection()
    PubSub(first, connection=connection).invoke(1, {"state_id": "grown"})
    PubSub(second, first, connection=connection).invoke(2, {"state_id": "grown"})
    assert sorted(seen) == [("first", 1), ("first", 2), ("second", 1), ("second", 2)]
