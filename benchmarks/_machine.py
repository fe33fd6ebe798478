"""The machine and time of a benchmark run, for the header of its results files."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any


def describe() -> dict[str, Any]:
    """Date (UTC), cores, CPU model, Python version and platform of this run."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
    }


def summary(meta: dict[str, Any]) -> str:
    """``describe()``'s machine in one line."""
    return f"{meta['cores']} cores, {meta['cpu']}, {meta['platform']}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
