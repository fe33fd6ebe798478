"""RedisPubSubConnection on a real Redis Cluster: ways to connect, runs on every
primary, work spread over primaries, and a run whose slot moves while it runs.

The conformance, run-semantics and worker process tests run on the cluster as
well (the ``store_url`` fixture); this module tests what only a cluster has.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import anyio
import pytest
import redis.asyncio
from redis.crc import key_slot

from permflow import ConnectionFailedError, PubSub, RedisPubSubConnection, Topic
from permflow.connections.redis._work import work_keys

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def owner_of(cluster: Any, slot: int) -> tuple[int, bytes]:
    """(port, node id) of the primary serving ``slot``."""
    with cluster.admin(cluster.ports[0]) as admin:
        for start, end, (_, port, node_id, *_) in admin.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(port), node_id
    raise AssertionError(f"slot {slot} is not served")


def node_id(cluster: Any, port: int) -> bytes:
    with cluster.admin(port) as admin:
        return bytes(admin.execute_command("CLUSTER", "MYID"))


def move_slot(cluster: Any, slot: int, to_port: int) -> int:
    """Move ``slot`` with its keys to the primary on ``to_port`` (as redis-cli
    --cluster reshard does: IMPORTING, MIGRATING, MIGRATE, NODE); keys moved."""
    from_port, from_id = owner_of(cluster, slot)
    to_id = node_id(cluster, to_port)
    with cluster.admin(to_port) as target, cluster.admin(from_port) as source:
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", from_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
        moved = 0
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
    for port in cluster.ports:
        with cluster.admin(port) as admin:
            admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)
    return moved


async def test_both_cluster_urls_and_a_cluster_client_reach_runs_on_every_primary(
    redis_cluster: Any, redis_prefix: str
) -> None:
    """redis+cluster://, cluster=True and a RedisCluster client store runs on all three
    primaries and list all of them (one SCAN per primary)."""
    chain = Topic.IN.subscribe() | (lambda x: x + 1) | Topic.OUT.publish()
    url = redis_cluster.url
    plain = url.replace("redis+cluster://", "redis://")
    client = redis.asyncio.RedisCluster.from_url(plain)
    connections = [
        RedisPubSubConnection.from_url(url, prefix=redis_prefix),
        RedisPubSubConnection.from_url(plain, prefix=redis_prefix, cluster=True),
        RedisPubSubConnection(client, prefix=redis_prefix),
    ]
    state_ids = [f"run-{i}" for i in range(12)]
    owners = {owner_of(redis_cluster, key_slot(f"{redis_prefix}:{sid}".encode()))[0] for sid in state_ids}
    assert len(owners) == 3  # the runs' keys live on every primary
    try:
        for k, conn in enumerate(connections):
            pubsub = PubSub(processes=(chain,), connection=conn)
            for sid in state_ids[k::3]:
                assert await pubsub.ainvoke(k, {"state_id": sid}) == [k + 1]
        for conn in connections:
            assert await conn.astate_ids() == sorted(state_ids)
            summaries = await conn.arun_summaries()
            assert sorted(s["state_id"] for s in summaries) == sorted(state_ids)
            assert all(s["outstanding"] == 0 and s["error"] is None for s in summaries)
    finally:
        for conn in connections:
            await conn.aclose()
        await client.aclose()


async def test_a_cluster_node_reached_without_cluster_mode_says_how_to_connect(
    redis_cluster: Any, redis_prefix: str
) -> None:
    """A plain redis:// URL to a cluster node fails with a hint naming redis+cluster://."""
    plain = redis_cluster.url.replace("redis+cluster://", "redis://")
    state_ids = [f"moved-{i}" for i in range(12)]
    async with RedisPubSubConnection.from_url(plain, prefix=redis_prefix) as conn:
        with pytest.raises(ConnectionFailedError, match=re.escape("redis+cluster://host:port")):
            for sid in state_ids:  # some of them live on another node
                await conn.apeek(sid)


def test_the_announcement_streams_sit_on_every_primary(redis_cluster: Any) -> None:
    """The 8 announcement streams of a prefix have distinct slots spread over all three primaries."""
    keys = work_keys("permflow")
    slots = [key_slot(k.encode()) for k in keys]
    assert len(set(slots)) == len(keys) == 8
    assert len({owner_of(redis_cluster, slot)[0] for slot in slots}) == 3


def test_the_installed_redis_py_is_at_least_the_declared_floor() -> None:
    """pyproject's redis floor (5.3: Redis.from_pool, get_connection() without arguments) is what runs."""
    installed = tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version("redis"))[:2])
    requires = importlib.metadata.requires("permflow") or []
    floors = [re.search(r"redis>=([\d.]+)", r) for r in requires if r.startswith("redis")]
    declared = next(tuple(int(p) for p in m.group(1).split(".")[:2]) for m in floors if m)
    assert declared >= (5, 3) and installed >= declared
    assert hasattr(redis.asyncio.Redis, "from_pool")


async def test_a_busy_run_whose_slot_moves_completes_with_every_message_once(
    redis_cluster: Any, redis_prefix: str
) -> None:
    """While a step of a run waits, the run's hash slot moves to another primary; released,
    the run completes there with every message stored once and delivered once."""
    middle = Topic("middle")
    started, release = anyio.Event(), anyio.Event()
    calls: list[int] = []

    async def held(x: int) -> int:
        calls.append(x)
        started.set()
        await release.wait()
        return x * 10

    conn = RedisPubSubConnection.from_url(redis_cluster.url, prefix=redis_prefix, lease=2.0)
    pubsub = PubSub(
        processes=(
            Topic.IN.subscribe() | (lambda x: x + 1) | middle.publish(),
            middle.subscribe() | held | Topic.OUT.publish(),
        ),
        connection=conn,
    )
    sid = "moving"
    slot = key_slot(f"{redis_prefix}:{sid}".encode())
    source = owner_of(redis_cluster, slot)[0]
    target = next(port for port in redis_cluster.ports if port != source)
    out: list[Any] = []

    async def run() -> None:
        out.extend(await pubsub.ainvoke(1, {"state_id": sid}))

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await started.wait()
                moved = await anyio.to_thread.run_sync(move_slot, redis_cluster, slot, target)
                release.set()
        assert moved >= 5 and owner_of(redis_cluster, slot)[0] == target
        assert out == [20] and calls == [2]  # delivered once, its step ran once
        log = [(m.topic, m.value) for m in await conn.apeek(sid)]
        assert log == [("__in__", 1), ("middle", 2), ("__out__", 20)]  # stored once each
        (summary,) = [s for s in await conn.arun_summaries() if s["state_id"] == sid]
        assert summary["outstanding"] == 0 and summary["error"] is None
        assert await pubsub.ainvoke(None, {"state_id": sid}) == []  # nothing left to deliver
    finally:
        await conn.aclose()
