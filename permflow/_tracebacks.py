"""Exceptions that say where: notes, and tracebacks without the engine's frames.

A step's exception travels through the engine (task groups, the event loop,
the sync facade) before ``invoke`` re-raises it. Its traceback then shows a
dozen frames of permflow and anyio between the caller and the step; the note
``add_note`` adds and ``trim_traceback`` dropping those frames leave the
user's own frames and one line saying which process failed on what.
"""

from __future__ import annotations

import contextlib
import types

__all__ = ["add_note", "mark_step_error", "trim_traceback"]

_MARK = "__permflow_step_error__"

_INTERNAL = ("permflow.", "anyio.", "asyncio.", "trio.", "concurrent.futures.", "contextlib", "threading")


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` where Python has it (3.11+)."""
    if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)


def mark_step_error(exc: BaseException) -> None:
    """Note that ``exc`` was raised by a user's step (its traceback may be trimmed)."""
    with contextlib.suppress(AttributeError):  # a type that takes no attributes: left whole
        setattr(exc, _MARK, True)


def trim_traceback(exc: BaseException) -> None:
    """For a step's error (``mark_step_error``): drop the frames of permflow,
    anyio and the event loop from its traceback, keeping every other frame in
    order (and all of them if none would remain). Other errors are left whole."""
    if not getattr(exc, _MARK, False):
        return
    kept = []
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if not (module == "permflow" or module.startswith(_INTERNAL)):
            kept.append(tb)
        tb = tb.tb_next
    if not kept:
        return
    trimmed: types.TracebackType | None = None
    for entry in reversed(kept):
        trimmed = types.TracebackType(trimmed, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    exc.__traceback__ = trimmed
