"""Virtualenvs for the peers, created under ``benchmarks/.venvs/`` on first use.

Each environment installs one requirements file; a hash of that file is kept
inside the environment, so editing the requirements rebuilds it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"

#: environment name -> (requirements file, newest Python it supports)
ENVIRONMENTS: dict[str, tuple[str, tuple[int, int]]] = {
    "peers": ("requirements-peers.txt", (3, 99)),
    "permchain": ("requirements-permchain.txt", (3, 12)),
    # the job queues of benchmarks.queues: one environment each (their redis-py pins differ)
    "celery": ("requirements-celery.txt", (3, 99)),
    "dramatiq": ("requirements-dramatiq.txt", (3, 99)),
    "arq": ("requirements-arq.txt", (3, 99)),
}


class Unavailable(Exception):
    pass


def _base_python(newest: tuple[int, int]) -> str:
    if sys.version_info[:2] <= newest:
        return sys.executable
    for minor in range(newest[1], 9, -1):
        found = shutil.which(f"python3.{minor}")
        if found:
            return found
    raise Unavailable(f"needs Python <= {newest[0]}.{newest[1]}; none found on PATH")


def python_for(env: str, *, create: bool = True) -> str:
    """The interpreter of environment ``env``, creating or updating it if needed."""
    requirements, newest = ENVIRONMENTS[env]
    req_path = HERE / requirements
    digest = hashlib.sha256(req_path.read_bytes()).hexdigest()
    root = VENVS / env
    python = root / "bin" / "python"
    marker = root / ".requirements-sha256"
    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return str(python)
    if not create:
        raise Unavailable(f"virtualenv {root} not created (run without --no-install)")
    print(f"[setup] creating {root} from {requirements} (first use; takes a minute)", flush=True)
    base = _base_python(newest)
    subprocess.run([base, "-m", "venv", "--clear", str(root)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req_path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise Unavailable(f"pip install -r {requirements} failed:\n{tail}")
    marker.write_text(digest + "\n")
    return str(python)
