"""The command line: graph, invoke, peek, runs and worker, and how they fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

APP = """
import warnings
from permflow import PubSub, Topic, route
print("app: loading")  # what a module prints at import must not spoil a command's stdout
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
chatty = PubSub(Topic.IN.subscribe() | (lambda x: print("step: working") or x) | Topic.OUT.publish())
word, words = Topic("word"), Topic("words")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the command line reports them itself
    miswired = PubSub(Topic.IN.subscribe() | str.split | word.publish(), words.subscribe() | len)
not_a_pubsub = 42
big = PubSub(
    Topic.IN.subscribe(name="big only", when=lambda n: n > 9) | Topic.OUT.publish(),
    Topic.IN.subscribe(name="all") | Topic.OUT.publish(),
)
"""

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def cli(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    return subprocess.run(
        [sys.executable, "-m", "permflow", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed on stderr (after what the app printed itself)."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("app:", "step:"))]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


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


def test_graph_marks_a_filtered_subscription_in_text_and_json(tmp_path: Path) -> None:
    """graph draws a filtered subscription's edge ``-- when -->``; --json marks it ``"when": true``."""
    assert "  t0 -- when --> p0" in cli(tmp_path, "graph", "app:big").stdout.splitlines()
    data = json.loads(cli(tmp_path, "graph", "app:big", "--json").stdout)
    assert {name: p["when"] for name, p in data["processes"].items()} == {"big only": True, "all": False}


def test_graph_lists_wiring_problems_in_text_and_json(tmp_path: Path) -> None:
    """graph reports Graph.problems: a topic nobody publishes (with a close name) and no way to OUT."""
    text = cli(tmp_path, "graph", "app:miswired").stdout
    problems = [line for line in text.splitlines() if line.startswith("%% problem: ")]
    assert len(problems) == 2 and "topic 'words'" in problems[0] and "did you mean 'word'?" in problems[0]
    assert "Topic.OUT" in problems[1]
    data = json.loads(cli(tmp_path, "graph", "app:miswired", "--json").stdout)
    assert [p.removeprefix("%% problem: ") for p in problems] == data["problems"]
    assert json.loads(cli(tmp_path, "graph", "app:loop", "--json").stdout)["problems"] == []


@pytest.mark.parametrize("target", ["app:loop", "app.py:loop"])
def test_what_a_module_prints_while_loading_goes_to_stderr(tmp_path: Path, target: str) -> None:
    """A module printing at import leaves stdout to the command: graph --json stays parseable."""
    result = cli(tmp_path, "graph", target, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cycles"] == [["draft", "review"]]
    assert "app: loading" in result.stderr


def test_what_steps_print_during_invoke_goes_to_stderr(tmp_path: Path) -> None:
    """invoke's stdout holds only the OUT values as JSON, even when a step prints."""
    result = cli(tmp_path, "invoke", "app:chatty", '"a"', "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["a"]
    assert "step: working" in result.stderr


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
    """A wrong MODULE:ATTR exits 2 (a usage error) with one line saying what is wrong, no traceback."""
    result = cli(tmp_path, "graph", target)
    assert result.returncode == 2
    line = failure_line(result)
    assert line.startswith("permflow graph: ") and expected in line


@pytest.mark.parametrize(
    ("command", "doing"),
    [
        (["runs"], "listing state ids under prefix 'permflow'"),
        (["peek", "s1"], "reading the log of state id 's1'"),
        (["invoke", "app:pubsub", '"a"'], "starting a run of state id"),
        (["invoke", "app:pubsub", '"a"', "--workers"], "starting a run of state id"),
    ],
)
def test_an_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path, command: list[str], doing: str) -> None:
    """Every store command on an unreachable Redis prints one line naming it, no traceback, exit 1."""
    result = cli(tmp_path, *command, "--redis", CLOSED)
    assert result.returncode == 1
    line = failure_line(result)
    assert line.startswith(f"permflow {command[0]}: Redis at {CLOSED} failed while {doing}")
    assert "Check that the server is running" in line


def test_log_level_debug_shows_the_traceback(tmp_path: Path) -> None:
    """With --log-level debug a failure prints its traceback, then the same one line."""
    result = cli(tmp_path, "runs", "--redis", CLOSED, "--log-level", "debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConnectionFailedError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"permflow runs: Redis at {CLOSED} failed")


def test_a_failing_step_keeps_its_traceback(tmp_path: Path) -> None:
    """An error raised by the user's own step is not shortened: its traceback points into their code."""
    (tmp_path / "steps.py").write_text(
        "from permflow import PubSub, Topic\n"
        "def boom(x):\n"
        "    raise ValueError('bad input')\n"
        "pubsub = PubSub(Topic.IN.subscribe() | boom | Topic.OUT.publish())\n"
    )
    result = cli(tmp_path, "invoke", "steps:pubsub", '"a"')
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "raise ValueError('bad input')" in result.stderr


def test_a_permflow_error_of_a_run_is_one_line(tmp_path: Path) -> None:
    """A run failing with a permflow error (here a CycleError) prints one line naming it."""
    (tmp_path / "cycle.py").write_text(
        "from permflow import PubSub, Topic\n"
        "t = Topic('t')\n"
        "pubsub = PubSub(Topic.IN.subscribe() | t.publish(),\n"
        "                t.subscribe() | t.publish() | Topic.OUT.publish())\n"
    )
    result = cli(tmp_path, "invoke", "cycle:pubsub", '"a"', "--quiet")
    assert result.returncode == 1
    assert "received an equal value again along one lineage" in failure_line(result)


@pytest.mark.parametrize(
    "command",
    [
        ["worker", "app:pubsub"],
        ["invoke", "app:pubsub", '"a"', "--workers"],
    ],
)
def test_workers_refuse_an_in_memory_pubsub(tmp_path: Path, command: list[str]) -> None:
    """worker, or invoke --workers, without --redis on an in-memory PubSub refuses (exit 2) in one
    line: no other process could see its runs, so it would wait forever."""
    result = cli(tmp_path, *command, timeout=30)
    assert result.returncode == 2
    assert failure_line(result) == (
        f"permflow {command[0]}: app:pubsub uses an in-memory connection, which other processes "
        "cannot see: pass --redis URL"
    )


def test_peek_of_an_unknown_state_id_fails(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    """peek of a state id with no stored messages exits 1 saying no run is stored under it."""
    result = cli(tmp_path, "peek", "nope", "--redis", redis_url, "--prefix", redis_prefix)
    assert result.returncode == 1
    assert failure_line(result) == (
        f"permflow peek: no run is stored under state id 'nope' (prefix {redis_prefix!r}); "
        "`permflow runs` lists the stored ones"
    )
    assert result.stdout == ""


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
