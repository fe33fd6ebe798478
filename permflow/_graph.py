"""The static topology of a PubSub: topics × processes, and its cycles."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._process import Process

__all__ = ["DYNAMIC", "Edge", "Graph"]

DYNAMIC = "?"
_MAX_CYCLES = 100


@dataclass(frozen=True)
class Graph:
    """Who reads and who writes each topic.

    ``reads[p]`` is the topic process ``p`` subscribes to (or joins);
    ``joins`` the processes that join it, ``filtered`` those whose
    subscription has a predicate (``subscribe(when=...)``: they run for some
    of its messages only); ``writes[p]`` the topics it may publish to
    (``"?"`` for a ``route`` without declared topics). ``cycles`` lists each elementary cycle as the
    topics it runs through, in order. ``problems`` says what looks miswired
    (a topic nobody publishes to, no way to ``Topic.OUT``); each was also
    warned about with ``PermflowWarning`` when the PubSub was built.
    """

    reads: dict[str, str]
    joins: frozenset[str]
    writes: dict[str, tuple[str, ...]]
    cycles: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    filtered: frozenset[str] = frozenset()

    @classmethod
    def of(cls, processes: Sequence[Process], names: Sequence[str]) -> Graph:
        """The graph of ``processes`` under their final ``names`` (as ``PubSub.graph()``)."""
        reads = {name: p.topic.name for name, p in zip(names, processes, strict=True)}
        joins = frozenset(name for name, p in zip(names, processes, strict=True) if p.is_join)
        filtered = frozenset(name for name, p in zip(names, processes, strict=True) if p.when is not None)
        writes = {
            name: tuple(dict.fromkeys(t if t is not None else DYNAMIC for t in p._publishes()))
            for name, p in zip(names, processes, strict=True)
        }
        graph = cls(reads, joins, writes, filtered=filtered)
        graph.cycles.extend(graph._find_cycles())
        return graph

    @property
    def topics(self) -> list[str]:
        """Every topic read or written, in the order first seen (``"?"`` excluded)."""
        seen = dict.fromkeys(self.reads.values())
        for targets in self.writes.values():
            seen.update(dict.fromkeys(t for t in targets if t != DYNAMIC))
        return list(seen)

    def _successors(self, process: str) -> list[str]:
        targets = set(self.writes[process])
        return [q for q, topic in self.reads.items() if topic in targets]

    def _find_cycles(self) -> list[list[str]]:
        """Elementary cycles as topic lists (bounded DFS, each found once)."""
        order = list(self.reads)
        index = {p: i for i, p in enumerate(order)}
        cycles: list[list[str]] = []
        for start in order:
            stack: list[tuple[str, list[str]]] = [(start, [start])]
            while stack and len(cycles) < _MAX_CYCLES:
                node, path = stack.pop()
                for nxt in self._successors(node):
                    if nxt == start:
                        cycles.append([self.reads[p] for p in path])
                    elif index[nxt] > index[start] and nxt not in path:
                        stack.append((nxt, [*path, nxt]))
        return cycles

    def processes_on_cycles(self) -> set[str]:
        """The processes that lie on some cycle."""
        on: set[str] = set()
        for process in self.reads:
            if self._reaches(process, process):
                on.add(process)
        return on

    def _reaches(self, source: str, target: str) -> bool:
        seen: set[str] = set()
        todo = self._successors(source)
        while todo:
            node = todo.pop()
            if node == target:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(self._successors(node))
        return False

    def _edge_on_cycle(self, writer: str, topic: str, on_cycle: set[str]) -> bool:
        """Whether ``writer`` → ``topic`` → some reader lies on a cycle."""
        if writer not in on_cycle:
            return False
        return any(
            reader in on_cycle and (reader == writer or self._reaches(reader, writer))
            for reader, read in self.reads.items()
            if read == topic
        )

    def _edges(self) -> list[Edge]:
        """Every arrow of the drawing, between node ids: ``t<i>`` topics (in
        ``topics`` order), ``p<i>`` processes, ``dyn<i>`` the run-time choice of
        process ``i``'s undeclared route."""
        on_cycle = self.processes_on_cycles()
        topic_ids = {t: f"t{i}" for i, t in enumerate(self.topics)}
        writers: dict[str, list[str]] = {}
        for process, targets in self.writes.items():
            for target in targets:
                writers.setdefault(target, []).append(process)
        edges: list[Edge] = []
        for i, process in enumerate(self.reads):
            pid, topic = f"p{i}", self.reads[process]
            looped = any(self._edge_on_cycle(w, topic, on_cycle) for w in writers.get(topic, ()))
            on = looped and process in on_cycle
            edges.append(
                Edge(topic_ids[topic], pid, on, process in self.joins, filtered=process in self.filtered)
            )
            for target in self.writes[process]:
                if target == DYNAMIC:
                    edges.append(Edge(pid, f"dyn{i}", dynamic=True))
                else:
                    thick = self._edge_on_cycle(process, target, on_cycle)
                    edges.append(Edge(pid, topic_ids[target], thick))
        return edges

    def to_mermaid(self) -> str:
        """Mermaid flowchart text: topics as stadiums, processes as boxes,
        edges that lie on a cycle drawn thick (``==>``), a join's edge
        labelled ``join``, a filtered subscription's edge ``when``
        (``-- when -->``). Labels are escaped with Mermaid's entity codes, so
        any name (quotes, ``<lambda>``, ``#``, ``|``, brackets) draws as is."""
        lines = ["flowchart LR"]
        for i, topic in enumerate(self.topics):
            lines.append(f'  t{i}(["{_escape(topic)}"])')
        for i, process in enumerate(self.reads):
            lines.append(f'  p{i}["{_escape(process)}"]')
            if DYNAMIC in self.writes[process]:
                lines.append(f'  dyn{i}(["? (route)"])')
        for edge in self._edges():
            if edge.filtered:
                text = "join when" if edge.join else "when"
                arrow = f"== {text} ==>" if edge.on_cycle else f"-- {text} -->"
                lines.append(f"  {edge.source} {arrow} {edge.target}")
                continue
            arrow = "-.->" if edge.dynamic else "==>" if edge.on_cycle else "-->"
            label = "|join|" if edge.join else ""
            lines.append(f"  {edge.source} {arrow}{label} {edge.target}")
        return "\n".join(lines)

    def _repr_mimebundle_(
        self, include: Collection[str] | None = None, exclude: Collection[str] | None = None
    ) -> dict[str, str]:
        """How Jupyter shows a graph: Mermaid text (JupyterLab 4.1+ draws it), an
        inline SVG drawn here (works offline), and Markdown with a Mermaid fence."""
        from ._svg import to_svg

        mermaid = self.to_mermaid()
        bundle = {
            "text/vnd.mermaid": mermaid,
            "text/html": to_svg(self),
            "text/markdown": f"```mermaid\n{mermaid}\n```",
        }
        return {
            kind: text
            for kind, text in bundle.items()
            if (include is None or kind in include) and (exclude is None or kind not in exclude)
        }


