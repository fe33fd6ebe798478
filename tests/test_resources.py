"""Shared resources: made once per PubSub and event loop on first ask, lent to
the steps that ask, closed with the PubSub, on both connections."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest

from permflow import (
    ConfigError,
    InMemoryPubSubConnection,
    PubSub,
    PubSubConnection,
    RedisPubSubConnection,
    RunnableLambda,
    Topic,
)
from permflow._worker import Worker

pytestmark = pytest.mark.anyio

CASES = [("memory", "asyncio"), ("memory", "trio"), ("redis", "asyncio")]  # redis-py: asyncio only


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests taking a ``connection`` run on each (connection, backend) of ``CASES``."""
    if "connection" in metafunc.fixturenames:
        metafunc.parametrize(("kind", "anyio_backend"), CASES, ids=["-".join(case) for case in CASES])


@pytest.fixture
async def connection(kind: str, redis_url: str, redis_prefix: str) -> AsyncIterator[PubSubConnection]:
    if kind == "memory":
        conn: PubSubConnection = InMemoryPubSubConnection()
    else:
        conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
    async with conn:
        yield conn


class Journal:
    """Factories that note what they make and close, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.made: dict[str, int] = {}
        self.exit_threads: list[int] = []

    def plain(self, name: str) -> Any:
        def factory() -> dict[str, Any]:
            self.made[name] = self.made.get(name, 0) + 1
            self.events.append(f"make {name}")
            return {"name": name, "n": self.made[name]}

        return factory

    def sync_cm(self, name: str) -> Any:
        @contextlib.contextmanager
        def factory() -> Iterator[dict[str, Any]]:
            value = self.plain(name)()
            yield value
            self.events.append(f"exit {name}")
            self.exit_threads.append(threading.get_ident())

        return factory

    def async_cm(self, name: str) -> Any:
        journal = self

        class Client:
            """An async context manager, such as a redis-py client or an HTTP session."""

            async def __aenter__(self) -> dict[str, Any]:
                await anyio.lowlevel.checkpoint()
                return journal.plain(name)()  # type: ignore[no-any-return]

            async def __aexit__(self, *exc: object) -> None:
                await anyio.lowlevel.checkpoint()
                journal.events.append(f"exit {name}")
                journal.exit_threads.append(threading.get_ident())

        return Client

    def async_generator_cm(self, name: str) -> Any:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[dict[str, Any]]:
            await anyio.lowlevel.checkpoint()
            try:
                yield self.plain(name)()
            finally:
                await anyio.lowlevel.checkpoint()
                self.events.append(f"exit {name}")

        return factory


def _echo(pubsub_resources: Any) -> Any:
    return {name: pubsub_resources[name]["n"] for name in sorted(pubsub_resources)}


async def test_steps_that_ask_get_resources_made_once_for_many_runs(connection: PubSubConnection) -> None:
    """Sync and async steps (keyword-only or positional) get the same resources, each made once."""
    journal = Journal()

    async def use_async(x: int, *, resources: Any) -> list[Any]:
        return [x, _echo(resources)]

    def use_sync(pair: list[Any], resources: Any) -> list[Any]:
        return [*pair, resources["db"]["name"]]

    async def make_http() -> dict[str, Any]:
        return journal.plain("http")()  # type: ignore[no-any-return]

    pubsub = PubSub(
        Topic.IN.subscribe() | use_async | use_sync | Topic.OUT.publish(),
        connection=connection,
        resources={"db": journal.plain("db"), "http": make_http},
    )
    with anyio.fail_after(20):
        results = [await pubsub.ainvoke(x) for x in range(3)]
        await pubsub.aclose()
    assert results == [[[x, {"db": 1, "http": 1}, "db"]] for x in range(3)]
    assert journal.made == {"db": 1, "http": 1}


async def test_forty_concurrent_first_uses_make_each_resource_once(connection: PubSubConnection) -> None:
    """40 runs asking at once, while the async factory is still waiting, share one resource."""
    arrived = 0
    everyone = anyio.Event()
    calls = 0

    async def arrive(x: int) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == 40:
            everyone.set()
        return x

    async def factory() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await everyone.wait()  # every run has reached its asking step meanwhile
        return {"n": calls}

    def use(x: int, resources: Any) -> list[int]:
        return [x, resources["db"]["n"]]

    pubsub = PubSub(
        Topic.IN.subscribe() | arrive | use | Topic.OUT.publish(),
        connection=connection,
        resources={"db": factory},
    )
    with anyio.fail_after(30):
        results = await pubsub.abatch(list(range(40)))
    assert calls == 1
    assert results == [[[x, 1]] for x in range(40)]


async def test_resources_are_never_made_when_no_step_asks(connection: PubSubConnection) -> None:
    """No factory runs for steps without a ``resources`` parameter after their input."""
    journal = Journal()

    def named_like_it(resources: str) -> str:  # the input itself is called "resources"
        return resources + "!"

    pubsub = PubSub(
        Topic.IN.subscribe() | named_like_it | (lambda x: x + "?") | Topic.OUT.publish(),
        connection=connection,
        resources={"db": journal.sync_cm("db")},
    )
    with anyio.fail_after(20):
        assert await pubsub.ainvoke("a") == ["a!?"]
        await pubsub.aclose()
    assert journal.events == []


async def test_context_managers_are_entered_once_and_exited_in_reverse_order(
    connection: PubSubConnection,
) -> None:
    """Sync and async context managers are entered in order on first use and exited last first."""
    journal = Journal()

    class Session:
        """An async context manager returned by an async factory."""

        async def __aenter__(self) -> dict[str, Any]:
            return journal.plain("session")()  # type: ignore[no-any-return]

        async def __aexit__(self, *exc: object) -> None:
            journal.events.append("exit session")

    async def session() -> Session:
        return Session()

    def use(x: int, resources: Any) -> Any:
        return _echo(resources)

    async with PubSub(
        Topic.IN.subscribe() | use | Topic.OUT.publish(),
        connection=connection,
        resources={
            "a": journal.sync_cm("a"),
            "b": journal.async_generator_cm("b"),
            "plain": journal.plain("plain"),
            "session": session,
        },
    ) as pubsub:
        with anyio.fail_after(20):
            assert await pubsub.ainvoke(1) == [{"a": 1, "b": 1, "plain": 1, "session": 1}]
            assert await pubsub.ainvoke(2) == [{"a": 1, "b": 1, "plain": 1, "session": 1}]
    assert journal.events == [
        "make a", "make b", "make plain", "make session", "exit session", "exit b", "exit a",
    ]  # fmt: skip
    with anyio.fail_after(20):  # closed: the next step that asks makes them anew
        assert await pubsub.ainvoke(3) == [{"a": 2, "b": 2, "plain": 2, "session": 2}]
        await pubsub.aclose()
    assert journal.events[-3:] == ["exit session", "exit b", "exit a"]


async def test_sync_steps_in_threads_get_the_identical_objects(connection: PubSubConnection) -> None:
    """A sync step in a worker thread and an async step on the loop see the very same object."""
    seen: list[tuple[object, int]] = []

    def in_thread(x: int, resources: Any) -> int:
        seen.append((resources["client"], threading.get_ident()))
        return x

    async def on_loop(x: int, resources: Any) -> int:
        seen.append((resources["client"], threading.get_ident()))
        return x

    pubsub = PubSub(
        Topic.IN.subscribe() | RunnableLambda(in_thread, execution="thread") | on_loop | Topic.OUT.publish(),
        connection=connection,
        resources={"client": object},
    )
    with anyio.fail_after(20):
        assert await pubsub.abatch([1, 2, 3]) == [[1], [2], [3]]
    objects = {id(obj) for obj, _ in seen}
    assert len(seen) == 6 and len(objects) == 1
    loop_thread = threading.get_ident()
    assert {thread for _, thread in seen[::2]} != {loop_thread}  # some sync calls ran in threads


async def test_a_raising_factory_fails_the_step_and_a_later_step_tries_again(
    connection: PubSubConnection,
) -> None:
    """invoke raises the factory's error; what was made before it is kept; the next run makes the rest."""
    journal = Journal()
    failures = iter([OSError("database is down")])

    def flaky() -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "db"

    def use(x: int, resources: Any) -> list[Any]:
        return [x, resources["db"], resources["cache"]["n"]]

    pubsub = PubSub(
        Topic.IN.subscribe() | use | Topic.OUT.publish(),
        connection=connection,
        resources={"cache": journal.sync_cm("cache"), "db": flaky},
    )
    with anyio.fail_after(20):
        with pytest.raises(OSError, match="database is down"):
            await pubsub.ainvoke(1)
        assert await pubsub.ainvoke(2) == [[2, "db", 1]]
        await pubsub.aclose()
    assert journal.events == ["make cache", "exit cache"]


