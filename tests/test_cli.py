"""The command line: graph, invoke, peek and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

APP = """
from permflow import PubSub, Topic, route
one, draft, review = Topic("one"), Topic("draft"), Topic("review")
pubsub = PubSub(
    Topic.IN.subscribe() | (lambda x: x + "b") | one.publish(),
    one.subscribe() | (lambda x: x + "c") | Topic.OUT.publish(),
)
loop = PubSub(
    Topic.IN.subscribe() | draft.publish(),
    draft.subscribe() | (lambda n: n + 1) | review.publish(),
    review.subscribe() | route(lambda n: Topic.OUT if n >= 3 else draft, topics=[Topic.OUT, draft]),
)
not_a_pubsub = 42
"""


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    return subprocess.run(
        [sys.executable, "-m", "permflow", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_graph_prints_mermaid_with_its_cycle(tmp_path: Path) -> None:
    """graph prints a Mermaid flowchart naming every topic and the loop's cycle."""
    result = cli(tmp_path, "graph", "app:loop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flowchart LR")
    assert "%% cycle: draft → review → draft" in result.stdout


def test_graph_json_lists_processes_and_cycles(tmp_path: Path) -> None:
    """graph --json gives topics, each process's reads/writes, and the cycles."""
    data = json.loads(cli(tmp_path, "graph", "app.py:loop", "--json").stdout)
    assert data["cycles"] == [["draft", "review"]]
    assert {p["reads"] for p in data["processes"].values()} == {"__in__", "draft", "review"}


def test_invoke_prints_out_values_and_progress(tmp_path: Path) -> None:
    """invoke prints the OUT values as JSON and each message as progress on stderr."""
    result = cli(tmp_path, "invoke", "app:pubsub", '"a"')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["abc"]
    assert "'ab'" in result.stderr and "__out__" in result.stderr


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("app:nope", "has no attribute 'nope'"),
        ("missing_module:x", "cannot import 'missing_module'"),
        ("app:not_a_pubsub", "is of type int, not a permflow.PubSub"),
        ("app", "expected MODULE:ATTR"),
    ],
)
def test_bad_targets_get_one_clear_line(tmp_path: Path, target: str, expected: str) -> None:
    """A wrong MODULE:ATTR exits non-zero with one line saying what is wrong, no traceback."""
    result = cli(tmp_path, "graph", target)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_refuses_an_in_memory_pubsub(tmp_path: Path) -> None:
    """A worker without --redis on an in-memory PubSub says other processes cannot see it."""
    result = cli(tmp_path, "worker", "app:pubsub")
    assert result.returncode != 0
    assert "--redis" in result.stderr


def test_peek_and_runs_read_a_run_stored_in_redis(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    """A run invoked on Redis from the CLI is listed by runs and printed by peek."""
    store = ["--redis", redis_url, "--prefix", redis_prefix]
    assert cli(tmp_path, "invoke", "app:pubsub", '"a"', "--state-id", "s1", *store).returncode == 0
    peek = cli(tmp_path, "peek", "s1", *store, "--json")
    assert [(m["topic"], m["value"]) for m in json.loads(peek.stdout)] == [
        ("__in__", "a"),
        ("one", "ab"),
        ("__out__", "abc"),
    ]
    runs = json.loads(cli(tmp_path, "runs", *store, "--json").stdout)
    assert [(r["state_id"], r["outstanding"]) for r in runs] == [("s1", 0)]
    text = cli(tmp_path, "peek", "s1", *store).stdout
    assert "'abc'" in text and "__out__" in text
