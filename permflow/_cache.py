"""Cached steps: ``step.with_cache(...)`` reuses a step's result for an input.

A cached result is stored in the run's connection (``conn.cache_get`` /
``cache_set``), so it is found again by later runs, by other state ids and, on
a shared store such as Redis, by other processes and workers. Outside a run
(``chain.invoke`` without a PubSub) the store is an in-memory connection of
this process.

An entry is the step's result and what it published, encoded with the
connection's ``cache_serializer``; on a hit the publishes are made again, so a
cached chain has the same effect as one that ran. Its key is a digest of the
step's ``version``, the serializer and the input (or ``key(input)``) in a
canonical JSON form, so equal inputs give equal keys in every process.

Concurrent calls with the same key in one process run the step once, also
across threads and event loops: the first runs it, the others wait and share
its result or (each a copy of) its error. A failure is never stored; if the
first caller is cancelled, a waiter runs the step.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._context import StepContext, step_context
from ._errors import DefinitionError, SerializationError
from ._runnable import Config, Runnable, RunnableLambda
from ._serialization import _TAG, Serializer, _encode

if TYPE_CHECKING:
    from .connections._base import PubSubConnection

__all__ = ["RunnableCached", "cache_name_of", "clear_local_cache", "local_cache_connection"]

_log = logging.getLogger("permflow.cache")
_local: PubSubConnection | None = None
_local_lock = threading.Lock()


def clear_local_cache(name: str | None = None) -> None:
    """Forget what cached steps stored outside runs (``chain.invoke`` without a
    PubSub) in this process: every step's, or the cache ``name``'s. Unit tests
    of cached chains call it so that one test's results do not serve another."""
    local_cache_connection().clear_cache(name)


def local_cache_connection() -> PubSubConnection:
    """The in-memory connection whose cache serves cached steps outside a run."""
    global _local
    with _local_lock:
        if _local is None:
            from .connections.memory import InMemoryPubSubConnection

            _local = InMemoryPubSubConnection()
        return _local


class _Flight:
    """One running computation of a cached step that others with its key wait for:
    on its own event loop through an event, from other threads' loops through
    a thread that waits (only when two loops compute one key at once)."""

    __slots__ = ("done", "entry", "error", "finished", "thread")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.finished = threading.Event()
        self.thread = threading.get_ident()
        self.entry: bytes | None = None
        self.error: Exception | None = None

    async def wait(self) -> None:
        if threading.get_ident() == self.thread:
            await self.done.wait()
        else:
            await anyio.to_thread.run_sync(self.finished.wait, abandon_on_cancel=True)

    def land(self) -> None:
        """Wake every waiter (called by the flight's own task)."""
        self.finished.set()
        self.done.set()


#: (connection id, cache name, key) -> the computation running in this process.
_flights: dict[tuple[int, str, str], _Flight] = {}
_flights_lock = threading.Lock()


class RunnableCached(Runnable):
    """Runs ``inner`` only for inputs whose result is not stored yet (see the
    module docstring); made by ``Runnable.with_cache``."""

    def __init__(
        self,
        inner: Runnable,
        *,
        name: str | None,
        key: Callable[[Any], Any] | None,
        ttl: float | None,
        version: str | int | None,
    ) -> None:
        if name is None:
            name = cache_name_of(inner)
        elif not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"with_cache(name=...) must be a non-empty string, got {name!r}")
        if key is not None and not callable(key):
            raise DefinitionError(
                f"with_cache(key=...) of step {name!r} must be a function of the input "
                f"giving its cache key, got {key!r}"
            )
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise DefinitionError(
                f"with_cache(ttl=...) of step {name!r} must be a positive number of seconds "
                f"or None (forever), got {ttl!r}"
            )
        if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
            raise DefinitionError(
                f"with_cache(version=...) of step {name!r} must be a str or an int, got {version!r}"
            )
        self.inner = inner
        self.cache_name = name
        self.key = key
        self.ttl = None if ttl is None or math.isinf(ttl) else float(ttl)
        self.version = version

    @property
    def name(self) -> str:
        return self.inner.name

    def cache_key(self, input: Any, serializer: Serializer) -> str:
        """The key under which the result for ``input`` is stored."""
        if self.key is not None:
            try:
                material = _canonical(self.key(input))
            except SerializationError as exc:
                raise SerializationError(
                    f"the key function of cached step {self.cache_name!r} must return JSON-compatible "
                    f"data (str, int, tuple...): {exc}"
                ) from exc
        else:
            try:
                material = _canonical(input)
            except SerializationError as exc:
                if serializer.name == "json":
                    raise SerializationError(
                        f"cannot make a cache key for cached step {self.cache_name!r} from its input: {exc} "
                        "Pass with_cache(key=...) a function giving JSON-compatible data (an id, a "
                        "tuple of fields), or use a connection with serializer='pickle'."
                    ) from exc
                try:
                    material = serializer.dumps(input, f"cache of {self.cache_name}")
                except SerializationError as again:
                    raise SerializationError(
                        f"cannot make a cache key for cached step {self.cache_name!r} from its input: "
                        f"{again}. Pass with_cache(key=...) a function giving JSON-compatible data."
                    ) from again
        head = _canonical([self.version, serializer.name])
        return hashlib.blake2b(head + b"\x00" + material, digest_size=16).hexdigest()

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        """The stored result for ``input`` if there is one (its publishes made
        again); else run the step, store its result, return it. Raises
        ``SerializationError`` naming the step if the result cannot be stored."""
        ctx = step_context(config)
        services = ctx.services if ctx is not None else None
        conn = services.connection if services is not None else local_cache_connection()
        serializer = conn.cache_serializer
        key = self.cache_key(input, serializer)
        where = (id(conn), self.cache_name, key)
        while True:
            with _flights_lock:
                flight = _flights.get(where)
                if flight is None:
                    flight = _flights[where] = _Flight()
                    break
            await flight.wait()
            if flight.error is not None:
                raise _copy_of(flight.error)
            if flight.entry is not None:
                found = self._decode(flight.entry, serializer)
                if found is not None:
                    return _replay(found, ctx)
            # the first caller was cancelled: the next one runs the step
        try:
            entry = await conn.cache_get(self.cache_name, key)
            found = None if entry is None else self._decode(entry, serializer)
            if found is not None:
                flight.entry = entry
                return _replay(found, ctx)
            # the step publishes apart, so that the entry holds its messages only
            # (not those of steps running beside it, e.g. a dict step's other keys)
            part = ctx.child() if ctx is not None else None
            result = await self.inner.ainvoke(input, config if part is None else part.config(config))
            published = part.outbox if part is not None else []
            entry = self._encode(result, published, serializer)
            await conn.cache_set(self.cache_name, key, entry, self.ttl)
            if ctx is not None and part is not None:
                ctx.adopt(part)
            flight.entry = entry
            return result
        except Exception as exc:
            flight.error = _copy_of(exc)  # before the engine adds this delivery's notes to it
            raise
        finally:
            with _flights_lock:
                del _flights[where]
            flight.land()

    def _encode(self, result: Any, published: list[tuple[str, Any]], serializer: Serializer) -> bytes:
        try:
            if not published:
                return b"r" + serializer.dumps(result, f"cache of {self.cache_name}")
            record = [result, [list(p) for p in published]]
            return b"p" + serializer.dumps(record, f"cache of {self.cache_name}")
        except SerializationError as exc:
            kind = type(result)
            raise SerializationError(
                f"cannot cache the result of step {self.cache_name!r} (a {kind.__module__}."
                f"{kind.__qualname__}): {exc}"
            ) from exc

    def _decode(self, entry: bytes, serializer: Serializer) -> tuple[Any, list[Any]] | None:
        """(result, publishes) of a stored entry; None (a miss) if it cannot be read."""
        try:
            kind, data = entry[:1], entry[1:]
            if kind == b"r":
                return serializer.loads(data), []
            if kind == b"p":
                result, published = serializer.loads(data)
                return result, [(str(topic), value) for topic, value in published]
            raise ValueError(f"unknown entry kind {kind!r}")
        except (ValueError, TypeError) as exc:
            _log.warning("ignoring an unreadable cached result of step %r: %s", self.cache_name, exc)
            return None

    def _publishes(self) -> Iterator[str | None]:
        return self.inner._publishes()

    def __repr__(self) -> str:
        return f"RunnableCached({self.cache_name})"