class Edge(NamedTuple):
    """An arrow of the drawing: a process reading a topic, or writing one."""

    source: str
    target: str
    on_cycle: bool = False
    join: bool = False
    #: To the topic an undeclared ``route`` picks at run time.
    dynamic: bool = False
    #: A subscription with a predicate (``subscribe(when=...)``).
    filtered: bool = False


#: Characters a quoted Mermaid label cannot hold as they are, as Mermaid entity
#: codes (``#name;`` or ``#<code point>;``). ``#`` because Mermaid reads any
#: ``#word;`` as an entity; ``<``, ``>`` and ``&`` because labels are HTML;
#: ``:`` so that no label line looks like a ``style``/``classDef`` rule; a
#: backtick because ``"`...`"`` is a Markdown label. ``|``, brackets and braces
#: are plain text inside quotes.
_MERMAID_CODES = {
    '"': "#quot;",
    "#": "#35;",
    "&": "#amp;",
    "<": "#lt;",
    ">": "#gt;",
    ":": "#58;",
    "`": "#96;",
}


def _escape(text: str) -> str:
    """``text`` as the inside of a quoted Mermaid label (control characters,
    line breaks included, become entity codes too)."""
    return "".join(_MERMAID_CODES.get(c) or (f"#{ord(c)};" if c < " " or c == "\x7f" else c) for c in text)
