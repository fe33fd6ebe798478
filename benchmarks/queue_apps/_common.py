"""What every pipeline step does, whichever queue runs it."""

from __future__ import annotations

import json
import os
import time

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LOOPS = int(os.environ.get("BENCH_LOOPS", "0"))
SINK = "bench:sink"


def burn(x: int) -> int:
    """``x + 1`` after ``LOOPS`` turns of a pure-Python loop (the CPU-bound variant)."""
    acc = 0
    for k in range(LOOPS):
        acc = (acc + k * k) % 1_000_003
    return x + 1 + acc * 0


def record(i: int, value: int) -> str:
    """What the last step pushes to the sink."""
    return json.dumps([i, value, time.time()])
