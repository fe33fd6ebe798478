"""A ``Graph`` drawn as inline SVG, made here so that it shows without internet access.

Layered layout, left to right. The edges that close a cycle are set aside
(depth-first search from the sources); every node then gets the column of its
longest path from a source and, within its column, a row near the mean row of
its predecessors. Topics are ellipses, processes boxes. An edge on a cycle is
thick and red, a join's edge purple and labelled ``join``, a filtered
subscription's edge green and labelled ``when``, the edge of a route decided at
run time dashed; edges that close a cycle run back under the drawing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._markup import escape, shorten

if TYPE_CHECKING:
    from ._graph import Edge, Graph

__all__ = ["to_svg"]

CHAR_WIDTH = 7.2  # of 12px monospace text
HEIGHT, PAD, COLUMN_GAP, ROW_GAP, MARGIN, LOOP_STEP = 30.0, 12.0, 56.0, 18.0, 16.0, 14.0
MAX_LABEL = 48  # longer names are cut; the full name is the node's tooltip
FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
COLOURS = {
    "edge": "#555555",
    "cycle": "#c0392b",
    "join": "#7b4fa0",
    "dynamic": "#888888",
    "when": "#1f7a5a",
}
LEGEND = {
    "cycle": "thick red: on a cycle",
    "join": "purple: a join (runs when the run is otherwise idle)",
    "dynamic": "dashed: a topic a route picks at run time",
    "when": "when: a filtered subscription (runs only for messages its predicate accepts)",
}


@dataclass
class _Node:
    kind: str  # "topic", "process", "join", "dynamic" or "point" (where a long edge crosses a column)
    name: str
    column: int = 0
    x: float = 0.0  # centre
    y: float = 0.0
    width: float = 0.0


def to_svg(graph: Graph) -> str:
    """The drawing as an HTML fragment: an ``<svg>`` in a scrolling ``<div>``."""
    from ._graph import DYNAMIC

    nodes: dict[str, _Node] = {f"t{i}": _Node("topic", t) for i, t in enumerate(graph.topics)}
    for i, process in enumerate(graph.reads):
        nodes[f"p{i}"] = _Node("join" if process in graph.joins else "process", process)
        if DYNAMIC in graph.writes[process]:
            nodes[f"dyn{i}"] = _Node("dynamic", "? (route)")
    edges = graph._edges()
    back = _back_edges(list(nodes), edges)
    routes = _place(nodes, [(i, e) for i, e in enumerate(edges) if i not in back])
    return _render(graph, nodes, edges, routes)


def _back_edges(order: list[str], edges: Sequence[Edge]) -> set[int]:
    """Indices of the edges that close a cycle, found by depth-first search
    from the nodes nothing points to (then from any node not yet seen)."""
    out: dict[str, list[tuple[int, str]]] = {node: [] for node in order}
    for i, edge in enumerate(edges):
        out[edge.source].append((i, edge.target))
    targets = {edge.target for edge in edges}
    on_stack: set[str] = set()
    seen: set[str] = set()
    back: set[int] = set()
    for root in [n for n in order if n not in targets] + order:
        if root in seen:
            continue
        seen.add(root)
        on_stack.add(root)
        stack = [(root, iter(out[root]))]
        while stack:
            node, todo = stack[-1]
            for i, child in todo:
                if child in on_stack:
                    back.add(i)
                elif child not in seen:
                    seen.add(child)
                    on_stack.add(child)
                    stack.append((child, iter(out[child])))
                    break
            else:
                on_stack.discard(node)
                stack.pop()
    return back


def _place(nodes: dict[str, _Node], forward: list[tuple[int, Edge]]) -> dict[int, list[str]]:
    """Give every node its column (longest path over the acyclic ``forward``
    edges), row (near the mean row of its predecessors) and coordinates. An
    edge spanning several columns gets a point of its own in each column it
    crosses, so that it runs between nodes, not through them. Returns the
    nodes and points each forward edge passes through."""
    incoming: dict[str, list[str]] = {node: [] for node in nodes}
    for _, edge in forward:
        incoming[edge.target].append(edge.source)
    done: set[str] = set()
    todo = list(nodes)
    while todo:  # Kahn's order: a node is placed once all its predecessors are
        ready = [n for n in todo if all(p in done for p in incoming[n])] or todo[:1]
        for node in ready:
            nodes[node].column = max((nodes[p].column + 1 for p in incoming[node]), default=0)
            done.add(node)
        todo = [n for n in todo if n not in done]
    routes: dict[int, list[str]] = {}
    for i, edge in forward:
        route = [edge.source]
        for crossed in range(nodes[edge.source].column + 1, nodes[edge.target].column):
            point = f"e{i}.{crossed}"
            nodes[point] = _Node("point", "", crossed)
            incoming[point] = [route[-1]]
            route.append(point)
        routes[i] = [*route, edge.target]
        incoming[edge.target] = [route[-1] if p == edge.source else p for p in incoming[edge.target]]
    columns: list[list[str]] = [[] for _ in range(max((n.column for n in nodes.values()), default=0) + 1)]
    row: dict[str, float] = {}
    for node in nodes:
        columns[nodes[node].column].append(node)
    for column in columns:
        column.sort(key=lambda n: sum(row[p] for p in incoming[n]) / len(incoming[n]) if incoming[n] else -1)
        row.update((n, float(i)) for i, n in enumerate(column))
    tallest = max((len(column) for column in columns), default=0)
    left = MARGIN
    for column in columns:
        for node in column:
            label = len(shorten(nodes[node].name, MAX_LABEL)) * CHAR_WIDTH
            grow = 1.15 if nodes[node].kind in ("topic", "dynamic") else 1
            nodes[node].width = label * grow + 2 * PAD if nodes[node].kind != "point" else 0
        width = max((nodes[n].width for n in column), default=0)
        top = MARGIN + (tallest - len(column)) * (HEIGHT + ROW_GAP) / 2
        for i, node in enumerate(column):
            nodes[node].x = left + width / 2
            nodes[node].y = top + i * (HEIGHT + ROW_GAP) + HEIGHT / 2
            if nodes[node].kind == "point":  # crosses the whole column
                nodes[node].width = width
        left += width + COLUMN_GAP
    return routes


def _path(points: list[tuple[float, float]]) -> str:
    """Curves through ``points``, level where they pass through each point."""
    (x, y), *rest = points
    d = f"M{x:.1f},{y:.1f}"
    for nx, ny in rest:
        bend = (nx - x) / 2
        d += f" C{x + bend:.1f},{y:.1f} {nx - bend:.1f},{ny:.1f} {nx:.1f},{ny:.1f}"
        x, y = nx, ny
    return d


def _render(
    graph: Graph, nodes: dict[str, _Node], edges: Sequence[Edge], routes: dict[int, list[str]]
) -> str:
    shape = (graph.reads, sorted(graph.joins), graph.writes, sorted(graph.filtered))
    digest = hashlib.blake2b(repr(shape).encode(), digest_size=4)
    ids = {kind: f"permflow-{digest.hexdigest()}-{kind}" for kind in COLOURS}
    bottom = max((n.y + HEIGHT / 2 for n in nodes.values()), default=MARGIN)
    width = max((n.x + n.width / 2 for n in nodes.values()), default=MARGIN) + MARGIN
    kinds = {"cycle": any(e.on_cycle for e in edges), "join": bool(graph.joins)}
    kinds["dynamic"] = any(e.dynamic for e in edges)
    kinds["when"] = any(e.filtered for e in edges)
    legend = [kind for kind, present in kinds.items() if present]
    lanes = len(edges) - len(routes)
    height = bottom + LOOP_STEP * (lanes + 1) + 18 * len(legend) + MARGIN
    parts = [
        f'<div style="overflow:auto;max-width:100%"><svg xmlns="http://www.w3.org/2000/svg" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="permflow graph: {len(graph.topics)} topics, {len(graph.reads)} processes" '
        f'font-family="{FONT}" font-size="12">',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        "<defs>",
        *(
            f'<marker id="{ids[kind]}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
            for kind, colour in COLOURS.items()
        ),
        "</defs>",
    ]
    lane = 0
    for i, edge in enumerate(edges):
        source, target = nodes[edge.source], nodes[edge.target]
        if i in routes:  # left to right, through the points of the columns it crosses
            points = [(source.x + source.width / 2, source.y)]
            for point in (nodes[n] for n in routes[i][1:-1]):
                points += [(point.x - point.width / 2, point.y), (point.x + point.width / 2, point.y)]
            points.append((target.x - target.width / 2, target.y))
            d = _path(points)
            (x1, y1), (x2, y2) = points[-2:]
            middle = ((x1 + x2) / 2, (y1 + y2) / 2)
        else:  # closes a cycle: back along a lane of its own under the drawing
            lane += 1
            x1, y1, x2, y2 = source.x, source.y + HEIGHT / 2, target.x, target.y + HEIGHT / 2
            depth = bottom + LOOP_STEP * lane
            control = (8 * depth - y1 - y2) / 6  # the curve's middle reaches the lane
            d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{control:.1f} {x2:.1f},{control:.1f} {x2:.1f},{y2:.1f}"
            middle = ((x1 + x2) / 2, depth)
        kind = "dynamic" if edge.dynamic else "cycle" if edge.on_cycle else "join" if edge.join else "edge"
        if kind == "edge" and edge.filtered:
            kind = "when"
        style = ' stroke-width="2.5"' if edge.on_cycle else ' stroke-dasharray="5 4"' if edge.dynamic else ""
        about = f"{source.name} → {target.name}" + (" (on a cycle)" if edge.on_cycle else "")
        about += " (filtered: when=...)" if edge.filtered else ""
        parts.append(
            f'<path d="{d}" fill="none" stroke="{COLOURS[kind]}"{style} marker-end="url(#{ids[kind]})">'
            f"<title>{escape(about)}</title></path>"
        )
        if edge.join or edge.filtered:
            words = " ".join(w for w, on in (("join", edge.join), ("when", edge.filtered)) if on)
            colour = COLOURS["when" if edge.filtered and not edge.join else "join"]
            parts.append(
                f'<text x="{middle[0]:.1f}" y="{middle[1] - 5:.1f}" text-anchor="middle" '
                f'fill="{colour}">{words}</text>'
            )
    parts.extend(_node(node) for node in nodes.values() if node.kind != "point")
    for i, kind in enumerate(legend):
        y = bottom + LOOP_STEP * (lanes + 1) + 18 * i + 12
        parts.append(f'<text x="{MARGIN}" y="{y:.1f}" fill="{COLOURS[kind]}">{escape(LEGEND[kind])}</text>')
    parts.append("</svg></div>")
    return "".join(parts)


def _node(node: _Node) -> str:
    x, y, w, h = node.x, node.y, node.width, HEIGHT
    ellipse = f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{w / 2:.1f}" ry="{h / 2:.1f}"'
    if node.kind == "topic":
        shape = f'{ellipse} fill="#eef4fb" stroke="#3d6fa8"/>'
    elif node.kind == "dynamic":
        shape = f'{ellipse} fill="#ffffff" stroke="{COLOURS["dynamic"]}" stroke-dasharray="5 4"/>'
    else:
        join = node.kind == "join"
        fill, stroke = ("#f5eefa", COLOURS["join"]) if join else ("#fdf6e3", "#a07a2c")
        shape = (
            f'<rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" rx="4" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{2 if join else 1}"/>'
        )
    label = escape(shorten(node.name, MAX_LABEL))
    return (
        f'<g class="permflow-{node.kind}"><title>{escape(node.name)}</title>{shape}'
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" dominant-baseline="central" fill="#222222">'
        f"{label}</text></g>"
    )
