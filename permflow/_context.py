"""What a running step can see of its run: the outbox its publishes go to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._services import Services

__all__ = ["RUN_KEY", "RunLimits", "StepContext", "step_context"]

#: Key under which the engine puts the ``StepContext`` into a step's config.
RUN_KEY = "__permflow_run__"


class RunLimits:
    """A run's limiters: of its worker threads (``threads`` at once) and of
    its process-step calls (``processes`` at once; None: the number of CPUs
    the process pool uses). Each is made on first use, so that a run whose
    steps never leave the event loop makes neither."""

    __slots__ = ("_processes", "_threads", "process_count", "thread_count")

    def __init__(self, threads: int, processes: int | None = None) -> None:
        self.thread_count = threads
        self.process_count = processes
        self._threads: anyio.CapacityLimiter | None = None
        self._processes: anyio.CapacityLimiter | None = None

    @property
    def threads(self) -> anyio.CapacityLimiter:
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(self.thread_count)
        return self._threads

    @property
    def processes(self) -> anyio.CapacityLimiter:
        if self._processes is None:
            from ._processes import default_max_processes

            self._processes = anyio.CapacityLimiter(self.process_count or default_max_processes())
        return self._processes


class StepContext:
    """Per-delivery state: messages published so far, the run's limiters of
    worker threads (``limiter``) and of process calls (``processes``, from
    ``max_processes``), and what the PubSub lends its steps (``services``;
    None in bare tests).

    Publishes are buffered here and stored by the engine only when the whole
    chain has finished, together with the ack of the delivery.
    """

    __slots__ = ("_limits", "outbox", "services")

    def __init__(self, limits: RunLimits | None = None, services: Services | None = None) -> None:
        self.outbox: list[tuple[str, Any]] = []
        self._limits = limits
        self.services = services

    @property
    def limiter(self) -> anyio.CapacityLimiter | None:
        """The run's limiter of worker threads (None outside a run's limits)."""
        return self._limits.threads if self._limits is not None else None

    @property
    def processes(self) -> anyio.CapacityLimiter | None:
        """The run's limiter of process-step calls (None outside a run's limits)."""
        return self._limits.processes if self._limits is not None else None

    def publish(self, topic: str, value: Any) -> None:
        self.outbox.append((topic, value))

    def child(self) -> StepContext:
        """A context for one part of a step (a retry attempt, a cached call)
        whose publishes stay apart until ``adopt``: parts running beside it (a
        dict step's other keys) keep publishing into their own."""
        return StepContext(self._limits, self.services)

    def adopt(self, child: StepContext) -> None:
        """Take over what ``child`` published (its part succeeded)."""
        self.outbox.extend(child.outbox)

    def config(self, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """``config`` with this context as the run's."""
        return {**(config or {}), RUN_KEY: self}


def step_context(config: Mapping[str, Any] | None) -> StepContext | None:
    """The run context in ``config``, or None outside a run."""
    if not config:
        return None
    ctx = config.get(RUN_KEY)
    return ctx if isinstance(ctx, StepContext) else None
