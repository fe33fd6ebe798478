"""Runs a plotting module (``_plot``, ``_queues_plot``) in an interpreter that has matplotlib.

matplotlib is no dependency of permflow: it is installed in the peers'
virtualenv (``requirements-peers.txt``), so the plots are drawn in a
subprocess of that interpreter (or of this one, if it happens to have it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import _venvs

HERE = Path(__file__).resolve().parent


def plot_python(*, create: bool = False) -> str | None:
    """An interpreter with matplotlib: this one, else the peers' (made if ``create``), else None."""
    try:
        import matplotlib  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    try:
        return _venvs.python_for("peers", create=create)
    except _venvs.Unavailable:
        return None


def draw(module: str, src: Path, dst: Path, *, create: bool = False) -> str:
    """Run ``python -m benchmarks.<module> src dst``; one line saying what happened."""
    python = plot_python(create=create)
    if python is None:
        return f"no matplotlib (peers' virtualenv missing): {dst.name} not drawn"
    done = subprocess.run(
        [python, "-m", f"benchmarks.{module}", str(src), str(dst)],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return f"{dst.name} not drawn: {done.stderr.strip().splitlines()[-1:]}"
    return f"wrote {dst}"
