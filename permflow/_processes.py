"""Steps that run in worker processes: ``RunnableLambda(f, execution="process")``.

A CPU-bound pure-Python step gains nothing from threads (the GIL lets one run
at a time), so it can run in a pool of worker processes instead:

* ``f`` travels by reference (``module.qualname``), so it must be importable:
  a module-level function, or a picklable callable object. Lambdas, nested
  functions and async functions are refused when the step is built. A
  function defined in the ``__main__`` of a script is fine (the worker
  processes import the script as ``__mp_main__``, so its top level must be
  guarded by ``if __name__ == "__main__":``); one defined in a notebook, a
  REPL or ``python -c`` has no file to import and is refused.
* The input is pickled here before anything is sent; the result is pickled in
  the worker process. Either failing fails the step with
  ``SerializationError`` naming the type. An exception raised by ``f`` comes
  back with its own type and message.
* Pools start their processes with ``forkserver`` (``spawn`` where there is no
  forkserver), never ``fork``: permflow runs a background event-loop thread,
  and forking a threaded process can deadlock the child.
* A ``PubSub`` has one pool, of ``max_processes`` processes (default: the
  number of CPUs), started on first use and shut down by ``close``/``aclose``.
  Outside a run (``chain.invoke``) one module-wide pool is used. Every pool
  still open is shut down at interpreter exit.
* A cancelled run abandons its calls: a call not started yet is cancelled, a
  running one finishes in its process and its result is dropped.
* A worker process that dies (``os._exit``, a segfault, the OOM killer) fails
  the step with ``BrokenProcessPool``; the pool is replaced for later calls.
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext, suppress
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._errors import DefinitionError, SerializationError

if TYPE_CHECKING:  # imported on first use: multiprocessing costs milliseconds at import
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["ProcessPool", "ProcessRunner", "check_importable", "default_max_processes"]

#: Seconds ``close`` lets calls still running finish before it terminates their processes.
CLOSE_GRACE_SECONDS = 1.0
_PROTOCOL = pickle.HIGHEST_PROTOCOL


@functools.cache
def default_max_processes() -> int:
    """The CPUs this process may use (the default size of a pool)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- what may run in another process ------------------------------------------


def check_importable(func: Callable[..., Any], async_: bool) -> None:
    """Raise ``DefinitionError`` unless ``func`` can be sent to a worker process."""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    fix = "define it with `def` at the top level of a module and pass that function"
    if async_:
        raise DefinitionError(
            f"step {name!r} is an async function: execution='process' runs a plain function in a "
            "worker process; make it a plain `def` (async steps already run on the event loop)"
        )
    if "<lambda>" in name:
        raise DefinitionError(f"step {name!r} is a lambda: a worker process cannot import it by name; {fix}")
    if "<locals>" in name:
        raise DefinitionError(
            f"step {name!r} is defined inside a function: a worker process cannot import it by name; {fix}"
        )
    in_main = getattr(func, "__module__", None) == "__main__"
    if in_main and not hasattr(sys.modules.get("__main__"), "__file__"):
        raise DefinitionError(
            f"step {name!r} is defined in an interactive session (a notebook, a REPL, python -c), which "
            "worker processes cannot import; define it in a module (a .py file) and import it from there"
        )
    try:
        pickle.dumps(func, protocol=_PROTOCOL)
    except Exception as exc:
        raise DefinitionError(
            f"step {name!r} cannot be sent to a worker process by reference ({exc}); {fix}, "
            "or use a picklable callable object"
        ) from None


# -- the pool -----------------------------------------------------------------

_open_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


class ProcessPool:
    """A ``ProcessPoolExecutor`` of at most ``max_processes``, started on first
    use, replaced when one of its processes died, shut down by ``aclose``
    (and at interpreter exit); usable again after closing."""

    def __init__(self, max_processes: int | None = None) -> None:
        self.max_processes = max_processes or default_max_processes()
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # forkserver, else spawn; never fork: this process runs threads
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
                self._executor = ProcessPoolExecutor(self.max_processes, mp_context=context)
                _open_pools.add(self)
                _register_exit_hook()
            return self._executor

    def discard(self, broken: ProcessPoolExecutor) -> None:
        """Forget ``broken`` (a process of it died): the next call starts a new pool."""
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    def _take(self) -> ProcessPoolExecutor | None:
        with self._lock:
            executor, self._executor = self._executor, None
            return executor

    async def aclose(self) -> None:
        """Shut the processes down: queued calls are cancelled, running ones get
        ``CLOSE_GRACE_SECONDS`` to finish before their processes are terminated."""
        executor = self._take()
        if executor is not None:
            await anyio.to_thread.run_sync(_shut_down, executor)

    def close(self) -> None:
        """Sync twin of ``aclose`` (for interpreter exit)."""
        executor = self._take()
        if executor is not None:
            _shut_down(executor)


def _shut_down(executor: ProcessPoolExecutor) -> None:
    # a private attribute, read only to terminate what outlives the grace period
    processes = list((getattr(executor, "_processes", None) or {}).values())
    closer = threading.Thread(
        target=functools.partial(executor.shutdown, wait=True, cancel_futures=True),
        name="permflow-pool-close",
        daemon=True,
    )
    closer.start()
    closer.join(CLOSE_GRACE_SECONDS)
    if closer.is_alive():
        for process in processes:
            if process.is_alive():
                process.terminate()
        closer.join()


