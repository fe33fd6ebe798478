"""How a graph shows itself in Jupyter: Mermaid text that survives any name, and an offline SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from helpers import mermaid_labels

from permflow import Graph, PubSub, Topic, route

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


def test_svg_of_an_empty_program_is_still_a_drawing() -> None:
    """A PubSub without processes draws an empty, well-formed picture."""
    assert _html(PubSub().graph()).find(f"{SVG}svg") is not None
