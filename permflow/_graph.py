"""The static topology of a PubSub: topics × processes, and its cycles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._process import Process

__all__ = ["Graph"]

DYNAMIC = "?"
_MAX_CYCLES = 100


@dataclass(frozen=True)
class Graph:
    """Who reads and who writes each topic.

    ``reads[p]`` is the topic process ``p`` subscribes to (or joins);
    ``writes[p]`` the topics it may publish to (``"?"`` for a ``route``
    without declared topics). ``cycles`` lists each elementary cycle as the
    topics it runs through, in order. ``problems`` says what looks miswired
    (a topic nobody publishes to, no way to ``Topic.OUT``); each was also
    warned about with ``PermflowWarning`` when the PubSub was built.
    """

    reads: dict[str, str]
    joins: frozenset[str]
    writes: dict[str, tuple[str, ...]]
    cycles: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, processes: Sequence[Process], names: Sequence[str]) -> Graph:
        reads = {name: p.topic.name for name, p in zip(names, processes, strict=True)}
        joins = frozenset(name for name, p in zip(names, processes, strict=True) if p.is_join)
        writes = {
            name: tuple(dict.fromkeys(t if t is not None else DYNAMIC for t in p._publishes()))
            for name, p in zip(names, processes, strict=True)
        }
        graph = cls(reads, joins, writes)
        graph.cycles.extend(graph._find_cycles())
        return graph

    @property
    def topics(self) -> list[str]:
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

    def to_mermaid(self) -> str:
        """Mermaid flowchart text: topics as stadiums, processes as boxes,
        edges that lie on a cycle drawn thick (``==>``)."""
        on_cycle = self.processes_on_cycles()
        topic_ids = {t: f"t{i}" for i, t in enumerate(self.topics)}
        writers: dict[str, list[str]] = {}
        for process, targets in self.writes.items():
            for target in targets:
                writers.setdefault(target, []).append(process)
        lines = ["flowchart LR"]
        for topic, tid in topic_ids.items():
            lines.append(f'  {tid}(["{_escape(topic)}"])')
        for i, process in enumerate(self.reads):
            pid, topic = f"p{i}", self.reads[process]
            lines.append(f'  {pid}["{_escape(process)}"]')
            looped = any(self._edge_on_cycle(w, topic, on_cycle) for w in writers.get(topic, ()))
            arrow = "==>" if looped and process in on_cycle else "-->"
            label = "|join|" if process in self.joins else ""
            lines.append(f"  {topic_ids[topic]} {arrow}{label} {pid}")
            for target in self.writes[process]:
                if target == DYNAMIC:
                    lines.append(f'  {pid} -.-> dyn{i}(["? (route)"])')
                else:
                    arrow = "==>" if self._edge_on_cycle(process, target, on_cycle) else "-->"
                    lines.append(f"  {pid} {arrow} {topic_ids[target]}")
        return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace('"', "#quot;")