def _copy_of(exc: Exception) -> Exception:
    """A caller's own copy of an error it shares, so that what is added to one
    (notes naming a delivery, a traceback) does not pile up on the others. The
    error itself if it cannot be copied."""
    try:
        twin = copy.copy(exc)
    except Exception:
        return exc
    if type(twin) is not type(exc) or twin.args != exc.args:
        return exc
    notes = getattr(exc, "__notes__", None)
    if notes is not None:
        vars(twin)["__notes__"] = list(notes)
    twin.__cause__, twin.__suppress_context__ = exc.__cause__, exc.__suppress_context__
    return twin.with_traceback(exc.__traceback__)


def _replay(found: tuple[Any, list[Any]], ctx: StepContext | None) -> Any:
    result, published = found
    if ctx is not None:
        for topic, value in published:
            ctx.publish(topic, value)
    return result


def cache_name_of(step: Runnable) -> str:
    """The qualified name (``__qualname__``) of the function ``step`` runs;
    ``DefinitionError`` if it has none that stays the same across processes.
    Not prefixed by the module, which differs between ``python app.py``
    (``__main__``) and a worker importing ``app``."""
    from ._retry import RunnableRetry, RunnableTimeout

    inner = step
    while isinstance(inner, (RunnableRetry, RunnableTimeout, RunnableCached)):
        inner = inner.inner
    func = inner.func if isinstance(inner, RunnableLambda) else None
    if inspect.ismethod(func):
        func = func.__func__
    qualname = getattr(func, "__qualname__", None)
    if func is None or not (inspect.isfunction(func) or inspect.isbuiltin(func)) or not qualname:
        raise DefinitionError(
            f"step {step.name!r} has no function name to cache its results under: pass "
            "with_cache(name='...'), a name that stays the same across runs and processes"
        )
    if "<lambda>" in qualname:
        raise DefinitionError(
            f"step {step.name!r} is a lambda, which has no stable name to cache its results "
            "under: pass with_cache(name='...') or make it a def"
        )
    return str(qualname)


def _canonical(value: Any) -> bytes:
    """``value`` as JSON that is equal for equal values (sets and dicts sorted);
    ``SerializationError`` naming the type that is not JSON-compatible."""
    try:
        encoded = _encode(value, "", "value")
    except RecursionError:
        raise SerializationError("it is nested too deeply or refers to itself.") from None
    except SerializationError as exc:
        found = re.search(r"a value of type (.+?) on topic", str(exc))
        what = found.group(1) if found else type(value).__qualname__
        raise SerializationError(f"a value of type {what} is not JSON-compatible.") from None
    return json.dumps(_sorted(encoded), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sorted(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_sorted(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get(_TAG)
    if tag in ("set", "frozenset", "dict"):
        items = [_sorted(x) for x in obj["v"]]
        return {_TAG: tag, "v": sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
    return {k: _sorted(v) for k, v in obj.items()}
