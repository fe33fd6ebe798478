"""A process: a chain that starts at a topic head and continues with steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, final

from ._errors import DefinitionError
from ._filter import Predicate
from ._runnable import Config, Runnable, RunnableSequence, coerce
from ._topic import Head, Topic

if TYPE_CHECKING:
    from ._retry import RunnableRetry

__all__ = ["Process"]


@final
class Process(Runnable):
    """``topic.subscribe() | step | ...`` or ``topic.join() | step | ...``.

    Inside a ``PubSub`` it runs once per message (or once per idle point for
    a join). Outside a run, ``invoke`` runs its steps directly and its
    publishes do nothing, which makes chains unit-testable.
    """

    def __init__(
        self,
        head: Head,
        steps: tuple[Runnable, ...],
        name: str | None = None,
        *,
        derived: str | None = None,
    ) -> None:
        self.head = head
        self.steps = steps
        self._body = steps[0] if len(steps) == 1 else RunnableSequence(*steps)
        self._name = name if name is not None else head.name
        self._derived = derived

    @property
    def topic(self) -> Topic:
        """The topic this chain reads."""
        return self.head.topic

    @property
    def body(self) -> Runnable:
        """What runs on a message: its one step, or its steps in sequence."""
        return self._body

    @property
    def is_join(self) -> bool:
        """Whether the chain starts with ``topic.join()`` (runs at idle, with a list)."""
        return self.head.join

    @property
    def when(self) -> Predicate | None:
        """The predicate filtering the messages it runs on (``subscribe(when=...)``)."""
        return self.head.when

    @property
    def has_explicit_name(self) -> bool:
        """Whether the name was given (``subscribe(name=...)``, ``with_name``)
        rather than derived from the steps."""
        return self._name is not None

    @property
    def name(self) -> str:
        """Deterministic name: the explicit one, else derived from the chain."""
        if self._name is not None:
            return self._name
        if self._derived is not None:
            return self._derived
        steps = " | ".join(step.name for step in self.steps)
        return f"{self.head.topic.name}.{self.head.kind} | {steps}"

    def with_name(self, name: str) -> Process:
        """This chain under an explicit, stable name (used by stored state)."""
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"a process name must be a non-empty string, got {name!r}")
        return Process(self.head, self.steps, name)

    def __or__(self, step: Any) -> Process:
        if isinstance(step, Process):
            raise DefinitionError(
                f"cannot pipe process {self.name!r} into process {step.name!r}: "
                "connect processes through a topic (publish → subscribe)"
            )
        return Process(self.head, (*self.steps, coerce(step)), self._name)

    def _wrapped(self, body: Runnable) -> Process:
        """This chain with its steps replaced by ``body``, keeping its name."""
        return Process(self.head, (body,), self._name, derived=self.name)

    def __ror__(self, other: Any) -> Runnable:
        raise DefinitionError(
            f"a process must start with topic.subscribe() or topic.join(); cannot put "
            f"{other!r} in front of process {self.name!r}"
        )

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """Run the chain's steps on ``input`` (outside a run its publishes do nothing)."""
        return await self._body.ainvoke(input, config)

    def with_retry(self, **kwargs: Any) -> Process:  # type: ignore[override]
        """Retry the whole chain for one delivery; failed attempts publish nothing.
        A predicate of the head (``subscribe(when=...)``) that raises is retried
        under the same policy."""
        return self._wrapped(Runnable.with_retry(self._body, **kwargs))

    @property
    def retry(self) -> RunnableRetry | None:
        """The ``with_retry`` policy of the whole chain, if it has one."""
        from ._retry import RunnableRetry, RunnableTimeout

        body = self._body
        while isinstance(body, (RunnableRetry, RunnableTimeout)):
            if isinstance(body, RunnableRetry):
                return body
            body = body.inner
        return None

    def with_timeout(self, seconds: float) -> Process:  # type: ignore[override]
        """Fail a delivery whose chain takes longer than ``seconds``."""
        return self._wrapped(self._body.with_timeout(seconds))

    def with_cache(  # type: ignore[override]
        self,
        name: str | None = None,
        key: Callable[[Any], Any] | None = None,
        ttl: float | None = None,
        version: str | int | None = None,
    ) -> Process:
        """Cache the whole chain for each input (see ``Runnable.with_cache``):
        a hit publishes again what the chain published, without running it.
        ``name`` defaults to the process's explicit name, else to the name of
        its only step's function."""
        if name is None and self._name is not None:
            name = self._name
        elif name is None and len(self.steps) != 1:
            raise DefinitionError(
                f"process {self.name!r} has several steps and no explicit name to cache its "
                "results under: pass with_cache(name='...')"
            )
        return self._wrapped(self._body.with_cache(name=name, key=key, ttl=ttl, version=version))

    def _publishes(self) -> Iterator[str | None]:
        return self._body._publishes()

    def __repr__(self) -> str:
        return f"<Process {self.name!r}>"
