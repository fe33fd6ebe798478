"""Shared resources: objects a PubSub's steps share (clients, pools, models).

``PubSub(resources={"db": factory})`` names factories; a step function with a
parameter named ``resources`` receives a read-only mapping of what they made.

* **Lazily, once per event loop.** The first step that asks (on a given event
  loop) runs every factory, in order, under a lock: concurrent first asks make
  each resource once. Steps that do not ask never make any. Resources are per
  loop because most clients are bound to the loop they were made on (a
  redis-py pool, an HTTP session); sync ``invoke`` runs on permflow's
  background loop, a worker on its own.
* **Factories.** A sync or async callable with no arguments. If it returns an
  async context manager (or a sync one), that is entered and the entered value
  is the resource. A sync factory runs on the event loop: make a slow one
  ``async`` and hand its work to a thread.
* **A factory that raises** fails the step that asked, like any step error.
  Resources made before it stay; the next step that asks runs the missing
  factories again.
* **Closing** (``PubSub.aclose``/``close``) exits the context managers in
  reverse order of creation: on the current loop here; on another loop that
  still runs (the background loop of sync calls), on that loop. A loop that
  has ended (``asyncio.run`` returned) or that is blocked waiting for the very
  ``close()`` call (its thread called it) cannot run anything: there, sync
  context managers are still exited, async ones are forgotten with a logged
  warning. Close inside the loop (``async with pubsub:``) to avoid that. After
  closing, the next step that asks makes the resources anew.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable, Mapping
from contextlib import suppress
from types import MappingProxyType
from typing import Any

import anyio
import anyio.to_thread

from ._context import step_context
from ._errors import ConfigError

__all__ = ["Resources", "asks_for_resources", "check_factories", "closing_from", "resources_for"]

Factory = Callable[[], Any]
_Exit = Callable[[Any, Any, Any], Any]

#: Longest wait for another (running) event loop to close its resources.
OTHER_LOOP_SECONDS = 30.0

REQUIRED = "required"
OPTIONAL = "optional"

log = logging.getLogger("permflow.resources")

#: The thread blocked in a sync ``close()``: its event loop, if any, cannot run.
_blocked_thread: contextvars.ContextVar[int | None] = contextvars.ContextVar("blocked_thread", default=None)


def check_factories(resources: Any) -> dict[str, Factory]:
    """``resources`` as a dict of name → factory, or ``ConfigError`` naming the bad entry."""
    if not isinstance(resources, Mapping):
        raise ConfigError(
            "resources must be a dict of name -> factory (a callable with no arguments), "
            f"got {type(resources).__name__} {resources!r}"
        )
    factories: dict[str, Factory] = {}
    for name, factory in resources.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"resource names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise ConfigError(
                f"resource {name!r}: expected a factory (a callable with no arguments that returns "
                f"the resource or a context manager giving it), got {type(factory).__name__} "
                f"{factory!r}; to share a ready object write {{{name!r}: lambda: obj}}"
            )
        try:
            signature = inspect.signature(factory)
        except ValueError:  # no signature to inspect (some builtins): trust it
            signature = None
        if signature is not None:
            try:
                signature.bind()
            except TypeError as exc:
                raise ConfigError(
                    f"resource {name!r}: the factory {factory!r} must be callable with no arguments ({exc})"
                ) from None
        factories[name] = factory
    return factories


def asks_for_resources(func: Callable[..., Any]) -> str | None:
    """``REQUIRED`` or ``OPTIONAL`` (it has a default) if ``func`` has a parameter
    named ``resources`` after its input; else None."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    for index, parameter in enumerate(parameters):
        if parameter.name != "resources":
            continue
        if index == 0 or parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            return None  # the input itself, or not passable by keyword
        return OPTIONAL if parameter.default is not parameter.empty else REQUIRED
    return None


async def resources_for(step: Any, config: Mapping[str, Any] | None, asks: str) -> dict[str, Any]:
    """The keyword arguments for ``step``, which ``asks`` for resources: those
    of its run's PubSub; outside a run, ``config["resources"]`` (ready objects)."""
    ctx = step_context(config)
    if ctx is not None:
        holder = ctx.services.resources if ctx.services is not None else None
        if holder is not None:
            return {"resources": await holder.get()}
        missing = "its PubSub has none: pass PubSub(..., resources={'name': factory})"
    else:
        given = config.get("resources") if config else None
        if given is not None:
            if not isinstance(given, Mapping):
                raise ConfigError(
                    f"config['resources'] must be a dict of name -> resource, got {type(given).__name__}"
                )
            return {"resources": MappingProxyType(dict(given))}
        missing = (
            "it runs outside a PubSub: pass them as config={'resources': {'name': obj}}, "
            "or run it in a PubSub(..., resources={'name': factory})"
        )
    if asks == OPTIONAL:
        return {}
    raise ConfigError(f"step {step.name!r} has a 'resources' parameter but {missing} (or give it a default)")


async def closing_from(thread: int, aclose: Callable[[], Awaitable[None]]) -> None:
    """Run ``aclose`` on behalf of ``thread``, which waits for it (a sync
    ``close()``): an event loop of that thread cannot run anything meanwhile."""
    token = _blocked_thread.set(thread)
    try:
        await aclose()
    finally:
        _blocked_thread.reset(token)


