"""What a system hands the harness: something to run, and what it must return."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Pipeline:
    """One built program of one system, ready to be measured.

    ``run(x)`` does one run on input ``x`` (returning the result, or an
    awaitable of it when ``is_async``); ``expect(x)`` is the exact result a
    correct run gives. ``run_many(xs)`` (optional, async) does independent
    runs concurrently and returns their results in input order.
    """

    run: Callable[[Any], Any]
    expect: Callable[[Any], Any]
    is_async: bool
    run_many: Callable[[Sequence[Any]], Awaitable[list[Any]]] | None = None
    #: Shown with the results; a callable is asked after the measurement.
    note: str | Callable[[], str] = ""


class NotSupported(Exception):
    """The system has no idiomatic way to do this workload."""


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB, from /proc/self/status."""
    rss = hwm = 0
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        import resource

        rss = hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss, hwm