async def test_a_raising_factory_is_an_error_record_when_errors_are_handled(
    connection: PubSubConnection,
) -> None:
    """With a Topic.ERROR subscriber, the factory's failure becomes a record there and the run carries on."""

    def broken() -> object:
        raise LookupError("no such model")

    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: x) | Topic.OUT.publish(),
        Topic.ERROR.subscribe() | (lambda record: [record["error"], record["message"]]) | Topic.OUT.publish(),
        connection=connection,
        resources={"model": broken},
    )
    with anyio.fail_after(20):
        assert await pubsub.ainvoke(1) == [["LookupError", "no such model"]]


async def test_aclose_also_closes_what_sync_calls_made_on_the_background_loop(anyio_backend: str) -> None:
    """Resources are per event loop; aclose exits each on the loop that made it, async ones too."""
    journal = Journal()
    counter = itertools.count()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: resources["db"]["n"]) | Topic.OUT.publish(),
        resources={"db": journal.async_cm("db"), "tag": lambda: next(counter)},
    )
    loop_thread = threading.get_ident()
    with anyio.fail_after(20):
        assert await anyio.to_thread.run_sync(pubsub.invoke, 1) == [1]  # permflow's background loop
        assert await pubsub.ainvoke(2) == [2]  # this test's loop: made again
        await pubsub.aclose()
    assert journal.events == ["make db", "make db", "exit db", "exit db"]
    assert next(counter) == 2
    assert len(set(journal.exit_threads)) == 2 and loop_thread in journal.exit_threads  # each on its loop


