"""Functions that tests/test_process_steps.py runs in worker processes.

They live in a module of their own (imported as ``process_steps``) because a
worker process imports a step by name: test modules would drag pytest along.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

#: Seconds a step waits for a step in another process (or for a flag) before
#: giving up: a backstop, never reached when the tests pass.
BACKSTOP_SECONDS = 20.0


class StepFailed(Exception):
    """An exception of the user's own, raised in a worker process."""


class Unpicklable(Exception):
    """An exception whose constructor pickling cannot replay (two required arguments)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")


class HoldsALock:
    """A callable object that cannot be pickled (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, x: Any) -> Any:
        return x


def pid_of(x: Any) -> dict[str, Any]:
    return {"value": x, "pid": os.getpid()}


def square(x: int) -> int:
    return x * x


def busy(n: int) -> int:
    """A pure-Python loop of ``n`` additions; returns the pid that ran it."""
    total = 0
    for i in range(n):
        total += i
    return os.getpid()


def fail(x: Any) -> Any:
    raise StepFailed(f"cannot handle {x!r}")


def fail_unpicklably(x: Any) -> Any:
    raise Unpicklable(7, f"no {x!r}")


def give_a_lock(x: Any) -> Any:
    return threading.Lock()


def exit_abruptly(x: Any) -> Any:
    os._exit(3)


def meet(args: tuple[str, int]) -> int:
    """Wait until a step in another process has arrived in directory ``args[0]``
    too (proof that two ran at once); returns this process's pid."""
    where, _ = args
    Path(where, str(os.getpid())).touch()
    deadline = time.monotonic() + BACKSTOP_SECONDS
    while len(os.listdir(where)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # waiting for another process, which no event here can signal
    return os.getpid()


def span(args: tuple[str, int]) -> tuple[int, int]:
    """Busy for a moment; the (start, end) of the call on the system-wide monotonic clock."""
    _, n = args
    start = time.monotonic_ns()
    busy(n)
    return start, time.monotonic_ns()


def record_then_wait(args: tuple[str, int]) -> int:
    """Write a file ``ran-<args[1]>`` holding this pid into directory ``args[0]``, then wait
    for a file ``go`` there."""
    where, x = args
    Path(where, f"ran-{x}").write_text(str(os.getpid()))
    deadline = time.monotonic() + BACKSTOP_SECONDS
    while not Path(where, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)  # waiting for the test process to let go
    return x


def shadowed(x: Any) -> Any:
    return x


#: The first `shadowed`: its name now resolves to another function.
stale_shadowed = shadowed


def shadowed(x: Any) -> Any:  # type: ignore[no-redef]  # the name now means another function
    return x
