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
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis.exceptions
from redis.crc import key_slot
from redis_servers import RedisClusterServers

from permflow import (
    ConfigError,
    ConnectionFailedError,
    Delivery,
    Message,
    PubSub,
    PubSubConnection,
    RedisPubSubConnection,
    ReplicationError,
    Subscription,
    Topic,
)
from permflow.connections.redis import _client, _cluster_wait
from permflow.connections.redis._replication import slot_fence
from permflow.testing import ConnectionSuite

pytestmark = pytest.mark.anyio

INPUTS = 300


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


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"cw-{uuid.uuid4().hex[:8]}"


def state_ids_on(cluster: RedisClusterServers, primary: int, count: int, prefix: str) -> list[str]:
    """``count`` state ids whose keys live on the primary on port ``primary``."""
    with cluster.admin(primary) as admin:
        ranges = [
            (int(r[0]), int(r[1]))
            for r in admin.execute_command("CLUSTER", "SLOTS")
            if int(r[2][1]) == primary
        ]
    found: list[str] = []
    n = 0
    while len(found) < count:
        slot = key_slot(f"{prefix}:run-{n}".encode())
        if any(low <= slot <= high for low, high in ranges):
            found.append(f"run-{n}")
        n += 1
    return found


def fill_socket_buffers(cluster: RedisClusterServers, primary: int) -> None:
    """Write 32 MB on ``primary``: more than the kernel buffers between it and a frozen
    replica hold, so that what it writes next stays in its own memory until the replica reads."""
    with cluster.admin(primary) as admin:
        admin.set(cluster.key_on(primary, "filler"), b"x" * (32 << 20))


def load_scripts(cluster: RedisClusterServers) -> None:
    """Load permflow's scripts on every primary (a first call then runs them at once)."""
    for port in cluster.shards():
        with cluster.admin(port) as admin:
            for source in _client._SCRIPTS.values():
                admin.script_load(source)


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
    shared: RedisClusterServers, monkeypatch: pytest.MonkeyPatch, prefix: str
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
    load_scripts(shared)  # no NOSCRIPT retry (which sends WAIT too)
    for port in primaries:
        with shared.admin(port) as admin:
            admin.config_resetstat()
    state_ids = [sid for port in primaries for sid in state_ids_on(shared, port, 2, prefix)]
    conn = RedisPubSubConnection.from_url(shared.url, prefix=prefix, replicas=1, replica_timeout=2.0)
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