def test_close_exits_what_sync_invoke_made_and_with_closes_too() -> None:
    """close() and leaving ``with pubsub:`` exit the resources made by sync invoke, last made first."""
    journal = Journal()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: _echo(resources)) | Topic.OUT.publish(),
        resources={"a": journal.sync_cm("a"), "b": journal.async_cm("b")},
    )
    assert pubsub.invoke(1) == pubsub.invoke(2) == [{"a": 1, "b": 1}]
    pubsub.close()
    assert journal.events == ["make a", "make b", "exit b", "exit a"]
    with pubsub:
        assert pubsub.invoke(3) == [{"a": 2, "b": 2}]
    assert journal.events[-2:] == ["exit b", "exit a"]


def test_close_after_asyncio_run_exits_sync_ones_and_reports_async_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Resources of an event loop that has ended: sync context managers are exited, async ones
    (which need their loop) are forgotten with a warning naming them."""
    import asyncio

    journal = Journal()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: _echo(resources)) | Topic.OUT.publish(),
        resources={"file": journal.sync_cm("file"), "pool": journal.async_cm("pool")},
    )
    assert asyncio.run(pubsub.ainvoke(1)) == [{"file": 1, "pool": 1}]
    with caplog.at_level("WARNING", logger="permflow.resources"):
        pubsub.close()
    assert journal.events == ["make file", "make pool", "exit file"]
    assert "resource 'pool'" in caplog.text and "event loop has ended" in caplog.text
    assert pubsub.invoke(2) == [{"file": 2, "pool": 2}]  # and it is usable again
    pubsub.close()
    assert journal.events[-2:] == ["exit pool", "exit file"]


def test_close_exits_resources_of_a_trio_run_on_that_run_or_after_it_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Resources made in a trio run of another thread are exited on that run while it lasts;
    once it has ended, only the sync ones can be."""
    journal = Journal()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: _echo(resources)) | Topic.OUT.publish(),
        resources={"file": journal.sync_cm("file"), "pool": journal.async_cm("pool")},
    )
    made, closed = threading.Event(), threading.Event()
    trio_thread: list[int] = []

    async def serve() -> None:
        trio_thread.append(threading.get_ident())
        assert await pubsub.ainvoke(1) == [{"file": 1, "pool": 1}]
        made.set()
        await anyio.to_thread.run_sync(closed.wait, 20)  # the run goes on meanwhile

    thread = threading.Thread(target=anyio.run, args=(serve,), kwargs={"backend": "trio"})
    thread.start()
    assert made.wait(20)
    pubsub.close()
    closed.set()
    thread.join(20)
    assert journal.events == ["make file", "make pool", "exit pool", "exit file"]
    assert journal.exit_threads == trio_thread * 2  # both exits ran on the trio run

    anyio.run(pubsub.ainvoke, 2, backend="trio")
    with caplog.at_level("WARNING", logger="permflow.resources"):
        pubsub.close()
    assert journal.events[4:] == ["make file", "make pool", "exit file"]
    assert "resource 'pool'" in caplog.text and "event loop has ended" in caplog.text


