"""How permflow's objects show themselves: graphs as diagrams, logs as tables, readable reprs."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import anyio
import pytest
from helpers import mermaid_labels

from permflow import Graph, InMemoryPubSubConnection, Message, PubSub, Topic, route

SVG = "{http://www.w3.org/2000/svg}"
NASTY = [
    "__in__.subscribe | <lambda>#2 | publish(x)",
    'say "hi"',
    "a<b>c & d",
    "#35; and #lt;",
    "p|q(r)[s]{t}",
    "style: fill:#f00;",
    "`code`",
    "line\nbreak",
]
draft, review, revise = Topic("draft"), Topic("review"), Topic("revise")


def _nasty() -> PubSub:
    """Processes and a topic whose names hold every character Mermaid, HTML or XML care about."""
    odd = Topic('t<&>"#|(x)[y]{z}')
    return PubSub(
        *(Topic.IN.subscribe(name=name) | odd.publish() for name in NASTY),
        odd.join(name="gather {all}") | Topic.OUT.publish(),
    )


def _loop() -> PubSub:
    """IN → draft → review → revise → draft …, review also leaving to OUT, plus a join."""
    return PubSub(
        Topic.IN.subscribe(name="start") | draft.publish(),
        draft.subscribe(name="write") | review.publish(),
        review.subscribe(name="judge")
        | route(lambda x: Topic.OUT if x else revise, topics=[Topic.OUT, revise]),
        revise.subscribe(name="fix") | draft.publish(),
        review.join(name="summary") | route(lambda x: None),
    )


def _html(graph: Graph) -> ET.Element:
    return ET.fromstring(graph._repr_mimebundle_()["text/html"])


# -- Mermaid ----------------------------------------------------------------


def test_mermaid_labels_survive_every_special_character() -> None:
    """Every name, however odd, comes out of Mermaid's entity decoding exactly as it went in."""
    graph = _nasty().graph()
    labels = mermaid_labels(graph.to_mermaid())
    assert {shown for _, shown in labels} >= {*graph.topics, *graph.reads}
    for markup, _ in labels:  # the HTML Mermaid puts in the label holds text only
        assert not re.search(r'[<>"`]|&(?![a-z]+;|#[0-9]+;)', markup), markup


def test_mermaid_label_lines_look_like_no_rule() -> None:
    """No label line has a colon or a raw ``#`` that Mermaid could read as a style or an entity."""
    text = _nasty().graph().to_mermaid()
    for label in re.findall(r'\["(.*?)"\]', text):
        assert ":" not in label
        assert not re.search(r"#(?![0-9]+;|[a-z]+;)", label)


# -- the Jupyter bundle ------------------------------------------------------


def test_graph_bundle_offers_mermaid_html_and_markdown() -> None:
    """A graph shows in Jupyter as Mermaid text, inline HTML, and Markdown with a Mermaid fence."""
    graph = _loop().graph()
    bundle = graph._repr_mimebundle_()
    assert set(bundle) == {"text/vnd.mermaid", "text/html", "text/markdown"}
    assert bundle["text/vnd.mermaid"] == graph.to_mermaid()
    assert bundle["text/markdown"] == f"```mermaid\n{graph.to_mermaid()}\n```"


def test_graph_bundle_honours_include_and_exclude() -> None:
    """Jupyter's include/exclude arguments select the formats returned."""
    graph = _loop().graph()
    assert set(graph._repr_mimebundle_(include={"text/html"})) == {"text/html"}
    assert "text/markdown" not in graph._repr_mimebundle_(exclude={"text/markdown"})


def test_svg_is_well_formed_and_titles_every_name() -> None:
    """The HTML is well-formed XML whose node tooltips spell every topic and process name."""
    graph = _nasty().graph()
    root = _html(graph)
    svg = root.find(f"{SVG}svg")
    assert svg is not None
    titles = {title.text for title in svg.iter(f"{SVG}title")}
    assert titles >= {*graph.topics, *graph.reads}


def test_svg_needs_nothing_from_the_network() -> None:
    """The drawing loads no script, font, stylesheet or image; its only references are its own markers."""
    text = _loop().graph()._repr_mimebundle_()["text/html"]
    assert "<script" not in text and "<style" not in text and "<image" not in text
    assert "href" not in text
    assert set(re.findall(r"https?://[^\"]+", text)) == {"http://www.w3.org/2000/svg"}
    ids = set(re.findall(r' id="([^"]+)"', text))
    assert set(re.findall(r"url\(#([^)]+)\)", text)) <= ids


def _centres(root: ET.Element) -> dict[str, float]:
    """x of each node's centre, by its name."""
    out = {}
    for group in root.iter(f"{SVG}g"):
        title, label = group.find(f"{SVG}title"), group.find(f"{SVG}text")
        assert title is not None and title.text is not None and label is not None
        out[title.text] = float(label.attrib["x"])
    return out


