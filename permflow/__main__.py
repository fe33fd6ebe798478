"""Command line: ``python -m permflow graph MODULE:ATTR`` and friends."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._pubsub import PubSub

__all__ = ["load_pubsub", "main"]


def load_pubsub(spec: str) -> PubSub:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and
    return the PubSub it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise SystemExit(f"expected MODULE:ATTR (e.g. myapp.flows:pubsub), got {spec!r}")
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location("__permflow_target__", module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise SystemExit(f"cannot load {module_name!r}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        raise SystemExit(f"cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"{module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, PubSub):
        raise SystemExit(f"{spec} is of type {type(obj).__name__}, not a permflow.PubSub")
    return obj


def _graph(args: argparse.Namespace) -> int:
    graph = load_pubsub(args.target).graph()
    if args.json:
        print(
            json.dumps(
                {
                    "topics": graph.topics,
                    "processes": {
                        name: {
                            "reads": graph.reads[name],
                            "join": name in graph.joins,
                            "writes": list(graph.writes[name]),
                        }
                        for name in graph.reads
                    },
                    "cycles": graph.cycles,
                },
                indent=2,
            )
        )
    else:
        print(graph.to_mermaid())
        for cycle in graph.cycles:
            print(f"%% cycle: {' → '.join([*cycle, cycle[0]])}")
    return 0


def _connection(args: argparse.Namespace) -> Any:
    from .connections.redis import RedisPubSubConnection

    return RedisPubSubConnection.from_url(args.redis, prefix=args.prefix, lease=args.lease)


def _worker(args: argparse.Namespace) -> int:
    import anyio

    from ._worker import Worker
    from .connections.memory import InMemoryPubSubConnection

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    pubsub = load_pubsub(args.target)
    if args.redis:
        pubsub = pubsub.with_connection(_connection(args))
    elif isinstance(pubsub.connection, InMemoryPubSubConnection):
        raise SystemExit(
            f"{args.target} uses an in-memory connection, which other processes cannot see: pass --redis URL"
        )
    worker = Worker(pubsub, concurrency=args.concurrency, name=args.name, grace=args.grace)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, worker, tg.cancel_scope)
            await worker.run()
            tg.cancel_scope.cancel()
        await pubsub.connection.aclose()

    anyio.run(serve)
    return 0


async def _stop_on_signals(worker: Any, scope: Any) -> None:
    """First SIGTERM/SIGINT: stop taking work and finish within the grace
    period. A second one: stop now (running deliveries are handed back)."""
    import signal

    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if worker.stopping:
                logging.getLogger("permflow.worker").warning("second signal: stopping now")
                scope.cancel()
                return
            logging.getLogger("permflow.worker").info(
                "%s: finishing running work (up to %ss)", signal.Signals(signum).name, worker.grace
            )
            worker.stop()


def _runs(args: argparse.Namespace) -> int:
    conn = _connection(args)
    try:
        summaries = conn.run_summaries()
    finally:
        conn.close()
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    now = time.time()
    print(f"{'state id':40}  {'outstanding':>11}  {'idle for':>10}  status")
    for row in summaries:
        idle = now - float(row["updated_at"]) if row.get("updated_at") else float("nan")
        outstanding = "?" if row["outstanding"] is None else row["outstanding"]
        if row.get("error"):
            status = f"broken: {row['error']}"
        elif row.get("failed"):
            status = f"failed: {row['failed']}"
        else:
            status = "ok"
        print(f"{row['state_id']:40}  {outstanding:>11}  {idle:>9.1f}s  {status}")
    return 0


def _peek(args: argparse.Namespace) -> int:
    conn = _connection(args)
    try:
        messages = conn.peek(args.state_id)
    finally:
        conn.close()
    if args.json:
        rows = [
            {"id": m.id, "topic": m.topic, "value": m.value, "depth": m.depth, "published_at": m.published_at}
            for m in messages
        ]
        print(json.dumps(rows, indent=2, default=repr))
        return 0
    for m in messages:
        stamp = time.strftime("%H:%M:%S", time.localtime(m.published_at))
        print(f"{m.id:>20}  {stamp}  {m.topic:<16}  depth {m.depth:<3}  {m.value!r}")
    if not messages:
        print(f"(no messages stored for state id {args.state_id!r})")
    return 0


def _invoke(args: argparse.Namespace) -> int:
    pubsub = load_pubsub(args.target)
    if args.redis:
        pubsub = pubsub.with_connection(_connection(args))
    if args.workers:
        pubsub = pubsub.with_workers()
    try:
        value: Any = json.loads(args.input)
    except json.JSONDecodeError:
        value = args.input  # plain text input
    config = {"state_id": args.state_id} if args.state_id else None
    started, count, out = time.monotonic(), 0, []
    with pubsub.stream(value, config) as messages:
        for message in messages:
            count += 1
            if message.topic == "__out__":
                out.append(message.value)
            if not args.quiet:
                elapsed = time.monotonic() - started
                print(
                    f"[{elapsed:7.2f}s] #{count:<5} {message.topic:<16} {message.value!r:.100}",
                    file=sys.stderr,
                )
    print(json.dumps(out, default=repr))
    return 0


def _add_store_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--redis", required=required, metavar="URL", help="redis://host:port/db")
    parser.add_argument("--prefix", default="permflow", help="key prefix (default: permflow)")
    parser.add_argument("--lease", type=float, default=30.0, help="lease in seconds (default: 30)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="permflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    graph = commands.add_parser("graph", help="print the topics × processes graph as Mermaid text")
    graph.add_argument("target", help="MODULE:ATTR naming a PubSub")
    graph.add_argument("--json", action="store_true", help="machine-readable output")
    graph.set_defaults(func=_graph)

    worker = commands.add_parser("worker", help="run a PubSub's processes for every state id with work")
    worker.add_argument("target", help="MODULE:ATTR naming a PubSub")
    _add_store_options(worker, required=False)
    worker.add_argument("--concurrency", type=int, default=10, help="runs and steps at once (default 10)")
    worker.add_argument("--name", help="worker name (default: host.pid)")
    worker.add_argument("--grace", type=float, default=10.0, help="seconds to finish work on SIGTERM")
    worker.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    worker.set_defaults(func=_worker)

    invoke = commands.add_parser(
        "invoke", help="run a PubSub on one input, showing messages as they are published"
    )
    invoke.add_argument("target", help="MODULE:ATTR naming a PubSub")
    invoke.add_argument("input", help="the input, as JSON (or plain text)")
    _add_store_options(invoke, required=False)
    invoke.add_argument("--workers", action="store_true", help="submit to workers instead of running here")
    invoke.add_argument("--state-id", help="run under this state id (resume it with input null)")
    invoke.add_argument("--quiet", action="store_true", help="print only the OUT values")
    invoke.set_defaults(func=_invoke)

    runs = commands.add_parser("runs", help="list state ids, with their outstanding work and age")
    _add_store_options(runs, required=True)
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(func=_runs)

    peek = commands.add_parser("peek", help="print the stored messages of a state id")
    peek.add_argument("state_id")
    _add_store_options(peek, required=True)
    peek.add_argument("--json", action="store_true", help="machine-readable output")
    peek.set_defaults(func=_peek)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
