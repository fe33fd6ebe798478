"""A PubSub's processes compiled for the engine: names, readers, cycles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, DefinitionError
from ._execution import SyncRunner
from ._filter import Predicate
from ._graph import Graph
from ._process import Process
from ._runnable import Runnable, RunnableEach, RunnableLambda, RunnableParallel, RunnableSequence
from ._topic import ERROR_NAME, Publish, Route
from ._wiring import find_problems
from .connections._base import Subscription

__all__ = ["Plan", "Publishing", "Step"]


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """One process of a plan under its final, unique name."""

    name: str
    process: Process
    join: bool
    on_cycle: bool
    #: What runs on a delivery: the process's steps (``process.ainvoke`` without its frame).
    body: Runnable
    #: Filters the messages the process runs on (``subscribe(when=...)``).
    when: Predicate | None = None
    #: For a process of one function then ``topic.publish()``: how to call it
    #: without the frames of the sequence and the publish.
    publishing: Publishing | None = None


@dataclass(frozen=True, slots=True)
class Publishing:
    """A process made of one function step and then ``topic.publish()``."""

    step: RunnableLambda
    topic: str
    #: The async function, when awaiting it is all the step does.
    direct: Callable[[Any], Awaitable[Any]] | None
    #: How the plain function runs, when it needs nothing but its input.
    runner: SyncRunner | None


def _publishing(process: Process) -> Publishing | None:
    steps = process.steps
    if len(steps) == 2 and type(steps[0]) is RunnableLambda and type(steps[1]) is Publish:
        step = steps[0]
        return Publishing(step, steps[1].topic.name, step.direct, step.sync_runner)
    return None


def unique_names(processes: Sequence[Process]) -> list[str]:
    """Explicit names as given (duplicates are an error); derived names get a
    ``#2``, ``#3`` … suffix, in definition order, when they collide."""
    explicit = [p.name for p in processes if p.has_explicit_name]
    for name in explicit:
        if explicit.count(name) > 1:
            raise DefinitionError(f"two processes are named {name!r}; process names must be unique")
    taken = set(explicit)
    names = []
    for p in processes:
        name = p.name
        if not p.has_explicit_name:
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base} #{n}"
        taken.add(name)
        names.append(name)
    return names


class Plan:
    def __init__(self, processes: Sequence[Process], inputs: Sequence[str] = ()) -> None:
        for p in processes:
            if not isinstance(p, Process):
                raise ConfigError(
                    f"PubSub takes processes (topic.subscribe() | step | ...), got {p!r} "
                    f"of type {type(p).__name__}"
                )
        names = unique_names(processes)
        self.graph = Graph.of(processes, names)
        self.graph.problems.extend(find_problems(self.graph, inputs))
        on_cycle = self.graph.processes_on_cycles()
        self.steps = [
            Step(name, p, p.is_join, name in on_cycle, p.body, p.when, _publishing(p))
            for name, p in zip(names, processes, strict=True)
        ]
        self.names = names
        self.cycles = self.graph.cycles
        self.subscriptions = [Subscription(s.name, s.process.topic.name, s.join) for s in self.steps]
        self.subscribers_all = [s for s in self.steps if not s.join]
        self.joins = [s for s in self.steps if s.join]
        readers: dict[str, list[Step]] = {}
        for s in self.subscribers_all:
            readers.setdefault(s.process.topic.name, []).append(s)
        self.subscribers = {topic: tuple(steps) for topic, steps in readers.items()}
        self.handles_errors = any(s.process.topic.name == ERROR_NAME for s in self.steps)
        #: The runners of the plain functions, when every step is one or publishes
        #: (nothing of it can be bound to an event loop); else None.
        self.plain_runners: tuple[SyncRunner, ...] | None = None
        runners: list[SyncRunner] = []
        if all(_plain_functions(p.body, runners) for p in processes):
            self.plain_runners = tuple(runners)


def _plain_functions(runnable: Runnable, runners: list[SyncRunner]) -> bool:
    """Whether ``runnable`` is made of plain functions (collected into
    ``runners``), publishes and routes only."""
    if isinstance(runnable, RunnableLambda):
        runner = runnable.sync_runner
        if runner is None:
            return False
        runners.append(runner)
        return True
    if isinstance(runnable, (Publish, Route)):
        return True
    if isinstance(runnable, RunnableSequence):
        return all(_plain_functions(step, runners) for step in runnable.steps)
    if isinstance(runnable, RunnableParallel):
        return all(_plain_functions(step, runners) for step in runnable.steps.values())
    if isinstance(runnable, RunnableEach):
        return _plain_functions(runnable.inner, runners)
    return False