def test_svg_lays_a_chain_out_left_to_right() -> None:
    """Along a chain every node stands to the right of the one feeding it."""
    chain = PubSub(
        Topic.IN.subscribe(name="a") | draft.publish(),
        draft.subscribe(name="b") | review.publish(),
        review.subscribe(name="c") | Topic.OUT.publish(),
    )
    x = _centres(_html(chain.graph()))
    order = ["__in__", "a", "draft", "b", "review", "c", "__out__"]
    assert [x[n] for n in order] == sorted(x[n] for n in order)
    assert len(set(x.values())) == len(order)


def test_svg_tells_cycles_joins_and_run_time_routes_apart() -> None:
    """Edges on a cycle are thick, a join's edge is labelled, a route picked at run time is dashed."""
    graph = _loop().graph()
    root = _html(graph)
    paths = [p for p in root.iter(f"{SVG}path") if "marker-end" in p.attrib]
    assert len(paths) == len(graph._edges())
    thick = [p for p in paths if p.attrib.get("stroke-width") == "2.5"]
    assert len(thick) == sum(e.on_cycle for e in graph._edges()) == 6
    assert all("(on a cycle)" in (p.findtext(f"{SVG}title") or "") for p in thick)
    dashed = [p for p in paths if "stroke-dasharray" in p.attrib]
    assert [p.findtext(f"{SVG}title") for p in dashed] == ["summary → ? (route)"]
    assert [t.text for t in root.iter(f"{SVG}text")].count("join") == 1
    classes = {g.findtext(f"{SVG}title"): g.attrib["class"] for g in root.iter(f"{SVG}g")}
    assert classes["summary"] == "permflow-join" and classes["judge"] == "permflow-process"
    assert classes["draft"] == "permflow-topic"


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_svg_of_an_empty_program_is_still_a_drawing() -> None:
    """A PubSub without processes draws an empty, well-formed picture."""
    assert _html(PubSub().graph()).find(f"{SVG}svg") is not None


# -- reprs -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::permflow.PermflowWarning")  # a topology without a result, on purpose
def test_pubsub_repr_names_processes_what_they_read_and_write_and_the_connection() -> None:
    """repr(pubsub) lists each process with its topics, and the connection it runs on."""
    text = repr(_loop())
    assert text.startswith("<PubSub on <InMemoryPubSubConnection: 0 state ids kept>, 5 processes:")
    assert "\n  'start' reads '__in__', writes 'draft'\n" in text
    assert "\n  'judge' reads 'review', writes '__out__', 'revise'\n" in text
    assert "\n  'summary' joins 'review', writes a topic picked at run time>" in text
    assert "runs on workers" in repr(_loop().with_workers())
    assert repr(PubSub()) == "<PubSub on <InMemoryPubSubConnection: 0 state ids kept>, no processes>"


def test_in_memory_connection_repr_counts_state_ids() -> None:
    """The in-memory connection says how many state ids it keeps."""
    conn = InMemoryPubSubConnection()
    PubSub(Topic.IN.subscribe() | Topic.OUT.publish(), connection=conn).invoke(1, {"state_id": "kept"})
    assert repr(conn) == "<InMemoryPubSubConnection: 1 state id kept>"


def _echo() -> PubSub:
    return PubSub(Topic.IN.subscribe() | (lambda x: x) | Topic.OUT.publish())


def test_sync_stream_repr_follows_the_run() -> None:
    """A stream says which state id it runs and whether it has started, is running or finished."""
    stream = _echo().stream("v", {"state_id": "seen"})
    assert repr(stream) == "<permflow stream of state id 'seen' (not started, 0 messages read)>"
    next(stream)
    assert repr(stream) == "<permflow stream of state id 'seen' (running, 1 message read)>"
    list(stream)
    assert repr(stream) == "<permflow stream of state id 'seen' (finished, 2 messages read)>"


def test_sync_stream_repr_tells_stopped_and_failed() -> None:
    """A stream closed early says it was stopped; one whose run failed names the error."""
    with _echo().stream("v", {"state_id": "left"}) as stream:
        next(stream)
    assert "(stopped, 1 message read)" in repr(stream)
    failing = PubSub(Topic.IN.subscribe() | (lambda x: 1 / 0) | Topic.OUT.publish()).stream(1)
    with pytest.raises(ZeroDivisionError):
        list(failing)
    assert "(failed: ZeroDivisionError, 1 message read)" in repr(failing)


