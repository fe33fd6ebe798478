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
            "W3 3-process chain, sequential ainvoke",
            "chain",
            (3, "async"),
            "each",
            count=runs,
            unit="runs/s",
            what=f"await ainvoke(i), one after another: ≥ {runs:,} runs and ≥ 0.2 s per round",
        ),
        Workload(
            "w3_batch",
            f"W3 3-process chain, abatch of {runs:,}",
            "chain",
            (3, "async"),
            "many",
            count=runs,
            unit="runs/s",
            what=f"{runs:,} runs at once through abatch/gather; batches repeated to ≥ 0.2 s per round",
        ),
        Workload(
            "w3_sync",
            "W3 3-process chain, sequential invoke",
            "chain",
            (3, "sync"),
            "each",
            count=runs,
            unit="runs/s",
            what=f"sync invoke(i), one after another: ≥ {runs:,} runs and ≥ 0.2 s per round",
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
            "Redis PING: one round trip",
            "ping",
            (),
            "each",
            family="redis",
            only=("redis-floor",),
            what="one PING with redis-py asyncio: the bare round trip",
        ),
        Workload(
            "redis_hop_script",
            "Redis floor, 1 round trip per hop: Lua XACK+XADD+XREADGROUP, 100 streams",
            "script_hop_chain",
            (100,),
            "each",
            units_per_run=100,
            unit="µs/hop",
            family="redis",
            only=("redis-floor",),
            what="one EVALSHA per hop: XACK the delivered entry, XADD the next, XREADGROUP it",
        ),
        Workload(
            "redis_hop_multi",
            "Redis hop in 2 round trips: XREADGROUP, then XACK+XADD in MULTI, 100 streams",
            "hop_chain",
            (100,),
            "each",
            units_per_run=100,
            unit="µs/hop",
            family="redis",
            only=("redis-floor",),
            what="XREADGROUP, then XACK+XADD in one MULTI pipeline, per hop",
        ),
        Workload(
            "redis_run_script",
            "Redis floor for a 3-process run: 4 round trips by Lua script",
            "script_hop_chain",
            (3,),
            "each",
            unit="runs/s",
            family="redis",
            only=("redis-floor",),
            what="a W3 run by hand: input in, 3 hops of one EVALSHA each, one after another",
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
            "W3 on Redis: sequential ainvoke",
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
            f"W3 on Redis: abatch of {runs:,}",
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
            f"W3 on Redis: abatch of {runs:,}, max_concurrency=64",
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


@dataclass(frozen=True)
class Baseline:
    """What a workload's cost is divided by: ``workload`` as ``system`` measured it."""

    system: str
    workload: str
    #: Said with the ratio ("1.20× PING"); empty for the in-memory baseline.
    name: str = ""
    #: Units of the baseline's workload in one unit of the judged one (a W3 run
    #: is 4 hops: its input, then 3 steps).
    per: float = 1.0


_PING = Baseline("redis-floor", "redis_ping", "PING")
_SCRIPT_HOP = Baseline("redis-floor", "redis_hop_script", "1-RTT script floor")
_MULTI_HOP = Baseline("redis-floor", "redis_hop_multi", "2-RTT MULTI hop")
_SCRIPT_RUN = Baseline("redis-floor", "redis_run_script", "1-RTT script floor")
_BATCH_RUN = Baseline("redis-floor", "redis_batch", "4 pipelined hops", per=4)
_MEMORY = ("w1_async", "w1_sync", "w2", "w3_seq", "w3_batch", "w3_sync", "w4_10", "w4_50", "w4_100", "w4_200")

#: Ratios are cost / baseline cost, against each baseline of the workload; the
#: first one is what a target is judged against. The Redis rows compare with
#: the floor of their kind (one round trip per hop, by Lua script) and with the
#: bare round trip (PING); W1 also with the hop in two round trips (MULTI).
BASELINES: dict[str, tuple[Baseline, ...]] = {
    **{key: (Baseline("asyncio", key),) for key in _MEMORY},
    # the sync facade is judged against permflow's own ainvoke: what the hand-off costs
    "w3_sync": (Baseline("permflow", "w3_seq", "permflow ainvoke"), Baseline("asyncio", "w3_sync")),
    "redis_hop_script": (_PING,),
    "redis_hop_multi": (_PING,),
    "redis_run_script": (_PING,),
    "redis_w1": (_SCRIPT_HOP, _PING, _MULTI_HOP),
    "redis_w3_seq": (_SCRIPT_RUN, _PING),
    "redis_w3_batch": (_BATCH_RUN, _PING),
    "redis_w3_batch64": (_BATCH_RUN, _PING),
}

#: Targets for permflow's rows: ("ratio", max) or ("rate", min per second).
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("permflow", "w1_async"): ("ratio", 1.4),
    ("permflow", "w1_sync"): ("ratio", 5.0),
    ("permflow", "w2"): ("ratio", 2.0),
    ("permflow", "w3_seq"): ("ratio", 1.5),
    ("permflow", "w3_sync"): ("ratio", 1.5),
    ("permflow-redis", "redis_w1"): ("ratio", 2.0),
    ("permflow-redis", "redis_w3_seq"): ("rate", 1_000.0),
    ("permflow-redis", "redis_w3_batch"): ("ratio", 2.0),
    ("permflow-redis", "redis_w3_batch64"): ("ratio", 2.0),
}
