"""What every command of the command line shares: loading its target,
argument types, and reporting a failure in one line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
import traceback
from typing import Any
from urllib.parse import urlsplit

from ._errors import PermflowError
from ._pubsub import PubSub

__all__ = ["CommandError", "load_pubsub", "number", "redis_url", "report"]


class CommandError(Exception):
    """A command cannot go on: ``message`` is the one line printed, ``status``
    the exit status (2 for a wrong argument, as argparse uses)."""

    def __init__(self, message: str, *, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def load_pubsub(spec: str) -> PubSub:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and
    return the PubSub it names; ``CommandError`` (status 2) if it cannot.

    What the module prints while it loads goes to stderr, so that stdout
    carries only the command's output (``--json`` stays parseable)."""
    with contextlib.redirect_stdout(sys.stderr):
        return _load(spec)


def _load(spec: str) -> PubSub:
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise CommandError(f"expected MODULE:ATTR (e.g. myapp.flows:pubsub), got {spec!r}", status=2)
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location("__permflow_target__", module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise CommandError(f"cannot load {module_name!r}", status=2)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        raise CommandError(f"cannot import {module_name!r}: {exc}", status=2) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attr!r}", status=2) from None
    if not isinstance(obj, PubSub):
        raise CommandError(f"{spec} is of type {type(obj).__name__}, not a permflow.PubSub", status=2)
    return obj


def redis_url(text: str) -> str:
    """An argparse type: a URL of one Redis server or of a Redis Cluster."""
    if urlsplit(text).scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        raise argparse.ArgumentTypeError(
            "expected redis://host:port/db (or rediss://, unix://; redis+cluster://host:port "
            f"or rediss+cluster:// for a Redis Cluster), got {text!r}"
        )
    return text


def number(kind: type[float], *, least: float, strict: bool) -> Any:
    """An argparse type: a ``kind`` of at least (``strict``: more than) ``least``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < least or (strict and value == least):
            bound = f"{'greater than' if strict else 'at least'} {least:g}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


def report(exc: BaseException, *, command: str, debug: bool, state_id: str | None = None) -> int | None:
    """Print ``exc`` as one line (after its traceback if ``debug``) and return the
    exit status; ``None`` for an error of the user's own code, whose traceback
    is what helps."""
    if isinstance(exc, CommandError):
        message, status = str(exc), exc.status
    elif isinstance(exc, _store_errors()):
        message, status = _one_line(exc), 1
    elif isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] == "redis":
        message, status = "the Redis connection needs redis-py: pip install 'permflow[redis]'", 1
    elif isinstance(exc, KeyboardInterrupt):
        message, status = "interrupted", 130
        if state_id:
            message += f"; state id {state_id!r} keeps the unfinished work (invoke it with input null)"
    else:
        return None
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"permflow {command}: {message}", file=sys.stderr)
    return status


def _store_errors() -> tuple[type[Exception], ...]:
    """permflow's own errors, and any Redis client error that escaped conversion."""
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is None:
        return (PermflowError,)
    return (PermflowError, redis_errors.RedisError)


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, PermflowError) else f"{type(exc).__name__}: {exc}"
    notes = [str(note).removeprefix("permflow: ") for note in getattr(exc, "__notes__", ())]
    return " ".join("; ".join([text, *notes]).split())
