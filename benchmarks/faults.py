"""Recovery figures on a broken Redis: ``python -m benchmarks.faults [--quick]``.

* **outage** — two ``permflow worker`` processes serve 20 runs of a chain with
  a 0.2 s step through a ``with_workers()`` client. While every run is in
  flight, Redis (a server of this benchmark's own, append-only file synced on
  every write, so stored runs survive) is stopped for 0.5 s and for 10 s, then
  started again. Figure: seconds from Redis answering again until the last of
  the same 20 client calls returned (correct results, every message stored
  once).
* **frozen** — Redis stopped with SIGSTOP while ``invoke(x, {"timeout": 2})``
  runs: the longest any of the calls blocked.

Each figure is the median (and max) of ``--rounds`` rounds; results go to
``benchmarks/faults.json`` and ``benchmarks/faults.md``. ``--quick`` runs one
short round of each and checks the results only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from permflow import PermflowError, PubSub, RedisPubSubConnection, Topic

ROOT = Path(__file__).resolve().parents[1]
STEP_SECONDS = 0.2
RUNS = 20
WORK = Topic("work")


async def _slowly(x: int) -> int:
    await anyio.sleep(STEP_SECONDS)
    return x * 2


#: x → x + 1 → (x + 1) * 2 after 0.2 s → OUT: the chain the workers serve.
slow = PubSub(
    Topic.IN.subscribe() | (lambda x: x + 1) | WORK.publish(),
    WORK.subscribe() | _slowly | Topic.OUT.publish(),
)


class Server:
    """A redis-server of a benchmark's own on a free port (a replica of
    ``replica_of`` if given), stopped by pid."""

    def __init__(self, *, persistent: bool = True, replica_of: Server | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("benchmarks.faults needs redis-server on PATH")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="permflow-bench-faults-")
        self.command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if persistent:  # stored runs survive restarts
            self.command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir]
        else:
            self.command += ["--appendonly", "no", "--dir", self.dir]
        if replica_of is not None:
            self.command += [
                "--replicaof",
                "127.0.0.1",
                str(replica_of.port),
                "--repl-diskless-sync-delay",
                "0",
            ]
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.01)  # waiting for the server to listen
        raise SystemExit(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def close(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGCONT)
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def outage_round(server: Server, down: float, runs: int) -> float:
    """Seconds from Redis answering again until the last in-flight call returned."""
    prefix = f"bench-faults-{os.urandom(4).hex()}"
    workers = [
        await anyio.open_process(
            [sys.executable, "-m", "permflow", "worker", "benchmarks.faults:slow", "--redis", server.url,
             "--prefix", prefix, "--concurrency", "20", "--log-level", "ERROR"],
            cwd=ROOT,
        )
        for _ in range(2)
    ]  # fmt: skip
    client = slow.with_connection(RedisPubSubConnection.from_url(server.url, prefix=prefix)).with_workers()
    results: dict[int, Any] = {}
    try:

        async def call(x: int) -> None:
            results[x] = await client.ainvoke(x, {"state_id": f"run-{x}"})

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for x in range(runs):
                    tg.start_soon(call, x)
                for x in range(runs):  # every run in flight: past its first step
                    while len(await client.apeek(f"run-{x}")) < 2:
                        await client.connection.wait_for_change(f"run-{x}", 0.5)
                await anyio.to_thread.run_sync(server.stop)
                await anyio.sleep(down)  # the outage itself
                await anyio.to_thread.run_sync(server.start)
                back = time.perf_counter()
            took = time.perf_counter() - back
        for x in range(runs):
            topics = [m.topic for m in await client.apeek(f"run-{x}")]
            if results[x] != [(x + 1) * 2] or topics != ["__in__", "work", "__out__"]:
                raise SystemExit(f"run {x} after a {down}s outage: {results[x]!r}, log {topics}")
        return took
    finally:
        await client.connection.aclose()
        for worker in workers:
            worker.terminate()
            await worker.wait()


def frozen_round(server: Server, timeout: float) -> float:
    """Seconds ``invoke`` with ``timeout`` blocked while Redis was frozen."""
    pubsub = slow.with_connection(RedisPubSubConnection.from_url(server.url, prefix="bench-frozen"))
    try:
        pubsub.invoke(1, {"state_id": "warm"})
        server.signal(signal.SIGSTOP)
        start = time.perf_counter()
        try:
            pubsub.invoke(1, {"state_id": "frozen", "timeout": timeout})
        except PermflowError:
            pass
        else:
            raise SystemExit("invoke returned a result from a frozen server")
        return time.perf_counter() - start
    finally:
        server.signal(signal.SIGCONT)
        pubsub.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round of each, results checked only")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    outages = (0.5,) if args.quick else (0.5, 10.0)
    server = Server()
    server.start()
    figures: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for down in outages:
                took = anyio.run(outage_round, server, down, 4 if args.quick else RUNS)
                figures.setdefault(f"resume after a {down:g} s outage", []).append(took)
            figures.setdefault("invoke(timeout=2) on a frozen server", []).append(frozen_round(server, 2.0))
    finally:
        server.close()
    rows = {name: {"median": statistics.median(v), "max": max(v), "rounds": v} for name, v in figures.items()}
    for name, row in rows.items():
        print(f"{name:45} median {row['median']:6.2f} s   max {row['max']:6.2f} s")
    if args.quick:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M")
    here = Path(__file__).parent
    (here / "faults.json").write_text(json.dumps({"date": stamp, "rows": rows}, indent=2) + "\n")
    lines = [f"Recovery on a broken Redis ({stamp}, {rounds} rounds; seconds)", "",
             "| figure | median | max |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {row['median']:.2f} | {row['max']:.2f} |" for name, row in rows.items()]
    (here / "faults.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