@pytest.mark.anyio
async def test_async_stream_repr_follows_the_run() -> None:
    """An async stream reports not started, running, stopped, finished and failed runs."""
    stream = _echo().astream("v", {"state_id": "a"})
    assert repr(stream) == "<permflow stream of state id 'a' (not started, 0 messages read)>"
    async for _ in stream:
        assert repr(stream) == "<permflow stream of state id 'a' (running, 1 message read)>"
        break
    await stream.aclose()
    assert "(stopped, 1 message read)" in repr(stream)
    done = _echo().astream("v")
    assert [m.topic async for m in done] == ["__in__", "__out__"]
    assert re.fullmatch(
        r"<permflow stream of state id '[0-9a-f]{32}' \(finished, 2 messages read\)>", repr(done)
    )
    failing = PubSub(Topic.IN.subscribe() | (lambda x: 1 / 0) | Topic.OUT.publish()).astream(1)
    with pytest.raises(ZeroDivisionError):
        _ = [message async for message in failing]
    assert "(failed: ZeroDivisionError, 1 message read)" in repr(failing)


# -- peek as a table ---------------------------------------------------------


def _rows(table: str) -> list[list[str]]:
    root = ET.fromstring(table)
    return [["".join(cell.itertext()) for cell in row] for row in root.iter("tr")]


def test_peek_gives_a_list_that_jupyter_draws_as_a_table() -> None:
    """peek() returns a real list, equal to the plain one, shown in Jupyter as a table of messages."""
    pubsub = _echo()
    pubsub.invoke({"k": [1, 2]}, {"state_id": "table"})
    log = pubsub.peek("table")
    assert isinstance(log, list) and log == list(log) and repr(log) == repr(list(log))
    rows = _rows(log._repr_html_())  # type: ignore[attr-defined]
    assert rows[0] == ["id", "topic", "value", "depth", "published at"]
    assert [row[:4] for row in rows[1:]] == [[m.id, m.topic, repr(m.value), str(m.depth)] for m in log]
    assert "2 messages of state id 'table'" in log._repr_html_().replace("&#x27;", "'")  # type: ignore[attr-defined]
    assert pubsub.connection.peek("table")._repr_html_() == log._repr_html_()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_apeek_gives_the_same_table() -> None:
    """apeek() returns the same kind of list as peek()."""
    pubsub = _echo()
    await pubsub.ainvoke("v", {"state_id": "async-table"})
    log = await pubsub.apeek("async-table")
    assert len(_rows(log._repr_html_())) == 3  # type: ignore[attr-defined]


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no")


def test_table_escapes_and_shortens_values() -> None:
    """Values are shown as escaped, shortened reprs; a repr that fails still gives a row."""
    from permflow._message import MessageList

    log = MessageList(
        [
            Message("t<&>", "<script>alert(1)</script>", "s", 0.0, "0"),
            Message("long", "x" * 1000, "s", float("nan"), "1"),
            Message("odd", _Unprintable(), "s", 0.0, "2"),
        ]
    )
    table = log._repr_html_()
    assert "<script>" not in table
    rows = _rows(table)
    assert rows[1][:3] == ["0", "t<&>", repr("<script>alert(1)</script>")]
    assert len(rows[2][2]) <= 120 and "..." in rows[2][2] and rows[2][4] == "nan"
    assert rows[3][2].startswith("<_Unprintable")


def test_table_shows_at_most_500_rows() -> None:
    """A long log shows its first 500 messages and says how many more there are."""
    from permflow._message import MessageList

    log = MessageList(Message("t", i, "s", 0.0, str(i)) for i in range(501))
    rows = _rows(log._repr_html_())
    assert len(rows) == 1 + 500 + 1
    assert rows[-1] == ["… 1 more (index the list to see them)"]


def test_in_memory_apeek_is_a_table_too() -> None:
    """The connection's own peek returns the displayable list."""
    conn = InMemoryPubSubConnection()
    _echo().with_connection(conn).invoke(1, {"state_id": "c"})
    log: Any = anyio.run(conn.apeek, "c")
    assert hasattr(log, "_repr_html_") and [m.value for m in log] == [1, 1]


def test_redis_peek_is_a_table_too(redis_url: str, redis_prefix: str) -> None:
    """On Redis, peek() from the connection and from the PubSub gives the displayable list."""
    from permflow import RedisPubSubConnection

    conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix)
    try:
        pubsub = _echo().with_connection(conn)
        pubsub.invoke("v", {"state_id": "redis-table"})
        for log in (conn.peek("redis-table"), pubsub.peek("redis-table")):
            assert [row[1] for row in _rows(log._repr_html_())[1:]] == ["__in__", "__out__"]  # type: ignore[attr-defined]
        assert repr(pubsub).startswith(f"<PubSub on {conn!r}, 1 process:")
    finally:
        conn.close()
