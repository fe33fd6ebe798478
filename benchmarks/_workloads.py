"""The workloads: what each one runs, how it is measured and reported.

Step bodies are trivial (``x + 1``) so that what is measured is the cost of
the framework, not of the work. Every result is checked on every run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    #: Which system primitive builds the program, and with which arguments.
    primitive: str
    args: tuple[object, ...]
    #: "each": time ``reps`` sequential runs; "many": time one concurrent batch
    #: of ``count`` runs; "mem": resident memory over ``count`` sync runs.
    mode: str
    #: How many units one run counts for (hops of a chain), for per-unit cost.
    units_per_run: int = 1
    #: Fixed number of runs per round (None: calibrated to a time budget).
    count: int | None = None
    unit: str = "µs/run"  # or "µs/hop", "runs/s", "hops/s", "MiB"
    family: str = "memory"  # "memory" (in-process systems) or "redis"
    #: Only these systems take part (empty: every system of the family).
    only: tuple[str, ...] = ()
    what: str = ""

    @property
    def is_rate(self) -> bool:
        return self.unit.endswith("/s")


def workloads(quick: bool) -> list[Workload]:
    runs = 100 if quick else 1000
    lengths = (10, 50) if quick else (10, 50, 100, 200)
    mem = 2_000 if quick else 100_000
    batch = 100 if quick else 1000
    wl = [
        Workload(
            "w1_async",
            "W1 100-process chain, async bodies",
            "chain",
            (100, "async"),
            "each",
            units_per_run=100,
            unit="µs/hop",
            what="one input through 100 chained processes (ainvoke)",
        ),
        Workload(
            "w1_sync",
            "W1 100-process chain, sync bodies",
            "chain",
            (100, "sync"),
            "each",
            units_per_run=100,
            unit="µs/hop",
            what="same chain, plain functions, sync invoke()",
        ),
        Workload(
            "w2",
            "W2 fan-out 50 + join",
            "fanout",
            (50,),
            "each",
            what="one input to 50 subscribers, one join collecting them (ainvoke)",
        ),
        Workload(
            "w3_seq",
            f"W3 {runs} runs, 3-process chain, sequential ainvoke",
            "chain",
            (3, "async"),
            "each",
            count=runs,
            unit="runs/s",
            what="await ainvoke(i), one after another",
        ),
        Workload(
            "w3_batch",
            f"W3 {runs} runs, 3-process chain, abatch",
            "chain",
            (3, "async"),
            "many",
            count=runs,
            unit="runs/s",
            what="all runs at once through abatch/gather",
        ),
        Workload(
            "w3_sync",
            f"W3 {runs} runs, 3-process chain, sequential invoke",
            "chain",
            (3, "sync"),
            "each",
            count=runs,
            unit="runs/s",
            what="sync invoke(i), one after another",
        ),
    ]
    wl += [
        Workload(
            f"w4_{n}",
            f"W4 {n}-process chain, async bodies",
            "chain",
            (n, "async"),
            "each",
            units_per_run=n,
            unit="µs/hop",
            what=f"chain-length scaling: {n} hops (ainvoke)",
        )
        for n in lengths
    ]
    wl += [
        Workload(
            "redis_ping",
            "Redis PING",
            "ping",
            (),
            "each",
            family="redis",
            only=("redis-floor",),
            what="one PING round trip with redis-py asyncio",
        ),
        Workload(
            "redis_hop",
            "Redis hop by hand, 100 streams",
            "hop_chain",
            (100,),
            "each",
            units_per_run=100,
            unit="µs/hop",
            family="redis",
            only=("redis-floor",),
            what="XREADGROUP, then XACK+XADD in one pipeline, per hop",
        ),
        Workload(
            "redis_batch",
            f"Redis batched hops, {batch:,}-message batches",
            "batch_hops",
            (batch, 5),
            "each",
            units_per_run=batch * 5,
            unit="hops/s",
            family="redis",
            only=("redis-floor",),
            what=f"5 hops of {batch:,} messages each: XREADGROUP COUNT {batch}, XACK+XADD pipeline",
        ),
        Workload(
            "redis_w1",
            "W1 on Redis: 100-process chain, async bodies",
            "chain",
            (100, "async"),
            "each",
            units_per_run=100,
            unit="µs/hop",
            family="redis",
            only=("permflow-redis",),
            what="W1 with the run's state in Redis",
        ),
        Workload(
            "redis_w3_seq",
            f"W3 on Redis: {runs} runs, sequential ainvoke",
            "chain",
            (3, "async"),
            "each",
            count=runs,
            unit="runs/s",
            family="redis",
            only=("permflow-redis",),
            what="W3 sequential with Redis",
        ),
        Workload(
            "redis_w3_batch",
            f"W3 on Redis: {runs} runs, abatch",
            "chain",
            (3, "async"),
            "many",
            count=runs,
            unit="runs/s",
            family="redis",
            only=("permflow-redis",),
            what="W3 abatch with Redis, default settings",
        ),
        Workload(
            "redis_w3_batch64",
            f"W3 on Redis: {runs} runs, abatch(max_concurrency=64)",
            "chain",
            (3, "async", 64),
            "many",
            count=runs,
            unit="runs/s",
            family="redis",
            only=("permflow-redis",),
            what="W3 abatch with Redis, at most 64 runs at once",
        ),
    ]
    wl.append(
        Workload(
            "mem",
            f"MEM {mem:,} sync invokes, 3-process chain",
            "chain",
            (3, "sync"),
            "mem",
            count=mem,
            unit="MiB",
            what="resident memory sampled while invoking without a state id",
        )
    )
    return wl


#: (workload, baseline system, baseline workload): ratios are cost / baseline cost.
BASELINES: dict[str, tuple[str, str]] = {
    "w1_async": ("asyncio", "w1_async"),
    "w1_sync": ("asyncio", "w1_sync"),
    "w2": ("asyncio", "w2"),
    "w3_seq": ("asyncio", "w3_seq"),
    "w3_batch": ("asyncio", "w3_batch"),
    "w3_sync": ("asyncio", "w3_sync"),
    "w4_10": ("asyncio", "w4_10"),
    "w4_50": ("asyncio", "w4_50"),
    "w4_100": ("asyncio", "w4_100"),
    "w4_200": ("asyncio", "w4_200"),
    "redis_w1": ("redis-floor", "redis_hop"),
}

#: Targets for permflow's rows: ("ratio", max) or ("rate", min per second).
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("permflow", "w1_async"): ("ratio", 3.0),
    ("permflow", "w1_sync"): ("ratio", 5.0),
    ("permflow", "w3_seq"): ("rate", 10_000.0),
    ("permflow-redis", "redis_w1"): ("ratio", 2.0),
    ("permflow-redis", "redis_w3_batch"): ("rate", 1_000.0),
    ("permflow-redis", "redis_w3_batch64"): ("rate", 1_000.0),
}
