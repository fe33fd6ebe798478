"""The cost of ``replicas=1``: ``python -m benchmarks.replicas [--quick]``.

A primary and one replica of this benchmark's own (``redis-server`` on free
ports, nothing persisted, same machine). One driver commits deliveries one at a
time (each commit stores one output message: the hop of a step) with
``replicas=0`` and with ``replicas=1`` (``WAIT 1`` in the same round trip),
in interleaved rounds. Figures: microseconds per commit (median of the rounds)
and their ratio. Results go to ``benchmarks/replicas.json`` and
``benchmarks/replicas.md``; ``--quick`` runs one short round and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import anyio

from permflow import Message, RedisPubSubConnection, Subscription

from .faults import Server

COMMITS = 2000


async def wait_for_replica(url: str) -> None:
    """Return once a write on ``url`` is acknowledged by its replica."""
    import redis.asyncio

    deadline = time.monotonic() + 20
    async with redis.asyncio.Redis.from_url(url) as client:
        while time.monotonic() < deadline:
            try:
                await client.set("bench:ready", 1)
                if await client.execute_command("WAIT", 1, 100) >= 1:
                    return
            except (OSError, redis.RedisError):
                await anyio.sleep(0.05)  # the server is starting
    raise SystemExit("the replica did not come up")


async def per_commit(url: str, replicas: int, commits: int) -> float:
    """Microseconds per commit, ``commits`` commits in a row on one run."""
    conn = RedisPubSubConnection.from_url(url, prefix=f"bench-replicas-{replicas}", replicas=replicas)
    try:
        await conn.adelete("s")
        await conn.register("s", [Subscription("p", "in")])
        await conn.publish("s", [Message("in", k, "s", 0.0) for k in range(commits)])
        deliveries = await conn.fetch("s", "p", owner="o")
        start = time.perf_counter()
        for delivery in deliveries:
            await conn.commit(delivery, [Message("out", delivery.messages[0].value, "s", 0.0)], owner="o")
        took = time.perf_counter() - start
        await conn.adelete("s")
    finally:
        await conn.aclose()
    return took / commits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round, results not written")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds, commits = (1, 200) if args.quick else (args.rounds, COMMITS)
    primary = Server(persistent=False)
    primary.start()
    replica = Server(persistent=False, replica_of=primary)
    replica.start()
    figures: dict[str, list[float]] = {"replicas=0": [], "replicas=1": []}
    try:
        anyio.run(wait_for_replica, primary.url)
        for _ in range(rounds):
            for replicas in (0, 1):
                figures[f"replicas={replicas}"].append(anyio.run(per_commit, primary.url, replicas, commits))
    finally:
        replica.close()
        primary.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    ratio = medians["replicas=1"] / medians["replicas=0"]
    for name, value in medians.items():
        print(f"{name:12} {value:8.0f} µs per commit (median of {rounds})")
    print(f"replicas=1 costs {ratio:.2f}x a commit without it")
    if args.quick:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M")
    here = Path(__file__).parent
    result = {"date": stamp, "commits": commits, "rounds": figures, "median_us": medians, "ratio": ratio}
    (here / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Cost of replicas=1 per commit ({stamp}; primary + 1 replica on one machine, "
        f"{commits} commits in a row, median of {rounds} interleaved rounds)",
        "",
        "| setting | µs per commit |",
        "|---|---|",
        *(f"| {name} | {value:.0f} |" for name, value in medians.items()),
        f"| ratio | {ratio:.2f}× |",
    ]
    (here / "replicas.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
