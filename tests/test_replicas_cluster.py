"""``replicas=N`` on a Redis Cluster: each durable write waits for the replicas of its
run's own primary, on the connection that wrote it.

Each test runs a real cluster of three primaries with one replica each (started
here, in parallel, stopped by pid), which it freezes and fails over. asyncio
only: redis-py has no trio support.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from redis.crc import key_slot
from redis_servers import RedisClusterServers

from permflow import ConnectionFailedError, Delivery, Message, PubSub, RedisPubSubConnection, Topic
from permflow import ReplicationError, Subscription
from permflow.connections.redis import _client

pytestmark = pytest.mark.anyio

INPUTS = 300
PREFIX = "cw"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def replicated_cluster(node_timeout: int) -> Iterator[RedisClusterServers]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed (the redis-server package has both)")
    cluster = RedisClusterServers(3, replicas=1, node_timeout=node_timeout)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[RedisClusterServers]:
    """Three primaries with a replica each, shared by the tests that leave it whole."""
    yield from replicated_cluster(node_timeout=5000)


@pytest.fixture
def own() -> Iterator[RedisClusterServers]:
    """Three primaries with a replica each, for one test that breaks it."""
    yield from replicated_cluster(node_timeout=1000)


def settle(cluster: RedisClusterServers, seconds: float = 20) -> None:
    """Wait (polling, bounded) until every slot is served and every replica is in sync."""
    deadline = time.monotonic() + seconds
    while not cluster.settled():
        assert time.monotonic() < deadline, "the cluster did not settle"
        time.sleep(0.05)  # waiting for the nodes to agree, not synchronising tests


def state_ids_on(cluster: RedisClusterServers, primary: int, count: int) -> list[str]:
    """``count`` state ids whose keys live on the primary on port ``primary``."""
    with cluster.admin(primary) as admin:
        ranges = [(int(r[0]), int(r[1])) for r in admin.execute_command("CLUSTER", "SLOTS") if int(r[2][1]) == primary]
    found: list[str] = []
    n = 0
    while len(found) < count:
        slot = key_slot(f"{PREFIX}:run-{n}".encode())
        if any(low <= slot <= high for low, high in ranges):
            found.append(f"run-{n}")
        n += 1
    return found


def live_url(cluster: RedisClusterServers) -> str:
    return f"redis+cluster://127.0.0.1:{cluster.running()[0]}/0"


def message(topic: str, value: Any) -> Message:
    return Message(topic, value, "s", time.time())


async def publish_inputs(conn: RedisPubSubConnection, state_id: str, count: int) -> list[Delivery]:
    """Register process ``p`` on topic ``in``, publish ``count`` inputs and fetch them all for owner ``o``."""
    await conn.register(state_id, [Subscription("p", "in")])
    await conn.publish(state_id, [message("in", k) for k in range(count)])
    return await conn.fetch(state_id, "p", owner="o")


async def test_every_durable_write_is_followed_by_wait_on_its_primary(
    shared: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs on all three primaries with replicas=1 complete, and each primary answered exactly one
    WAIT per durable write of the runs it serves (commits included), all acknowledged."""
    settle(shared)
    waited: Counter[tuple[int, str]] = Counter()
    real = _client.call_and_wait

    async def counting(bound: Any, name: str, keys: list[str], args: list[Any], **options: Any) -> Any:
        reply = await real(bound, name, keys, args, **options)
        waited[bound.client.get_node_from_key(keys[0]).port, name] += 1
        assert not isinstance(reply, Exception), reply
        return reply

    monkeypatch.setattr(_client, "call_and_wait", counting)
    primaries = sorted(shared.shards())
    for port in primaries:
        with shared.admin(port) as admin:
            for source in _client._SCRIPTS.values():  # no NOSCRIPT retry (it sends WAIT too)
                admin.script_load(source)
            admin.config_resetstat()
    state_ids = [sid for port in primaries for sid in state_ids_on(shared, port, 2)]
    conn = RedisPubSubConnection.from_url(shared.url, prefix=PREFIX, replicas=1, replica_timeout=2.0)
    mid = Topic("mid")
    pubsub = PubSub(
        Topic.IN.subscribe() | (lambda x: x + 1) | mid.publish(),
        mid.subscribe() | (lambda x: x * 10) | Topic.OUT.publish(),
        connection=conn,
    )
    results: dict[str, Any] = {}
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for k, sid in enumerate(state_ids):

                    async def run(sid: str = sid, k: int = k) -> None:
                        results[sid] = await pubsub.ainvoke(k, {"state_id": sid})

                    tg.start_soon(run)
    finally:
        await conn.aclose()
    assert results == {sid: [(k + 1) * 10] for k, sid in enumerate(state_ids)}
    for port in primaries:
        with shared.admin(port) as admin:
            stats = admin.info("commandstats")
        mine = sum(count for (where, _), count in waited.items() if where == port)
        assert stats.get("cmdstat_wait", {}).get("calls", 0) == mine > 0, f"primary {port} {waited}"
        commits = sum(count for (where, name), count in waited.items() if where == port and name == "COMMIT")
        assert commits == 2 * 2, f"primary {port}: two runs of two steps each commit four times"