async def test_sync_close_from_the_loop_that_made_them_does_not_wait_for_itself(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """close() called on the thread of the loop that made the resources (a notebook cell)
    returns at once: sync context managers exited, async ones reported."""
    journal = Journal()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: _echo(resources)) | Topic.OUT.publish(),
        resources={"file": journal.sync_cm("file"), "pool": journal.async_cm("pool")},
    )
    with anyio.fail_after(20):
        assert await pubsub.ainvoke(1) == [{"file": 1, "pool": 1}]
    began = anyio.current_time()
    with caplog.at_level("WARNING", logger="permflow.resources"):
        pubsub.close()  # blocks this loop's thread, by design of this test
    assert anyio.current_time() - began < 10  # no wait for the blocked loop (its bound is 30 s)
    assert journal.events == ["make file", "make pool", "exit file"]
    assert "resource 'pool'" in caplog.text and "await pubsub.aclose()" in caplog.text


async def test_with_connection_shares_the_resources(anyio_backend: str) -> None:
    """A PubSub moved to another connection uses the original's resources (one set,
    not one per clone), and closing either closes them for both."""
    journal = Journal()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: resources["db"]["n"]) | Topic.OUT.publish(),
        resources={"db": journal.sync_cm("db")},
    )
    moved = pubsub.with_connection(InMemoryPubSubConnection())
    with anyio.fail_after(20):
        assert await pubsub.ainvoke(1) == [1]
        assert await moved.ainvoke(1) == [1]  # the same database
        await moved.aclose()
        assert journal.events == ["make db", "exit db"]
        assert await pubsub.ainvoke(1) == [2]  # made anew after the close
        await pubsub.aclose()
    assert journal.made == {"db": 2} and journal.events.count("exit db") == 2


async def test_a_nested_pubsub_lends_its_own_resources(anyio_backend: str) -> None:
    """Steps of an inner PubSub get the inner PubSub's resources, the outer ones the outer's."""
    inner = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: [*x, resources["who"]]) | Topic.OUT.publish(),
        resources={"who": lambda: "inner"},
    )
    outer = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: [resources["who"]]) | inner | Topic.OUT.publish(),
        resources={"who": lambda: "outer"},
    )
    with anyio.fail_after(20):
        assert await outer.ainvoke(0) == [[["outer", "inner"]]]


