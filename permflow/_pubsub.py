"""``PubSub``: processes grouped into one program over one connection."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, final

import anyio

from ._context import RUN_KEY
from ._engine import CLEANUP_SECONDS, Run, Settings, Tracer
from ._errors import ConfigError, DefinitionError, PermflowWarning
from ._graph import DYNAMIC, Graph
from ._here import run_here
from ._message import Message, MessageList
from ._plan import Plan
from ._portal import run_sync
from ._process import Process
from ._remote import RemoteRun
from ._resources import check_factories, closing_from
from ._runnable import Config, Runnable
from ._services import Services
from ._stream import MessageStream, SyncMessageStream
from ._topic import IN_NAME, OUT_NAME, Topic
from ._tracebacks import trim_traceback
from .connections._base import PubSubConnection
from .connections.memory import InMemoryPubSubConnection

__all__ = ["PubSub"]

T = TypeVar("T")

_SETTINGS = (
    "recursion_limit",
    "max_concurrency",
    "timeout",
    "step_timeout",
    "max_deliveries",
    "max_processes",
)
_CONFIG_KEYS = frozenset(("state_id", *_SETTINGS))
_log = logging.getLogger("permflow.run")


@final
class PubSub(Runnable):
    """A program made of processes that talk over topics.

    ``invoke(input)`` publishes ``input`` to ``Topic.IN``, runs until idle and
    returns what was published to ``Topic.OUT`` during the call. Runs are
    namespaced by ``config={"state_id": ...}``; without one, a fresh id is
    used and its state is deleted once the run finishes (a run that fails or
    is interrupted keeps its state, reachable through ``Message.state_id``).

    ``resources`` names factories of objects its steps share (clients, pools,
    models): a step with a ``resources`` parameter receives them, made on
    first use and closed by ``close``/``aclose`` (see ``permflow._resources``).

    ``max_processes`` sizes the pool of worker processes that this PubSub's
    ``execution="process"`` steps share (default: the number of CPUs); given
    in ``config``, it caps how many process steps of that one call use the
    pool at once.
    """

    def __init__(
        self,
        *args: Process,
        processes: Sequence[Process] = (),
        connection: PubSubConnection | None = None,
        recursion_limit: int = 1000,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        step_timeout: float | None = None,
        max_deliveries: int = 5,
        max_processes: int | None = None,
        trace: Tracer | None = None,
        inputs: Sequence[Topic | str] = (),
        resources: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        if isinstance(processes, Process):
            processes = (processes,)
        self.processes: tuple[Process, ...] = (*args, *processes)
        if connection is not None and not isinstance(connection, PubSubConnection):
            raise ConfigError(f"connection must be a PubSubConnection, got {connection!r}")
        self.connection = connection if connection is not None else InMemoryPubSubConnection()
        factories = None if resources is None else check_factories(resources)
        #: Topics fed from outside this PubSub (a human's answer, another PubSub on
        #: the same state id): reading them is not a wiring mistake.
        self.inputs: tuple[str, ...] = _topic_names(inputs)
        self._plan = Plan(self.processes, self.inputs)
        self._on_workers = False
        self.settings = _settings(
            Settings(),
            dict(
                recursion_limit=recursion_limit,
                max_concurrency=max_concurrency,
                timeout=timeout,
                step_timeout=step_timeout,
                max_deliveries=max_deliveries,
                max_processes=max_processes,
            ),
        )
        #: What this PubSub lends its steps and closes with ``close()``/``aclose()``.
        #: What this PubSub lends its steps and closes with ``close()``/``aclose()``.
        self.services = Services(
            self.connection, resources=factories, max_processes=self.settings.max_processes
        )
        if trace is not None:
            if not callable(trace):
                raise ConfigError(f"trace must be a callable returning a context manager, got {trace!r}")
            self.settings = dataclasses.replace(self.settings, trace=trace)
        for problem in self._plan.graph.problems:
            warnings.warn(problem, PermflowWarning, stacklevel=2)

    @property
    def process_names(self) -> list[str]:
        """The names under which each process's progress is stored."""
        return list(self._plan.names)

    def graph(self) -> Graph:
        """The static topology (topics × processes), with its cycles."""
        return self._plan.graph

    def with_connection(self, connection: PubSubConnection) -> PubSub:
        """The same processes and settings over another connection."""
        if not isinstance(connection, PubSubConnection):
            raise ConfigError(f"connection must be a PubSubConnection, got {connection!r}")
        clone = copy.copy(self)
        clone.connection = connection
        clone.services = self.services.with_connection(connection)
        return clone

    def with_workers(self) -> PubSub:
        """The same program, but runs are executed by workers
        (``permflow worker module:pubsub``) sharing this connection: ``invoke``,
        ``stream`` and ``batch`` store the input, announce the state id and
        follow the run; no step runs in this process."""
        clone = self.with_connection(self.connection)
        clone._on_workers = True
        return clone

    @property
    def on_workers(self) -> bool:
        """Whether runs are submitted to workers (see ``with_workers``)."""
        return self._on_workers

    def _run(
        self, state_id: str, settings: Settings, emit: Callable[[Message], None], *, resumable: bool = True
    ) -> Run | RemoteRun:
        run: Run | RemoteRun
        if self._on_workers:  # no step runs here
            run = RemoteRun(self._plan, self.connection, state_id, settings, emit)
        else:
            run = Run(self._plan, self.connection, state_id, settings, emit, services=self.services)
        run.resumable = resumable
        return run

    # -- lifetime ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Close what this PubSub opened for its steps (shared resources, the
        process pool). The connection is not closed: it belongs to whoever
        passed it in. A closed PubSub can run again; it opens them anew."""
        await self.services.aclose()

    def close(self) -> None:
        """Sync twin of ``aclose`` (run on permflow's background event loop)."""
        run_sync(closing_from, threading.get_ident(), self.aclose)

    def __enter__(self) -> PubSub:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> PubSub:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- async API: the real one --------------------------------------------

    def _prepare(self, config: Config, topic: Topic | str | None) -> tuple[str, bool, Settings, str]:
        if not config and topic is None and isinstance(config, (dict, type(None))):
            return os.urandom(16).hex(), True, self.settings, IN_NAME  # no config: the usual case
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(
                f"config must be a dict such as {{'state_id': ...}}, got {type(config).__name__} {config!r}"
            )
        config = dict(config or {})
        nested = config.pop(RUN_KEY, None) is not None
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        given = None if nested else config.get("state_id")
        if given is not None and (not isinstance(given, str) or not given):
            raise ConfigError(f"state_id must be a non-empty string, got {given!r}")
        state_id = given or os.urandom(16).hex()
        name = topic.name if isinstance(topic, Topic) else Topic(topic or IN_NAME).name
        if name == OUT_NAME:
            raise ConfigError("cannot send input to Topic.OUT")
        return state_id, given is None, _settings(self.settings, config), name

    async def ainvoke(
        self, input: Any = None, config: Config = None, *, topic: Topic | str | None = None
    ) -> list[Any]:
        """Run until idle; return the values published to ``Topic.OUT`` meanwhile.

        ``input=None`` publishes nothing: the run continues from stored state.
        ``topic`` sends the input to another topic than ``Topic.IN``.
        """
        state_id, generated, settings, name = self._prepare(config, topic)
        out: list[Any] = []

        def collect(message: Message) -> None:
            if message.topic == OUT_NAME:
                out.append(message.value)

        run = self._run(state_id, settings, collect, resumable=not generated)
        try:
            await run.execute(None if input is None else name, input)
        except BaseException as exc:  # failed or cancelled
            trim_traceback(exc)
            if generated:  # nobody knows this id, so nobody could resume it
                await self._forget(state_id)
            elif isinstance(exc, Exception) and hasattr(exc, "add_note"):
                exc.add_note(
                    f"permflow: state id {state_id!r} keeps the run's unfinished work; "
                    "invoke it again (input None) to resume"
                )
            raise
        if generated:
            await self.connection.adelete(state_id)
        return out

    def astream(
        self, input: Any = None, config: Config = None, *, topic: Topic | str | None = None
    ) -> MessageStream:
        """Yield every message as it is published, ending when the run is idle.

        Leaving early stops the run: running steps are cancelled, their
        deliveries stay pending and are redelivered on the next call with the
        same state id. A bare ``break`` is safe; ``async with
        pubsub.astream(...) as stream`` makes the stop happen right there
        rather than when the iterator is collected.
        """
        return self._astream(input, *self._prepare(config, topic))

    def _astream(
        self, input: Any, state_id: str, generated: bool, settings: Settings, name: str
    ) -> MessageStream:
        async def run(emit: Callable[[Message], None]) -> None:
            engine = self._run(state_id, settings, emit)
            await engine.execute(None if input is None else name, input)

        async def finish() -> None:
            if generated:
                await self.connection.adelete(state_id)

        return MessageStream(run, finish, state_id=state_id)

    async def abatch(
        self,
        inputs: Sequence[Any],
        config: Config | Sequence[Config] = None,
        *,
        max_concurrency: int | None = None,
    ) -> list[Any]:
        """Independent runs, concurrently; one config for all or one per input.

        Results are in input order. The first run to fail cancels the others
        and its exception is raised (as ``invoke`` would raise it).
        """
        if config is None or isinstance(config, Mapping):
            if config and config.get("state_id") and len(inputs) > 1:
                raise ConfigError("batch runs are independent: give one config per input to set state ids")
            configs: list[Config] = [config] * len(inputs)
        else:
            configs = list(config)
            if len(configs) != len(inputs):
                raise ConfigError(f"got {len(inputs)} inputs but {len(configs)} configs")
        results: list[Any] = [None] * len(inputs)
        limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None
        failures: list[Exception] = []

        async def one(i: int) -> None:
            try:
                if limiter is None:
                    results[i] = await self.ainvoke(inputs[i], configs[i])
                else:
                    async with limiter:
                        results[i] = await self.ainvoke(inputs[i], configs[i])
            except Exception as exc:  # the first failure fails the batch, like invoke
                failures.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for i in range(len(inputs)):
                tg.start_soon(one, i)
        if failures:
            raise failures[0]
        return results

    async def _forget(self, state_id: str) -> None:
        """Delete a generated state id after a failed run, within the cleanup
        bound, without hiding the run's own error behind a cleanup error."""
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_SECONDS
            try:
                await self.connection.adelete(state_id)
            except Exception as exc:
                _log.warning("could not delete the state of failed run %r: %s", state_id, exc)
        if scope.cancelled_caught:
            _log.warning("could not delete the state of failed run %r in time", state_id)

    async def apeek(self, state_id: str) -> list[Message]:
        """The stored messages of ``state_id`` in publish order (a list that
        Jupyter draws as a table)."""
        messages = await self.connection.apeek(state_id)
        return messages if isinstance(messages, MessageList) else MessageList(messages)

    async def adelete(self, state_id: str) -> None:
        """Forget the stored state of ``state_id``."""
        await self.connection.adelete(state_id)

    # -- sync facade ---------------------------------------------------------

    def invoke(
        self, input: Any = None, config: Config = None, *, topic: Topic | str | None = None
    ) -> list[Any]:
        """Sync twin of ``ainvoke``: publish ``input`` to ``Topic.IN`` (or ``topic``),
        run until idle, return the values published to ``Topic.OUT`` meanwhile.
        Works from threads, from a running event loop and from within a step."""

        ainvoke = self.ainvoke if topic is None else functools.partial(self.ainvoke, topic=topic)
        try:
            if self._runs_anywhere():
                return run_here(ainvoke, input, config)
            return run_sync(ainvoke, input, config)
        except Exception as exc:
            trim_traceback(exc)
            raise

    def batch(
        self,
        inputs: Sequence[Any],
        config: Config | Sequence[Config] = None,
        *,
        max_concurrency: int | None = None,
    ) -> list[Any]:
        """Sync twin of ``abatch``: independent runs, concurrently, results in
        input order; the first failure cancels the others and is raised."""

        async def go() -> list[Any]:
            return await self.abatch(inputs, config, max_concurrency=max_concurrency)

        try:
            return run_here(go) if self._runs_anywhere() else run_sync(go)
        except Exception as exc:
            trim_traceback(exc)
            raise

    def _runs_anywhere(self) -> bool:
        """Whether a sync call may run on any event loop, the caller's thread's
        too: nothing of it is bound to one loop (the in-memory connection, no
        resources, no workers) and every step is a plain function that runs on
        the event loop already (or publishes)."""
        runners = self._plan.plain_runners
        return (
            runners is not None
            and not self._on_workers
            and self.services.resources is None
            and type(self.connection) is InMemoryPubSubConnection
            and all(runner.runs_inline for runner in runners)
        )

    def peek(self, state_id: str) -> list[Message]:
        """Sync twin of ``apeek``: the stored messages of ``state_id`` in publish
        order (a list that Jupyter draws as a table)."""
        return run_sync(self.apeek, state_id)

    def delete(self, state_id: str) -> None:
        """Sync twin of ``adelete``: forget the stored state of ``state_id``."""
        run_sync(self.adelete, state_id)

    def stream(
        self, input: Any = None, config: Config = None, *, topic: Topic | str | None = None
    ) -> SyncMessageStream:
        """Sync twin of ``astream``: yield every message as it is published, ending
        when the run is idle. Leaving early stops the run: right away with
        ``with pubsub.stream(...) as messages:`` or ``.close()``, else once the
        iterator is dropped. A bad ``config`` fails here, not at the first message."""
        prepared = self._prepare(config, topic)
        return SyncMessageStream(lambda: self._astream(input, *prepared), state_id=prepared[0])

    def __repr__(self) -> str:
        graph = self.graph()
        where = f"on {self.connection!r}" + (", runs on workers" if self._on_workers else "")
        if not graph.reads:
            return f"<PubSub {where}, no processes>"
        lines = [f"<PubSub {where}, {len(graph.reads)} process{'es' if len(graph.reads) > 1 else ''}:"]
        for process, topic in graph.reads.items():
            reads = "joins" if process in graph.joins else "reads"
            targets = [
                repr(t) if t != DYNAMIC else "a topic picked at run time" for t in graph.writes[process]
            ]
            some = " (filtered by when=)" if process in graph.filtered else ""
            lines.append(f"  {process!r} {reads} {topic!r}{some}, writes {', '.join(targets) or 'nothing'}")
        return "\n".join(lines) + ">"


def _topic_names(inputs: Sequence[Topic | str]) -> tuple[str, ...]:
    if isinstance(inputs, (str, Topic)):
        inputs = (inputs,)
    names = []
    for topic in inputs:
        if not isinstance(topic, (Topic, str)):
            raise DefinitionError(f"inputs must be topics (or topic names), got {topic!r}")
        names.append(topic.name if isinstance(topic, Topic) else Topic(topic).name)
    return tuple(names)


def _settings(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    values = {key: getattr(base, key) for key in _SETTINGS}
    values.update((k, v) for k, v in overrides.items() if k in _SETTINGS)
    limit = values["recursion_limit"]
    if not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"recursion_limit must be a positive integer, got {limit!r}")
    if values["max_concurrency"] is not None and values["max_concurrency"] < 1:
        raise ConfigError(f"max_concurrency must be at least 1, got {values['max_concurrency']!r}")
    for key in ("timeout", "step_timeout"):
        seconds = values[key]
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0
        ):
            raise ConfigError(f"{key} must be a positive number of seconds or None, got {seconds!r}")
    if values["max_deliveries"] < 1:
        raise ConfigError(f"max_deliveries must be at least 1, got {values['max_deliveries']!r}")
    processes = values["max_processes"]
    positive = isinstance(processes, int) and not isinstance(processes, bool) and processes > 0
    if processes is not None and not positive:
        raise ConfigError(
            f"max_processes must be a positive integer or None (the CPU count), got {processes!r}"
        )
    return dataclasses.replace(base, **values)
