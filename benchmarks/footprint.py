"""Redis memory kept by finished runs: ``python -m benchmarks.footprint [--quick]``.

On a redis-server of this benchmark's own (no persistence), 10,000 runs of a
3-step chain (``IN → +1 → a → *2 → b → -3 → OUT``: 4 small messages a run) are
invoked, each with a state id of its own and kept. Figure: growth of
``INFO memory`` ``used_memory`` divided by the number of runs. Then 1,000 of the
same runs get 4 more inputs each (16 more messages): the growth per message.
And 1,000 runs of the same chain with one more process registered on topic
``b`` that never reads it: what a run with unfinished work costs (stream form).
Also the keys one finished run keeps, with ``MEMORY USAGE`` of each.

Results go to ``benchmarks/footprint.json`` and ``benchmarks/footprint.md``.
``--quick`` runs 300 runs and checks the figure (at most 3 KB a run) only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import anyio
import redis

from benchmarks.faults import Server
from permflow import PubSub, RedisPubSubConnection, Subscription, Topic

RUNS = 10_000
MORE_RUNS = 1_000
MORE_INPUTS = 4
#: Runs invoked at once.
CONCURRENCY = 32
#: What a finished, kept run of 4 small messages may cost.
BUDGET = 3 * 1024

A, B = Topic("a"), Topic("b")
chain = PubSub(
    Topic.IN.subscribe() | (lambda x: x + 1) | A.publish(),
    A.subscribe() | (lambda x: x * 2) | B.publish(),
    B.subscribe() | (lambda x: x - 3) | Topic.OUT.publish(),
)


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


async def invoke_all(pubsub: PubSub, inputs: list[tuple[str, int]]) -> None:
    """``pubsub.ainvoke`` of every (state id, input), CONCURRENCY at a time, results checked."""
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(state_id: str, x: int) -> None:
        async with limiter:
            got = await pubsub.ainvoke(x, {"state_id": state_id})
        if got != [(x + 1) * 2 - 3]:
            raise SystemExit(f"run {state_id} returned {got!r}")

    async with anyio.create_task_group() as tg:
        for state_id, x in inputs:
            tg.start_soon(one, state_id, x)


async def register_idle(conn: RedisPubSubConnection, state_ids: list[str]) -> None:
    """Register a process reading topic b that nothing will drive, in each run."""
    for state_id in state_ids:
        await conn.register(state_id, [Subscription("idle", "b")])


def measure(url: str, runs: int, more_runs: int) -> dict[str, Any]:
    prefix = "bench-footprint"
    client = redis.Redis.from_url(url)
    conn = RedisPubSubConnection.from_url(url, prefix=prefix)
    pubsub = chain.with_connection(conn)
    try:
        anyio.run(invoke_all, pubsub, [("warm-up", 0)])
        before = used_memory(client)
        started = time.perf_counter()
        anyio.run(invoke_all, pubsub, [(f"run-{i}", i) for i in range(runs)])
        seconds = time.perf_counter() - started
        after = used_memory(client)
        per_run = (after - before) / runs
        inputs = [(f"run-{i}", 1000 + k) for k in range(MORE_INPUTS) for i in range(more_runs)]
        anyio.run(invoke_all, pubsub, inputs)
        grown = used_memory(client)
        per_message = (grown - after) / (more_runs * MORE_INPUTS * 4)
        # the same runs, but a process registered on topic b never reads it: unfinished
        open_ids = [f"open-{i}" for i in range(more_runs)]
        anyio.run(register_idle, conn, open_ids)
        registered = used_memory(client)
        anyio.run(invoke_all, pubsub, [(state_id, 1) for state_id in open_ids])
        per_open_run = (used_memory(client) - registered) / more_runs
        keys = {
            key.decode(): int(client.memory_usage(key) or 0)
            for key in client.scan_iter(match=f"{{{prefix}:run-{runs - 1}}}*")
        }
        info = client.info("server")
    finally:
        conn.close()
        client.close()
    return {
        "runs": runs,
        "bytes_per_run": round(per_run),
        "bytes_per_message": round(per_message),
        "bytes_per_unfinished_run": round(per_open_run),
        "keys_of_one_run": keys,
        "runs_per_second": round(runs / seconds),
        "redis_version": info["redis_version"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 runs, the figure checked only")
    args = parser.parse_args()
    server = Server(persistent=False)
    server.start()
    try:
        result = measure(server.url, 300 if args.quick else RUNS, 100 if args.quick else MORE_RUNS)
    finally:
        server.close()
    print(
        f"a finished 3-step run of 4 messages: {result['bytes_per_run']} B; "
        f"each further message: {result['bytes_per_message']} B; unfinished (stream form): "
        f"{result['bytes_per_unfinished_run']} B; keys: {result['keys_of_one_run']}"
    )
    if result["bytes_per_run"] > BUDGET:
        raise SystemExit(f"a finished run costs {result['bytes_per_run']} B, over the {BUDGET} B budget")
    if args.quick:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M")
    result["date"] = stamp
    here = Path(__file__).parent
    (here / "footprint.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Redis memory of finished runs ({stamp}, Redis {result['redis_version']}, "
        f"{result['runs']:,} runs; `used_memory` growth)",
        "",
        "| figure | bytes |",
        "|---|---|",
        f"| a finished 3-step run of 4 small messages, kept | {result['bytes_per_run']:,} |",
        f"| each further message of a kept run | {result['bytes_per_message']:,} |",
        "| the same run with a message some process has not finished (stream form) "
        f"| {result['bytes_per_unfinished_run']:,} |",
        "",
        "Keys one finished run keeps (`MEMORY USAGE`):",
        "",
        "| key | bytes |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | {size:,} |" for key, size in sorted(result["keys_of_one_run"].items())]
    (here / "footprint.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