async def test_a_frozen_replica_fails_commits_on_its_primary_only(
    shared: RedisClusterServers, prefix: str
) -> None:
    """With the replica of one primary frozen, a replicas=1 commit of a run on that primary raises
    ReplicationError within replica_timeout (stored on the primary all the same), a run on another
    primary completes meanwhile, and commits there succeed again once the replica thaws."""
    settle(shared)
    shards = shared.shards()
    frozen_primary, other = sorted(shards)[:2]
    (replica,) = shards[frozen_primary]
    (here,) = state_ids_on(shared, frozen_primary, 1, prefix)
    (there,) = state_ids_on(shared, other, 1, prefix)
    conn = RedisPubSubConnection.from_url(shared.url, prefix=prefix, replicas=1, replica_timeout=0.5)
    pubsub = PubSub(Topic.IN.subscribe() | (lambda x: x + 1) | Topic.OUT.publish(), connection=conn)
    try:
        with anyio.fail_after(30):
            first, second = await publish_inputs(conn, here, 2)
            shared.signal(replica, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with anyio.fail_after(5), pytest.raises(ReplicationError) as caught:
                    await conn.commit(first, [message("out", "waited")], owner="o")
                elapsed = time.monotonic() - started
                assert await pubsub.ainvoke(1, {"state_id": there}) == [2]
            finally:
                shared.signal(replica, signal.SIGCONT)
            stored = [m.value for m in await conn.apeek(here) if m.topic == "out"]
            await anyio.to_thread.run_sync(settle, shared)
            assert await conn.commit(second, [message("out", "thawed")], owner="o")
    finally:
        await conn.aclose()
    error = caught.value
    assert isinstance(error, ConnectionFailedError)
    assert (error.acknowledged, error.replicas) == (0, 1)
    assert "0 of 1 replica acknowledged within replica_timeout=0.5s" in str(error)
    assert f"committing for process 'p' of state id '{here}'" in str(error)
    assert 0.5 <= elapsed < 5, "WAIT gave up after replica_timeout, not before nor much later"
    assert stored == ["waited"], "the commit that raised is stored on the primary"


async def test_a_failover_loses_no_acknowledged_commit(own: RedisClusterServers, prefix: str) -> None:
    """With replicas=1, concurrent commits of a run, its primary's replica frozen and then the primary
    SIGKILLed and replaced by that replica (CLUSTER FAILOVER TAKEOVER): every acknowledged commit is on
    the new primary, once, and resuming there redelivers exactly the inputs whose commit was not kept."""
    shards = own.shards()
    primary = sorted(shards)[0]
    (replica,) = shards[primary]
    (sid,) = state_ids_on(own, primary, 1, prefix)
    acked: list[int] = []
    failed: list[Exception] = []
    unacked: list[ReplicationError] = []  # sent once the replica could take nothing more
    enough, filled, lacking = anyio.Event(), anyio.Event(), anyio.Event()
    conn = RedisPubSubConnection.from_url(own.url, prefix=prefix, replicas=1, replica_timeout=0.5)
    try:
        with anyio.fail_after(30):
            deliveries = await publish_inputs(conn, sid, INPUTS)
            assert len(deliveries) == INPUTS

            async def commit_all(mine: list[Delivery]) -> None:
                for delivery in mine:
                    value = delivery.messages[0].value
                    late = filled.is_set()
                    try:
                        await conn.commit(delivery, [message("out", value)], owner="o")
                    except ReplicationError as exc:  # stored on the primary, not acknowledged
                        failed.append(exc)
                        if late:
                            unacked.append(exc)
                            if len(unacked) == 8:
                                lacking.set()
                        continue
                    except ConnectionFailedError as exc:  # the primary is gone
                        failed.append(exc)
                        return
                    acked.append(value)
                    if len(acked) == INPUTS // 3:
                        enough.set()

            try:
                async with anyio.create_task_group() as tg:
                    for k in range(8):  # eight committers: commits on the wire when the primary dies
                        tg.start_soon(commit_all, deliveries[k::8])
                    await enough.wait()
                    own.signal(replica, signal.SIGSTOP)  # from now on, commits are not replicated
                    # and what the primary sends it from now on stays in the primary's memory
                    await anyio.to_thread.run_sync(fill_socket_buffers, own, primary)
                    filled.set()
                    await lacking.wait()  # commits stored on the primary that the replica lacks
                    on_primary = [m for m in await conn.apeek(sid) if m.topic == "out"]
                    own.signal(primary, signal.SIGKILL)
            finally:
                own.signal(replica, signal.SIGCONT)
    finally:
        await conn.aclose()
    with own.admin(replica) as admin:
        admin.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    await anyio.to_thread.run_sync(settle, own)
    survivor = RedisPubSubConnection.from_url(live_url(own), prefix=prefix)
    try:
        with anyio.fail_after(30):
            log = await survivor.apeek(sid)
            await survivor.release(sid, "o")  # hand back what the dead primary's client held
            again = await survivor.fetch(sid, "p", owner="resume")
    finally:
        await survivor.aclose()
    assert any(not isinstance(exc, ReplicationError) for exc in failed), "no commit was on the wire"
    assert own.shards().keys() == {port for port in shards if port != primary} | {replica}
    inputs = [m.value for m in log if m.topic == "in"]
    outputs = [m.value for m in log if m.topic == "out"]
    assert inputs == list(range(INPUTS)), "an acknowledged publish was lost"
    assert sorted(outputs) == sorted(set(outputs)), "an output was stored twice"
    assert len(outputs) < len(on_primary), "the replica had every commit: the failover lost nothing"
    lost = set(acked) - set(outputs)
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged commits were lost in the failover"
    rerun = sorted(d.messages[0].value for d in again)
    assert not set(rerun) & set(acked), "resuming re-runs a step whose commit was acknowledged"
    assert sorted(rerun + outputs) == list(range(INPUTS)), "an input is neither committed nor redelivered"


@pytest.mark.parametrize("lost", ["script", "wait"])
async def test_a_lost_reply_is_resent_and_waited_for(
    shared: RedisClusterServers, prefix: str, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    """A commit whose connection drops after its primary ran it (the script's reply, or WAIT's, lost)
    is sent again on a fresh connection, waited for there, and stored and returned once; with the
    replica frozen, the WAIT there covers the lost connection's write and raises ReplicationError."""
    settle(shared)
    shards = shared.shards()
    primary = sorted(shards)[0]
    (replica,) = shards[primary]
    (sid,) = state_ids_on(shared, primary, 1, prefix)
    load_scripts(shared)  # the commit runs at the first EVALSHA (which the cut below expects)
    cuts: list[bytes] = []
    real = _cluster_wait._exchange

    async def cutting(node: Any, packed: bytes, count: int, answers: list[Any]) -> None:
        marker = next((m for m in cuts if m in packed), None)
        if marker is None:
            return await real(node, packed, count, answers)
        cuts.remove(marker)
        connection = node.acquire_connection()
        try:  # the primary runs it all; the connection drops before (all) replies are read
            await connection.send_packed_command(packed)
            reply = await connection.read_response()
            if lost == "wait":
                answers.append(reply)
            await connection.disconnect()
        finally:
            node.release(connection)
        raise redis.exceptions.ConnectionError(f"dropped by the test after {marker!r}")

    monkeypatch.setattr(_cluster_wait, "_exchange", cutting)
    conn = RedisPubSubConnection.from_url(shared.url, prefix=prefix, replicas=1, replica_timeout=0.5)
    try:
        with anyio.fail_after(30):
            first, second = await publish_inputs(conn, sid, 2)
            cuts.append(b"committed-1")
            stored = await conn.commit(first, [message("out", "committed-1")], owner="o")
            assert not cuts, "the connection was never cut"
            shared.signal(replica, signal.SIGSTOP)
            try:
                cuts.append(b"committed-2")
                with pytest.raises(ReplicationError):
                    await conn.commit(second, [message("out", "committed-2")], owner="o")
                assert not cuts, "the connection was never cut"
            finally:
                shared.signal(replica, signal.SIGCONT)
            log = [m.value for m in await conn.apeek(sid) if m.topic == "out"]
    finally:
        await conn.aclose()
    await anyio.to_thread.run_sync(settle, shared)
    assert stored is not None and [m.value for m in stored] == ["committed-1"]
    assert log == ["committed-1", "committed-2"]


async def test_fence_keys_are_not_listed_as_runs(shared: RedisClusterServers, prefix: str) -> None:
    """The fence a resent write leaves in its run's slot (``{prefix:%f<n>}:fence``) is not taken
    for a state id by ``state_ids()``."""
    primary = sorted(shared.shards())[0]
    (sid,) = state_ids_on(shared, primary, 1, prefix)
    fence = slot_fence(f"{{{prefix}}}:fence", key_slot(f"{prefix}:{sid}".encode()))
    conn = RedisPubSubConnection.from_url(shared.url, prefix=prefix)
    try:
        with anyio.fail_after(10):
            await conn.publish(sid, [message("in", 1)])
            with shared.admin(primary) as admin:
                admin.set(fence, 1, px=10_000)
                assert admin.exists(fence)  # on the run's primary, in the run's slot
            assert await conn.astate_ids() == [sid]
    finally:
        await conn.aclose()


def test_replicas_on_a_cluster_are_accepted_and_checked() -> None:
    """A cluster URL or a RedisCluster client takes replicas=N (no longer refused), and the settings
    are validated as on one server."""
    import redis.asyncio

    url = "redis+cluster://127.0.0.1:7000/0"
    assert "replicas=2" in repr(RedisPubSubConnection.from_url(url, replicas=2))
    assert "replicas=1" in repr(RedisPubSubConnection.from_url(f"{url}?replicas=1"))
    with pytest.raises(ConfigError, match="replicas must be an int of at least 0"):
        RedisPubSubConnection.from_url(url, replicas=-1)
    with pytest.raises(ConfigError, match="shorter than socket_timeout"):
        RedisPubSubConnection.from_url(url, replicas=1, replica_timeout=2.0, socket_timeout=1.0)
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=7000, socket_timeout=0.5)
    assert "replicas=1" in repr(RedisPubSubConnection(client, replicas=1, replica_timeout=0.2))
    with pytest.raises(ConfigError, match="shorter than socket_timeout"):
        RedisPubSubConnection(client, replicas=1, replica_timeout=1.0)


class TestReplicatedClusterConnection(ConnectionSuite):
    """The conformance suite on the cluster with replicas=1: every durable write waits for the
    replica of its run's primary."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def connection(self, shared: RedisClusterServers, prefix: str) -> AsyncIterator[PubSubConnection]:
        conn = RedisPubSubConnection.from_url(shared.url, prefix=prefix, lease=5.0, replicas=1)
        try:
            yield conn
        finally:
            await conn.aclose()

    @pytest.fixture
    async def lease_connection(
        self, shared: RedisClusterServers, prefix: str
    ) -> AsyncIterator[PubSubConnection]:
        conn = RedisPubSubConnection.from_url(shared.url, prefix=prefix, lease=0.5, replicas=1)
        try:
            yield conn
        finally:
            await conn.aclose()