def _current_loop() -> Hashable:
    """The running event loop (asyncio) or run (trio), as a dict key."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import trio  # the only other backend anyio runs on

        return trio.lowlevel.current_trio_token()


class Resources:
    """The resources of one PubSub: made per event loop, closed together."""

    def __init__(self, factories: Mapping[str, Factory]) -> None:
        self.factories = dict(factories)
        self._loops: dict[Hashable, _LoopResources] = {}
        self._guard = threading.Lock()  # loops of several threads meet in _loops

    async def get(self) -> Mapping[str, Any]:
        """The resources of the running event loop, made on first use."""
        loop = _current_loop()
        entry = self._loops.get(loop)
        if entry is None:
            with self._guard:
                entry = self._loops.setdefault(loop, _LoopResources(loop))
                # loops that ended (repeated asyncio.run calls) would pile up until close()
                ended = [e for e in self._loops.values() if e is not entry and _ended(e.loop)]
                for gone in ended:
                    del self._loops[gone.loop]
            for gone in ended:
                with suppress(Exception):  # logged by close_without_loop
                    gone.close_without_loop("its event loop has ended")
        view = entry.view
        return view if view is not None else await entry.open(self.factories)

    async def aclose(self) -> None:
        """Close the resources of every event loop (see the module docstring);
        the first error is raised once all are closed."""
        here = _current_loop()
        with self._guard:
            entries = list(self._loops.values())
        failure: BaseException | None = None
        for entry in entries:
            try:
                if entry.loop == here:
                    await entry.aclose()
                elif entry.exits or entry.lock.locked():  # something to exit, or being made
                    await self._close_elsewhere(entry)
                else:  # plain objects: nothing to do on their loop
                    entry.close_without_loop("")
                    self._forget(entry)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _close_elsewhere(self, entry: _LoopResources) -> None:
        if not _running(entry.loop):
            reason = "its event loop has ended"
        elif entry.thread == _blocked_thread.get():
            reason = "its event loop's thread is waiting for close(): use `await pubsub.aclose()` there"
        else:
            try:
                await anyio.to_thread.run_sync(_run_on, entry.loop, entry.aclose, abandon_on_cancel=True)
                return
            except _LoopGone:
                reason = "its event loop has ended"
        self._forget(entry)
        entry.close_without_loop(reason)

    def _forget(self, entry: _LoopResources) -> None:
        """Drop the entry of a loop other than this one (it may have ended)."""
        with self._guard:
            if self._loops.get(entry.loop) is entry:
                del self._loops[entry.loop]


class _LoopGone(Exception):
    """The event loop of some resources no longer runs."""


def _running(loop: Hashable) -> bool:
    """Whether ``loop`` still runs (and can be handed work)."""
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop.is_running() and not loop.is_closed()
    import trio

    try:
        loop.run_sync_soon(_nothing)  # type: ignore[attr-defined]
    except trio.RunFinishedError:
        return False
    return True


def _ended(loop: Hashable) -> bool:
    """Whether ``loop`` can never run again (a closed asyncio loop, a finished trio run)."""
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop.is_closed()
    return not _running(loop)


def _nothing() -> None:
    return None


def _run_on(loop: Hashable, aclose: Callable[[], Awaitable[None]]) -> None:
    """Run ``aclose()`` on ``loop`` (another thread's) and wait for it;
    ``_LoopGone`` if it ends (or stops answering) meanwhile."""
    if isinstance(loop, asyncio.AbstractEventLoop):

        async def call() -> None:
            await aclose()

        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            future.result(OTHER_LOOP_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise _LoopGone from None
        return
    import trio

    try:
        trio.from_thread.run(aclose, trio_token=loop)  # type: ignore[arg-type]
    except trio.RunFinishedError:
        raise _LoopGone from None


class _LoopResources:
    """The resources made on one event loop, and how to close them."""

    def __init__(self, loop: Hashable) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.values: dict[str, Any] = {}
        self.exits: list[tuple[str, _Exit, bool]] = []  # (name, __exit__ / __aexit__, is async)
        self.view: Mapping[str, Any] | None = None
        self.lock = anyio.Lock()

    async def open(self, factories: Mapping[str, Factory]) -> Mapping[str, Any]:
        async with self.lock:
            if self.view is None:
                for name, factory in factories.items():
                    if name not in self.values:
                        self.values[name] = await self._make(name, factory)
                self.view = MappingProxyType(dict(self.values))
            return self.view

    async def _make(self, name: str, factory: Factory) -> Any:
        made = factory()
        if inspect.isawaitable(made):
            made = await made
        kind = type(made)
        if hasattr(kind, "__aenter__") and hasattr(kind, "__aexit__"):
            value = await kind.__aenter__(made)
            self.exits.append((name, kind.__aexit__.__get__(made), True))
            return value
        if hasattr(kind, "__enter__") and hasattr(kind, "__exit__"):
            value = kind.__enter__(made)
            self.exits.append((name, kind.__exit__.__get__(made), False))
            return value
        return made

    def _take(self) -> list[tuple[str, _Exit, bool]]:
        """Forget the resources; their exits, last made first."""
        exits, self.exits = self.exits, []
        self.values.clear()
        self.view = None
        return exits[::-1]

    async def aclose(self) -> None:
        """Exit the context managers on this loop, last made first."""
        async with self.lock:  # not while they are being made
            failure: BaseException | None = None
            for name, exit, is_async in self._take():
                try:
                    result = exit(None, None, None)
                    if is_async:
                        await result
                except Exception as exc:
                    log.warning("closing resource %r failed: %r", name, exc)
                    failure = failure or exc
            if failure is not None:
                raise failure

    def close_without_loop(self, reason: str) -> None:
        """Exit the sync context managers; forget the async ones, which need the loop."""
        failure: BaseException | None = None
        for name, exit, is_async in self._take():
            if is_async:
                log.warning(
                    "resource %r is an async context manager that cannot be exited: %s; "
                    "close the PubSub inside that loop (`async with pubsub:`)",
                    name,
                    reason,
                )
                continue
            try:
                exit(None, None, None)
            except Exception as exc:
                log.warning("closing resource %r failed: %r", name, exc)
                failure = failure or exc
        if failure is not None:
            raise failure
