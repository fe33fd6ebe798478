"""Command line: ``python -m permflow graph MODULE:ATTR`` and friends."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
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
    if module_name.endswith(".py"):
        loader_spec = importlib.util.spec_from_file_location("__permflow_target__", module_name)
        if loader_spec is None or loader_spec.loader is None:
            raise SystemExit(f"cannot load {module_name!r}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, "")
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, PubSub):
        raise SystemExit(f"{spec} is a {type(obj).__name__}, not a permflow.PubSub")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="permflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    graph = commands.add_parser("graph", help="print the topics × processes graph as Mermaid text")
    graph.add_argument("target", help="MODULE:ATTR naming a PubSub")
    graph.add_argument("--json", action="store_true", help="machine-readable output")
    graph.set_defaults(func=_graph)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
