"""Type checkers see the installed permflow, with its types, from outside the repository.

A user's project imports permflow from wherever pip put it, often an editable
install of a checkout. This runs ``mypy --strict`` on user scripts in a
temporary directory, with no ``PYTHONPATH``, so mypy finds permflow only the
way a user's mypy or editor would: through the installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USES_PERMFLOW = """\
from permflow import InMemoryPubSubConnection, Message, PubSub, Topic, route

topic_one = Topic("one")
chain_one = Topic.IN.subscribe() | (lambda x: x + "b") | topic_one.publish()
chain_two = topic_one.subscribe() | (lambda x: x + "c") | Topic.OUT.publish()
pubsub = PubSub(processes=(chain_one, chain_two), connection=InMemoryPubSubConnection())
chooser = Topic("n").subscribe() | route(lambda n: topic_one, topics=[topic_one])

out: list[object] = pubsub.invoke("a", {"state_id": "typed"})
log: list[Message] = pubsub.peek("typed")
topics: list[str] = [message.topic for message in log]
names: list[str] = pubsub.process_names


async def main() -> list[object]:
    return await pubsub.ainvoke("a")
"""

MISUSES_PERMFLOW = """\
from permflow import PubSub, Topic

pubsub = PubSub(Topic.IN.subscribe() | Topic.OUT.publish())
count: int = pubsub.invoke("a")
Topic(3)
"""


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside the repository, with an empty mypy configuration of its own
    (shared by this module's tests, so that the second mypy run reuses the first's cache)."""
    path = tmp_path_factory.mktemp("user-project")
    assert ROOT not in path.parents
    (path / "mypy.ini").write_text("[mypy]\n")
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}


def _require_this_checkout_installed(user_dir: Path) -> None:
    """Fail unless ``import permflow`` outside the repository finds this checkout."""
    found = subprocess.run(
        [sys.executable, "-c", "import permflow; print(permflow.__file__)"],
        cwd=user_dir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if found.returncode == 0 and Path(found.stdout.strip()) == ROOT / "permflow" / "__init__.py":
        return
    found_at = (found.stdout + found.stderr).strip()
    reason = f"the installed permflow is not this checkout (pip install -e {ROOT}); it is: {found_at}"
    pytest.fail(reason)  # the README's test command installs it: anything else is a broken setup


def _mypy(user_dir: Path, name: str, code: str) -> subprocess.CompletedProcess[str]:
    (user_dir / name).write_text(code)
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file=mypy.ini", "--cache-dir=.cache", name]
    return subprocess.run(command, cwd=user_dir, env=_env(), capture_output=True, text=True, timeout=600)


def test_mypy_strict_accepts_a_user_script(user_dir: Path) -> None:
    """mypy --strict finds the installed permflow, and a correct user script passes."""
    _require_this_checkout_installed(user_dir)
    result = _mypy(user_dir, "app.py", USES_PERMFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_misuse_of_permflow_types(user_dir: Path) -> None:
    """mypy sees permflow's real annotations (not Any): wrong uses are reported as type errors."""
    _require_this_checkout_installed(user_dir)
    result = _mypy(user_dir, "misuse.py", MISUSES_PERMFLOW)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "import-not-found" not in result.stdout and "import-untyped" not in result.stdout
    report = result.stdout
    assert 'misuse.py:4: error: Incompatible types in assignment (expression has type "list[Any]"' in report
    assert 'misuse.py:5: error: Argument 1 to "Topic" has incompatible type "int"; expected "str"' in report
