"""Runnables: the steps of a chain, and how ``|`` composes them.

Anything that can be a step is coerced into a ``Runnable``:

* a ``Runnable`` (including a ``PubSub``) as it is;
* a ``dict`` of steps: run in parallel on the same input, giving a dict;
* an object with ``ainvoke``/``invoke`` (e.g. a LangChain runnable);
* an ``async def`` function: awaited on the event loop;
* a plain function: run according to its execution policy (``_execution``).

Only the async path is real: every sync method drives its async twin.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._context import step_context
from ._errors import ConfigError, DefinitionError
from ._execution import Execution, SyncRunner
from ._portal import run_sync
from ._processes import ProcessRunner, check_importable, default_pool
from ._resources import asks_for_resources, resources_for

if TYPE_CHECKING:
    from ._cache import RunnableCached
    from ._retry import RunnableRetry, RunnableTimeout

__all__ = [
    "Runnable",
    "RunnableEach",
    "RunnableLambda",
    "RunnableParallel",
    "RunnableSequence",
    "callable_name",
    "coerce",
]

Config = Mapping[str, Any] | None


class Runnable:
    """A unit of work with sync and async entry points, composable with ``|``."""

    @property
    def name(self) -> str:
        """A readable name; a process's derived name is made of its steps' names."""
        return type(self).__name__

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """Run on ``input`` and return the output: the one method a runnable
        implements, which every other entry point drives. Inside a run,
        ``config`` carries the run's context (publishing steps need it);
        outside one it is ``None`` and publishing is a no-op."""
        raise NotImplementedError

    def invoke(self, input: Any, config: Config = None) -> Any:
        """Sync twin of ``ainvoke``, run on permflow's background event loop (works
        from threads, from a running event loop and from within a step)."""
        return run_sync(self.ainvoke, input, config)

    async def abatch(
        self, inputs: Sequence[Any], config: Config = None, *, max_concurrency: int | None = None
    ) -> list[Any]:
        """Run ``ainvoke`` on each input concurrently; results in input order."""
        results: list[Any] = [None] * len(inputs)
        limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None

        async def one(i: int, value: Any) -> None:
            if limiter is None:
                results[i] = await self.ainvoke(value, config)
            else:
                async with limiter:
                    results[i] = await self.ainvoke(value, config)

        async with anyio.create_task_group() as tg:
            for i, value in enumerate(inputs):
                tg.start_soon(one, i, value)
        return results

    def batch(
        self, inputs: Sequence[Any], config: Config = None, *, max_concurrency: int | None = None
    ) -> list[Any]:
        """Sync twin of ``abatch``: ``ainvoke`` on each input concurrently, at most
        ``max_concurrency`` at once; results in input order."""

        async def go() -> list[Any]:
            return await self.abatch(inputs, config, max_concurrency=max_concurrency)

        return run_sync(go)

    async def astream(self, input: Any, config: Config = None) -> AsyncIterator[Any]:
        """Yield the output of ``ainvoke`` (one item: a step's output is not incremental)."""
        yield await self.ainvoke(input, config)

    def stream(self, input: Any, config: Config = None) -> Iterator[Any]:
        """Sync twin of ``astream``: yield the output of ``invoke``."""
        yield self.invoke(input, config)

    def __or__(self, other: Any) -> Runnable:
        return RunnableSequence(self, coerce(other))

    def __ror__(self, other: Any) -> Runnable:
        return RunnableSequence(coerce(other), self)

    def map(self) -> RunnableEach:
        """A runnable applying this one to each element of a list, concurrently."""
        return RunnableEach(self)

    def with_retry(
        self,
        *,
        stop_after_attempt: int = 3,
        wait_exponential_jitter: bool = True,
        retry_if_exception_type: tuple[type[BaseException], ...] = (Exception,),
        initial_wait: float = 0.1,
        max_wait: float = 10.0,
    ) -> RunnableRetry:
        """Retry this runnable when it raises one of ``retry_if_exception_type``.

        Waits ``initial_wait * 2**n`` seconds (capped at ``max_wait``) between
        attempts, with random jitter of up to the same amount when
        ``wait_exponential_jitter`` is true. Messages published by a failed
        attempt are discarded.
        """
        from ._retry import RunnableRetry

        return RunnableRetry(
            self,
            attempts=stop_after_attempt,
            jitter=wait_exponential_jitter,
            retry_on=retry_if_exception_type,
            initial_wait=initial_wait,
            max_wait=max_wait,
        )

    def with_timeout(self, seconds: float) -> RunnableTimeout:
        """Fail with ``TimeoutError`` if one call takes longer than ``seconds``."""
        from ._retry import RunnableTimeout

        return RunnableTimeout(self, seconds)

    def with_cache(
        self,
        name: str | None = None,
        key: Callable[[Any], Any] | None = None,
        ttl: float | None = None,
        version: str | int | None = None,
    ) -> RunnableCached:
        """Store this step's result for each input in the run's connection and
        reuse it instead of running the step again: across runs, state ids and
        (on a shared store such as Redis) processes, workers and restarts.

        ``name`` (default: the function's ``module.qualname``; required for a
        lambda) names the cache; ``key(input)`` gives the cache key (default:
        the input itself, in a canonical JSON form); ``ttl`` seconds before an
        entry expires (default: never); changing ``version`` starts afresh.
        Failures are not stored. Concurrent calls with the same key on one
        event loop run the step once. Outside a run the cache is an in-memory
        one of this process. Raises ``DefinitionError`` for a bad argument or
        a missing name."""
        from ._cache import RunnableCached

        return RunnableCached(self, name=name, key=key, ttl=ttl, version=version)

    def _publishes(self) -> Iterator[str | None]:
        """Topics this runnable may publish to (None: decided at run time)."""
        return iter(())


class RunnableLambda(Runnable):
    """A step made from a function (sync or async).

    ``execution`` chooses where a sync function runs: ``"auto"`` (default,
    see ``permflow._execution``), ``"thread"`` or ``"inline"``; or
    ``"process"``: in a pool of worker processes (see ``permflow._processes``),
    for which ``func`` must be an importable, module-level plain function
    (else ``DefinitionError`` here). A function with a parameter named
    ``resources`` (after its input) also receives the shared resources of its
    PubSub (see ``permflow._resources``); a process step cannot (they stay in
    this process).
    """

    def __init__(self, func: Callable[..., Any], *, execution: Execution = "auto") -> None:
        if not callable(func):
            raise ConfigError(f"expected a callable, got {func!r}")
        self.func = func
        self._is_async = _is_async_callable(func)
        self._runner: SyncRunner | None = None
        self._process: ProcessRunner | None = None
        if execution == "process":
            check_importable(func, async_=self._is_async)
            self._process = ProcessRunner(func, self.name)
        elif not self._is_async:
            self._runner = SyncRunner(func, execution)
        self._asks = asks_for_resources(func)  # looked at once: steps that don't ask pay nothing
        if self._process is not None and self._asks is not None:
            raise DefinitionError(
                f"step {self.name!r} runs in a worker process (execution='process') and asks for "
                "'resources': shared resources stay in this process; pass what the step needs in its input"
            )

    @property
    def name(self) -> str:
        """The function's qualified name; a lambda's gets ``#`` and a digest of
        its code, so that different lambdas give different process names."""
        return callable_name(self.func)

    @property
    def sync_runner(self) -> SyncRunner | None:
        """How the plain function runs, when it is one that needs nothing but
        its input (no resources, not in a worker process); else None."""
        return self._runner if self._process is None and self._asks is None else None

    @property
    def direct(self) -> Callable[[Any], Awaitable[Any]] | None:
        """The async function itself when ``ainvoke`` does nothing but await it
        (no resources, not in a worker process), else None."""
        if self._is_async and self._process is None and self._asks is None:
            return self.func
        return None

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """Await an async function; run a sync one as ``execution`` says (a worker
        thread, inline or in a worker process). Raises ``TypeError`` if a plain
        function returns a coroutine (it should be ``async def``). A function
        that asks for ``resources`` gets them; ``ConfigError`` if there are none
        to give."""
        if self._process is not None:
            return await self._in_process(input, config)
        extra = None if self._asks is None else await resources_for(self, config, self._asks)
        if self._runner is None:
            return await (self.func(input) if extra is None else self.func(input, **extra))
        ctx = step_context(config)
        return self.checked(await self._runner.run(input, ctx, extra))

    def checked(self, result: Any) -> Any:
        """``result`` of the plain function; ``ConfigError`` if it is a coroutine."""
        if inspect.iscoroutine(result):
            result.close()
            raise ConfigError(
                f"step {self.name!r} is a plain function that returned a coroutine; make it "
                "`async def` and await inside it, so its result is published, not the coroutine"
            )
        return result

    async def _in_process(self, input: Any, config: Config) -> Any:
        """In the run's PubSub's pool, within the run's ``max_processes``; outside
        a run, in the module-wide pool."""
        assert self._process is not None
        ctx = step_context(config)
        if ctx is None or ctx.services is None:
            return await self._process.run(input, default_pool(), ctx.processes if ctx else None)
        return await self._process.run(input, ctx.services.process_pool(), ctx.processes)

    def __repr__(self) -> str:
        return f"RunnableLambda({self.name})"


class RunnableSequence(Runnable):
    """Steps run one after another, each getting the previous one's output."""

    def __init__(self, *steps: Runnable) -> None:
        flat: list[Runnable] = []
        for step in steps:
            flat.extend(step.steps if isinstance(step, RunnableSequence) else (step,))
        self.steps: tuple[Runnable, ...] = tuple(flat)

    @property
    def name(self) -> str:
        """The steps' names joined by ``/``."""
        return "/".join(step.name for step in self.steps)

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """Run the steps in order, each on the previous one's output."""
        for step in self.steps:
            input = await step.ainvoke(input, config)
        return input

    def _publishes(self) -> Iterator[str | None]:
        for step in self.steps:
            yield from step._publishes()


class RunnableParallel(Runnable):
    """Steps run concurrently on the same input; gives a dict of their outputs."""

    def __init__(self, steps: Mapping[str, Any]) -> None:
        self.steps = {key: coerce(value) for key, value in steps.items()}

    @property
    def name(self) -> str:
        """The keys in braces, e.g. ``{word,n}``."""
        return "{" + ",".join(self.steps) + "}"

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """Run every step on ``input`` concurrently; a dict of their outputs under
        the same keys. The first step to fail cancels the others."""
        out: dict[str, Any] = {}

        async def one(key: str, step: Runnable) -> None:
            out[key] = await step.ainvoke(input, config)

        await _first_error_wins([functools.partial(one, key, step) for key, step in self.steps.items()])
        return {key: out[key] for key in self.steps}

    def _publishes(self) -> Iterator[str | None]:
        for step in self.steps.values():
            yield from step._publishes()


async def _first_error_wins(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` concurrently. The first to fail cancels the others, and its
    exception is raised as itself, as a single step's would be (no group)."""
    failures: list[Exception] = []

    async def guarded(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:
            failures.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(guarded, job)
    if failures:
        raise failures[0]


class RunnableEach(Runnable):
    """Applies a runnable to each element of an iterable, concurrently."""

    def __init__(self, inner: Runnable) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        """``map(<name of the inner runnable>)``."""
        return f"map({self.inner.name})"

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """Run the inner runnable on each element of ``input`` concurrently; the
        outputs as a list, in order. The first to fail cancels the others."""
        items = list(input)
        out: list[Any] = [None] * len(items)

        async def one(i: int, item: Any) -> None:
            out[i] = await self.inner.ainvoke(item, config)

        await _first_error_wins([functools.partial(one, i, item) for i, item in enumerate(items)])
        return out

    def _publishes(self) -> Iterator[str | None]:
        return self.inner._publishes()


class _RunnableAdapter(Runnable):
    """Wraps a foreign runnable (anything with ``ainvoke`` or ``invoke``)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._sync = None if hasattr(obj, "ainvoke") else SyncRunner(obj.invoke, "thread")

    @property
    def name(self) -> str:
        return str(getattr(self.obj, "name", None) or type(self.obj).__name__)

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        if self._sync is None:
            return await self.obj.ainvoke(input)
        ctx = step_context(config)
        return await self._sync.run(input, ctx)


def callable_name(func: Any) -> str:
    """A function's qualified name; a lambda's gets ``#`` and a digest of its
    code, so that different lambdas give different names."""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    code = getattr(func, "__code__", None)
    if name.endswith("<lambda>") and code is not None:
        return f"{name}#{_code_digest(code)}"
    return str(name)


def _code_digest(code: Any) -> str:
    """A short, stable identity for an anonymous function: its constants and
    the names it uses (not its bytecode, which changes between Python versions).
    Lambdas that differ only in an operator share it and are told apart by
    position, like identical chains."""
    parts: list[str] = []

    def walk(co: Any) -> None:
        parts.append(repr(co.co_names))
        parts.append(repr(co.co_varnames))
        for const in co.co_consts:
            if hasattr(const, "co_consts"):
                walk(const)
            else:
                parts.append(repr(const))

    walk(code)
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=4).hexdigest()


def _is_async_callable(func: Any) -> bool:
    while hasattr(func, "func") and not inspect.isfunction(func):  # functools.partial
        func = func.func
    call = None if inspect.isroutine(func) else type(func).__dict__.get("__call__")
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


def _refuse_uncalled_topic_method(thing: Any) -> None:
    """``topic.publish`` (not ``topic.publish()``) as a step would publish nothing."""
    from ._topic import Topic

    owner = getattr(thing, "__self__", None)
    if isinstance(owner, Topic) and thing.__name__ in ("publish", "publish_each", "subscribe", "join"):
        from ._errors import DefinitionError

        raise DefinitionError(
            f"{owner!r}.{thing.__name__} is a method: call it to get the step, "
            f"'| {_topic_expr(owner)}.{thing.__name__}()'"
        )


def _topic_expr(topic: Any) -> str:
    specials = {"__in__": "Topic.IN", "__out__": "Topic.OUT", "__error__": "Topic.ERROR"}
    return specials.get(topic.name, f"Topic({topic.name!r})")


def coerce(thing: Any) -> Runnable:
    """Turn anything usable as a step into a ``Runnable``."""
    if isinstance(thing, Runnable):
        return thing
    if isinstance(thing, Mapping):
        return RunnableParallel(thing)
    if hasattr(thing, "ainvoke") or hasattr(thing, "invoke"):
        return _RunnableAdapter(thing)
    if callable(thing):
        _refuse_uncalled_topic_method(thing)
        return RunnableLambda(thing)
    raise ConfigError(
        f"cannot use {thing!r} (type {type(thing).__name__}) as a step: expected a "
        "function, an async function, a dict of steps or a runnable"
    )
