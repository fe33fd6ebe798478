"""The examples run, and the README's commands and snippets stay true.

Each ``examples/*.py`` asserts its own results; here it runs in a fresh
interpreter from the repository root and must exit 0 and print its key line.
Every ```python block of the README runs the same way, except in the sections
about Redis (one server, a cluster) and performance, which need a server or take long.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

DEMO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python examples/quickstart.py"
)
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"

#: A line each example must print (proof that it got to its end).
KEY_LINES = {
    "quickstart.py": "['abc']",
    "human_in_the_loop.py": "result: ['refund sent']",
    "fanout_join.py": "joined per call: [{'https://a.example': 27}, {'https://bb.example': 30}]",
    "draft_review_loop.py": "runaway stopped: run ",
    "errors_and_retries.py": "poison: ['RuntimeError', 'RuntimeError', 'PoisonMessageError']",
}


def run_example(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        # a PermflowWarning (a wiring mistake) fails the example: none may warn
        [sys.executable, "-W", "error::UserWarning", str(path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # backstop against a hung run; examples finish in about a second
    )


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def readme_snippets() -> list[tuple[str, str]]:
    """(section heading, code) of each ```python block the README promises runs."""
    snippets, section = [], ""
    pattern = re.compile(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
    for match in pattern.finditer(readme()):
        if match.group(1):
            section = match.group(1).lstrip("# ").strip()
        elif section not in UNCHECKED_SECTIONS:
            snippets.append((section, match.group(2)))
    return snippets


UNCHECKED_SECTIONS = {
    "Scaling out with Redis",
    "Redis Cluster",
    "Workers: many processes, many machines",
    "Observability",
    "Performance",
}
SNIPPETS = readme_snippets()


def block_after(heading: str, text: str) -> str:
    """The body of the first fenced block after the Markdown heading ``heading``."""
    match = re.search(
        rf"^#+ {re.escape(heading)}\s*$.*?^```[a-z]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL
    )
    assert match, f"README.md has no fenced block after a heading {heading!r}"
    return match.group(1)


def test_every_example_has_a_key_line() -> None:
    """Each example file is covered by a key line below, and each key line by a file."""
    assert sorted(p.name for p in EXAMPLES) == sorted(KEY_LINES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    """The example exits 0 (its own asserts hold) and prints its key line."""
    done = run_example(path)
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n{done.stderr}"
    assert KEY_LINES[path.name] in done.stdout, done.stdout


def test_human_in_the_loop_takes_the_answer_from_the_command_line() -> None:
    """An answer given on the command line is the one the resumed run acts on."""
    done = run_example(ROOT / "examples" / "human_in_the_loop.py", "no")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "result: ['refund cancelled']" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "code", [code for _, code in SNIPPETS], ids=[f"{i}-{section}" for i, (section, _) in enumerate(SNIPPETS)]
)
def test_readme_snippet_runs(code: str, tmp_path: Path) -> None:
    """The README snippet runs as a script on its own (its asserts hold)."""
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    done = run_example(script)
    assert done.returncode == 0, f"README snippet failed:\n{code}\n{done.stdout}\n{done.stderr}"


def test_readme_gives_the_demo_and_test_commands() -> None:
    """The README's two setup commands are exactly the supported one-liners."""
    text = readme()
    assert block_after("Run the demo", text).strip() == DEMO_COMMAND
    assert block_after("Run the tests", text).strip() == TEST_COMMAND
    assert (ROOT / "examples" / "quickstart.py").is_file()


def test_ci_runs_the_readme_test_command() -> None:
    """`.ci/run` contains the README's test command verbatim, so CI tests what users run."""
    command = block_after("Run the tests", readme()).strip()
    ci = ROOT / ".ci" / "run"
    assert ci.is_file(), ".ci/run is missing"
    assert command in ci.read_text(encoding="utf-8")


def test_quickstart_is_the_readme_snippet() -> None:
    """examples/quickstart.py runs the README's first snippet character for character."""
    snippet = block_after("Quick start", readme())
    quickstart = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    region = quickstart.split("# fmt: off\n", 1)[1].split("# fmt: on\n", 1)[0]
    assert region == snippet