async def test_an_in_process_worker_lends_resources_closed_with_the_pubsub(anyio_backend: str) -> None:
    """A Worker's steps get the PubSub's resources; ``async with pubsub`` around ``run()`` closes them."""
    journal = Journal()
    conn = InMemoryPubSubConnection()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: resources["db"]["n"]) | Topic.OUT.publish(),
        connection=conn,
        resources={"db": journal.async_cm("db")},
    )
    worker = Worker(pubsub, name="w1")
    with anyio.fail_after(20):
        async with pubsub, anyio.create_task_group() as tg:
            await tg.start(worker.run)
            assert await pubsub.with_workers().abatch([1, 2]) == [[1], [1]]
            worker.stop()
    assert journal.events == ["make db", "exit db"]


# -- asking without resources, and bad definitions ------------------------------


def _wants(x: int, resources: Any) -> Any:
    return [x, resources["db"]]


def _may_want(x: int, resources: Any = None) -> Any:
    return [x, resources]


def test_outside_a_run_resources_come_from_config() -> None:
    """A chain unit-tested with ``invoke`` gets ready objects from ``config={"resources": ...}``."""
    chain = Topic.IN.subscribe() | _wants | Topic.OUT.publish()
    assert chain.invoke(1, {"resources": {"db": "fake"}}) == [1, "fake"]
    assert (Topic.IN.subscribe() | _may_want).invoke(1) == [1, None]


def test_asking_outside_a_run_without_them_says_how_to_give_them() -> None:
    """A step that needs resources outside a run fails with ConfigError naming the step and the fix."""
    with pytest.raises(ConfigError) as info:
        (Topic.IN.subscribe() | _wants).invoke(1)
    assert str(info.value) == (
        "step '_wants' has a 'resources' parameter but it runs outside a PubSub: pass them as "
        "config={'resources': {'name': obj}}, or run it in a PubSub(..., resources={'name': factory}) "
        "(or give it a default)"
    )


def test_asking_in_a_pubsub_without_resources_fails_the_step_or_gets_the_default() -> None:
    """In a PubSub without resources a step that needs them fails the run; one with a default gets it."""
    needs = PubSub(Topic.IN.subscribe() | _wants | Topic.OUT.publish())
    with pytest.raises(ConfigError, match="'_wants' has a 'resources' parameter but its PubSub has none"):
        needs.invoke(1)
    assert PubSub(Topic.IN.subscribe() | _may_want | Topic.OUT.publish()).invoke(1) == [[1, None]]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            ["db"],
            "resources must be a dict of name -> factory (a callable with no arguments), got list ['db']",
        ),
        ({"": dict}, "resource names must be non-empty strings, got ''"),
        ({1: dict}, "resource names must be non-empty strings, got 1"),
        (
            {"db": "redis://localhost"},
            "resource 'db': expected a factory (a callable with no arguments that returns the resource "
            "or a context manager giving it), got str 'redis://localhost'; to share a ready object "
            "write {'db': lambda: obj}",
        ),
        (
            {"db": _wants},
            "resource 'db': the factory <function _wants at 0x",
        ),
    ],
)
def test_bad_resources_fail_at_construction(resources: Any, message: str) -> None:
    """resources= other than a dict of names to no-argument factories is refused, naming the entry."""
    with pytest.raises(ConfigError) as info:
        PubSub(Topic.IN.subscribe() | _wants | Topic.OUT.publish(), resources=resources)
    assert str(info.value).startswith(message)
    if "<function" in message:
        assert str(info.value).endswith("callable with no arguments (missing a required argument: 'x')")


def test_repeated_asyncio_runs_do_not_pile_up_resources() -> None:
    """Each asyncio.run gets resources of its own; those of loops that have ended are let go
    (sync context managers exited) when a new loop first asks, not kept until close()."""
    import asyncio

    journal = Journal()
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x, resources: resources["db"]["n"]) | Topic.OUT.publish(),
        resources={"db": journal.sync_cm("db")},
    )
    for n in (1, 2, 3):
        assert asyncio.run(pubsub.ainvoke(0)) == [n]
    assert journal.events == ["make db", "exit db", "make db", "exit db", "make db"]
    assert pubsub.services.resources is not None
    assert len(pubsub.services.resources._loops) == 1  # only the last loop's
    pubsub.close()
    assert journal.events.count("exit db") == 3
