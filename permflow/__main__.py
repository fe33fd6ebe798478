"""Command line: ``python -m permflow graph MODULE:ATTR`` and friends.

A command that fails prints one line on stderr, ``permflow COMMAND: what went
wrong``, and exits with 1 (or 2 for a wrong argument); ``--log-level debug``
also prints the traceback. Errors raised by your own steps keep theirs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._cli import CommandError, load_pubsub, number, redis_url, report
from ._pubsub import PubSub

__all__ = ["CommandError", "load_pubsub", "main"]


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
                            "when": name in graph.filtered,
                            "writes": list(graph.writes[name]),
                        }
                        for name in graph.reads
                    },
                    "cycles": graph.cycles,
                    "problems": graph.problems,
                },
                indent=2,
            )
        )
    else:
        print(graph.to_mermaid())
        for cycle in graph.cycles:
            print(f"%% cycle: {' → '.join([*cycle, cycle[0]])}")
        for problem in graph.problems:
            print(f"%% problem: {problem}")
    return 0


def _connection(args: argparse.Namespace) -> Any:
    from .connections.redis import RedisPubSubConnection

    return RedisPubSubConnection.from_url(args.redis, prefix=args.prefix, lease=args.lease)


def _shared(pubsub: PubSub, args: argparse.Namespace) -> PubSub:
    """``pubsub`` on a store other processes see: ``--redis`` if given, else its
    own connection, unless that is in memory (workers could never see its runs)."""
    from .connections.memory import InMemoryPubSubConnection

    if args.redis:
        return pubsub.with_connection(_connection(args))
    if isinstance(pubsub.connection, InMemoryPubSubConnection):
        raise CommandError(
            f"{args.target} uses an in-memory connection, which other processes cannot see: pass --redis URL",
            status=2,
        )
    return pubsub


def _worker(args: argparse.Namespace) -> int:
    import anyio

    from ._worker import Worker

    pubsub = _shared(load_pubsub(args.target), args)
    worker = Worker(pubsub, concurrency=args.concurrency, name=args.name, grace=args.grace)

    async def serve() -> None:
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, worker, tg.cancel_scope)
            try:
                await worker.run()
            except Exception as exc:  # raised as itself below, not inside an exception group
                failure = exc
            tg.cancel_scope.cancel()
        try:
            await pubsub.aclose()  # the resources and process pool its steps opened
        finally:
            await pubsub.connection.aclose()
        if failure is not None:
            raise failure

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
    if not messages:
        raise CommandError(
            f"no run is stored under state id {args.state_id!r} (prefix {args.prefix!r}); "
            "`permflow runs` lists the stored ones"
        )
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
    return 0


def _invoke(args: argparse.Namespace) -> int:
    pubsub = load_pubsub(args.target)
    if args.workers:
        pubsub = _shared(pubsub, args).with_workers()
    elif args.redis:
        pubsub = pubsub.with_connection(_connection(args))
    try:
        value: Any = json.loads(args.input)
    except json.JSONDecodeError:
        value = args.input  # plain text input
    config = {"state_id": args.state_id} if args.state_id else None
    started, count, out = time.monotonic(), 0, []
    # What steps print goes to stderr: stdout is for the OUT values.
    with contextlib.redirect_stdout(sys.stderr), pubsub.stream(value, config) as messages:
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
    parser.add_argument(
        "--redis",
        required=required,
        metavar="URL",
        type=redis_url,
        help="redis://host:port/db, or redis+cluster://host:port",
    )
    parser.add_argument("--prefix", default="permflow", help="key prefix (default: permflow)")
    parser.add_argument(
        "--lease",
        type=number(float, least=0, strict=True),
        default=30.0,
        help="lease in seconds (default: 30)",
    )


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=default,
        metavar="LEVEL",
        help=f"debug, info, warning or error (default {default.lower()}); "
        "debug also prints the traceback of a failure",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="permflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    graph = commands.add_parser("graph", help="print the topics × processes graph as Mermaid text")
    graph.add_argument("target", help="MODULE:ATTR naming a PubSub")
    graph.add_argument("--json", action="store_true", help="machine-readable output")
    _add_log_level(graph, "WARNING")
    graph.set_defaults(func=_graph)

    worker = commands.add_parser("worker", help="run a PubSub's processes for every state id with work")
    worker.add_argument("target", help="MODULE:ATTR naming a PubSub")
    _add_store_options(worker, required=False)
    worker.add_argument(
        "--concurrency",
        type=number(int, least=1, strict=False),
        default=10,
        help="runs and steps at once (default 10)",
    )
    worker.add_argument("--name", help="worker name (default: host.pid)")
    worker.add_argument(
        "--grace",
        type=number(float, least=0, strict=False),
        default=10.0,
        help="seconds to finish work on SIGTERM (default 10)",
    )
    _add_log_level(worker, "INFO")
    worker.set_defaults(func=_worker)

    invoke = commands.add_parser(
        "invoke", help="run a PubSub on one input, showing messages as they are published"
    )
    invoke.add_argument("target", help="MODULE:ATTR naming a PubSub")
    invoke.add_argument("input", help="the input, as JSON (or plain text)")
    _add_store_options(invoke, required=False)
    invoke.add_argument(
        "--workers",
        action="store_true",
        help="submit to workers instead of running here (needs a shared store)",
    )
    invoke.add_argument("--state-id", help="run under this state id (resume it with input null)")
    invoke.add_argument("--quiet", action="store_true", help="print only the OUT values")
    _add_log_level(invoke, "WARNING")
    invoke.set_defaults(func=_invoke)

    runs = commands.add_parser("runs", help="list state ids, with their outstanding work and age")
    _add_store_options(runs, required=True)
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    _add_log_level(runs, "WARNING")
    runs.set_defaults(func=_runs)

    peek = commands.add_parser("peek", help="print the stored messages of a state id")
    peek.add_argument("state_id")
    _add_store_options(peek, required=True)
    peek.add_argument("--json", action="store_true", help="machine-readable output")
    _add_log_level(peek, "WARNING")
    peek.set_defaults(func=_peek)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0
    except (Exception, KeyboardInterrupt) as exc:
        resumable = args.state_id if args.command == "invoke" else None
        status = report(exc, command=args.command, debug=args.log_level == "DEBUG", state_id=resumable)
        if status is None:
            raise
        return status


if __name__ == "__main__":
    raise SystemExit(main())