def _close_open_pools() -> None:
    for pool in list(_open_pools):
        pool.close()


def _register_exit_hook() -> None:
    """Shut pools down at exit, before ``concurrent.futures`` waits for their
    queued calls (its hook runs at threading shutdown, before ``atexit``)."""
    global _exit_hook_registered
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        _exit_hook_registered = True
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError
        register(_close_open_pools)
    except RuntimeError:  # no such hook, or the interpreter is already shutting down
        atexit.register(_close_open_pools)


_default_pool: ProcessPool | None = None
_default_lock = threading.Lock()


def default_pool() -> ProcessPool:
    """The pool of steps called outside a run (``chain.invoke``)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = ProcessPool()
        return _default_pool


# -- one call -----------------------------------------------------------------


class _UnpicklableResult(Exception):
    """Raised in a worker process when a step's result cannot be pickled."""

    def __init__(self, type_name: str, detail: str) -> None:
        super().__init__(type_name, detail)
        self.type_name = type_name
        self.detail = detail


def _call_in_child(func_blob: bytes, value_blob: bytes) -> bytes:
    """Run in a worker process: unpickle, call, pickle the result."""
    func = pickle.loads(func_blob)
    try:
        result = func(pickle.loads(value_blob))
    except Exception as exc:
        portable = _portable(exc, func)
        if portable is exc:
            raise
        raise portable from None
    try:
        return pickle.dumps(result, protocol=_PROTOCOL)
    except Exception as exc:
        raise _UnpicklableResult(_type_name(result), str(exc)) from None


def _portable(exc: Exception, func: Any) -> Exception:
    """``exc`` if it survives a pickle round trip, else a ``RuntimeError`` saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=_PROTOCOL))
        return exc
    except Exception as why:
        return RuntimeError(
            f"{getattr(func, '__qualname__', func)!s} raised {_type_name(exc)}: {exc} (in a worker "
            f"process; that exception cannot be pickled to come back as itself: {why})"
        )


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class ProcessRunner:
    """Runs one sync function (checked by ``check_importable``) in a process pool."""

    __slots__ = ("_func", "_name")

    def __init__(self, func: Callable[[Any], Any], name: str) -> None:
        self._func = func
        self._name = name

    def _pickled(self, value: Any) -> tuple[bytes, bytes]:
        try:
            value_blob = pickle.dumps(value, protocol=_PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"the input of step {self._name!r} is a {_type_name(value)}, which cannot be pickled to "
                f"go to its worker process ({exc}); send plain data (or run the step in a thread)"
            ) from None
        try:
            func_blob = pickle.dumps(self._func, protocol=_PROTOCOL)
        except Exception as exc:  # a callable object whose state changed since the step was built
            raise SerializationError(
                f"step {self._name!r} ({_type_name(self._func)}) cannot be pickled to go to its "
                f"worker process ({exc})"
            ) from None
        return func_blob, value_blob

    async def run(self, value: Any, pool: ProcessPool, limiter: anyio.CapacityLimiter | None) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        blobs = self._pickled(value)
        async with limiter if limiter is not None else nullcontext():
            # Starting the pool, or one of its processes, takes milliseconds (a
            # forkserver, then a fork per process): off the event loop.
            executor, future = await anyio.to_thread.run_sync(_submit, pool, blobs)
            try:
                blob = await _result(future)
            except BrokenProcessPool as exc:
                pool.discard(executor)
                raise BrokenProcessPool(
                    f"the worker process running step {self._name!r} died before returning (killed, "
                    "crashed or called os._exit; later calls get a new pool). Worker processes import "
                    'the main script: keep its top-level code under `if __name__ == "__main__":`'
                ) from exc
            except _UnpicklableResult as exc:
                raise SerializationError(
                    f"step {self._name!r} returned a {exc.type_name}, which cannot be pickled to come "
                    f"back from its worker process ({exc.detail}); return plain data"
                ) from None
        try:
            return pickle.loads(blob)
        except Exception as exc:
            raise SerializationError(
                f"the result of step {self._name!r} cannot be unpickled here ({exc}); return data "
                "whose classes this process can import"
            ) from None


def _submit(pool: ProcessPool, blobs: tuple[bytes, bytes]) -> tuple[ProcessPoolExecutor, Future[bytes]]:
    from concurrent.futures.process import BrokenProcessPool

    executor = pool.executor()
    try:
        return executor, executor.submit(_call_in_child, *blobs)
    except BrokenProcessPool:
        pool.discard(executor)
        executor = pool.executor()
        return executor, executor.submit(_call_in_child, *blobs)


async def _result(future: Future[bytes]) -> bytes:
    """Wait for ``future`` without blocking the event loop or holding a thread
    (a call may wait long for a free process); if the caller is cancelled, the
    call is cancelled too when it has not started, else its result is dropped."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # trio, the only other backend anyio runs on
    else:
        return await asyncio.wrap_future(future)  # cancelling the wait cancels the future
    import trio

    token = trio.lowlevel.current_trio_token()
    landed = anyio.Event()

    def wake(_: Future[bytes]) -> None:
        with suppress(trio.RunFinishedError):  # the run ended meanwhile: nobody waits
            token.run_sync_soon(landed.set)

    future.add_done_callback(wake)
    try:
        await landed.wait()
    finally:
        if not future.done():
            future.cancel()
    return future.result()
