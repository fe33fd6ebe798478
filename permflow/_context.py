"""What a running step can see of its run: the outbox its publishes go to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._services import Services

__all__ = ["RUN_KEY", "StepContext", "step_context"]

#: Key under which the engine puts the ``StepContext`` into a step's config.
RUN_KEY = "__permflow_run__"


class StepContext:
    """Per-delivery state: messages published so far, the thread limiter, the
    run's limiter of process calls (``processes``, from ``max_processes``), and
    what the PubSub lends its steps (``services``; None in bare tests).

    Publishes are buffered here and stored by the engine only when the whole
    chain has finished, together with the ack of the delivery.
    """

    __slots__ = ("limiter", "outbox", "processes", "services")

    def __init__(
        self,
        limiter: anyio.CapacityLimiter | None,
        services: Services | None = None,
        processes: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.outbox: list[tuple[str, Any]] = []
        self.limiter = limiter
        self.services = services
        self.processes = processes

    def publish(self, topic: str, value: Any) -> None:
        self.outbox.append((topic, value))

    def child(self) -> StepContext:
        """A context for one part of a step (a retry attempt, a cached call)
        whose publishes stay apart until ``adopt``: parts running beside it (a
        dict step's other keys) keep publishing into their own."""
        return StepContext(self.limiter, self.services, self.processes)

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
