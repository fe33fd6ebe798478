"""Durability across failover: ``RedisPubSubConnection(replicas=N)`` acknowledges a
write only once N replicas have it.

Each test runs a primary and a replica of its own (tests/redis_servers.py), which
it kills, freezes and promotes; the conformance suite runs once more with
``replicas=1``. asyncio only: redis-py has no trio support.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from redis_servers import CuttingProxy, RedisServer

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
from permflow.testing import ConnectionSuite

INPUTS = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica (in sync), of this test's own; stopped by pid afterwards."""
    primary = RedisServer()
    replica = RedisServer(replica_of=primary)
    try:
        primary.start()
        replica.start()
        yield primary, replica
    finally:
        replica.close()
        primary.close()


@asynccontextmanager
async def behind_a_proxy() -> AsyncIterator[tuple[RedisServer, RedisServer, CuttingProxy]]:
    """A primary and its replica (in sync) whose replication link runs through a proxy that can
    ``hold`` it; on leaving, the proxy stops (dropping what it held) and both servers stop by pid."""
    primary = RedisServer()
    proxy = CuttingProxy(0)
    replica: RedisServer | None = None
    try:
        primary.start()
        proxy.target_port = primary.port
        async with anyio.create_task_group() as tg:
            await tg.start(proxy.serve)
            replica = RedisServer(replica_of=proxy.port)
            await anyio.to_thread.run_sync(replica.start)  # the proxy forwards the sync meanwhile
            try:
                yield primary, replica, proxy
            finally:
                tg.cancel_scope.cancel()
    finally:
        if replica is not None:
            replica.close()
        primary.close()


def message(topic: str, value: Any) -> Message:
    return Message(topic, value, "s", time.time())


async def publish_inputs(conn: RedisPubSubConnection, state_id: str, count: int) -> list[Delivery]:
    """Register process ``p`` on topic ``in``, publish ``count`` inputs and fetch them all for owner ``o``."""
    await conn.register(state_id, [Subscription("p", "in")])
    await conn.publish(state_id, [message("in", k) for k in range(count)])
    return await conn.fetch(state_id, "p", owner="o")


@pytest.mark.anyio
async def test_a_failover_loses_no_acknowledged_commit() -> None:
    """With replicas=1, under a load of concurrent commits, a replica that falls behind and a SIGKILLed
    primary, every acknowledged commit is on the promoted replica, once, and resuming there redelivers
    exactly the inputs whose commit was not stored."""
    acked: list[int] = []
    failed: list[Exception] = []
    enough, settled = anyio.Event(), anyio.Event()
    held_back: list[bool] = []
    async with behind_a_proxy() as (primary, replica, proxy):
        conn = RedisPubSubConnection.from_url(primary.url, prefix="failover", replicas=1, replica_timeout=1.0)
        try:
            with anyio.fail_after(30):
                deliveries = await publish_inputs(conn, "s", INPUTS)
                assert len(deliveries) == INPUTS

                async def commit_all(mine: list[Delivery]) -> None:
                    for delivery in mine:
                        value = delivery.messages[0].value
                        try:
                            await conn.commit(delivery, [message("out", value)], owner="o")
                        except ConnectionFailedError as exc:
                            failed.append(exc)
                            settled.set()
                            return
                        acked.append(value)
                        if len(acked) == INPUTS // 3:
                            enough.set()
                        if held_back:
                            settled.set()

                async with anyio.create_task_group() as tg:
                    for k in range(8):  # eight committers: their commits share pipelines and WAITs
                        tg.start_soon(commit_all, deliveries[k::8])
                    await enough.wait()
                    proxy.hold()  # the replica falls behind: what the primary stores now, it lacks
                    held_back.append(True)
                    await settled.wait()  # a commit since was acknowledged, or failed
                    primary.kill()  # commits are on the wire: some stored, some not, some unanswered
        finally:
            await conn.aclose()
        replica.promote()
        survivor = RedisPubSubConnection.from_url(replica.url, prefix="failover")
        try:
            with anyio.fail_after(30):
                log = await survivor.apeek("s")
                await survivor.release("s", "o")  # hand back what the dead primary's client held
                again = await survivor.fetch("s", "p", owner="resume")
        finally:
            await survivor.aclose()
    assert failed, "every commit finished before the kill: nothing was in flight"
    assert proxy.held, "the replica never fell behind"
    inputs = [m.value for m in log if m.topic == "in"]
    outputs = [m.value for m in log if m.topic == "out"]
    assert inputs == list(range(INPUTS)), "an acknowledged publish was lost"
    assert sorted(outputs) == sorted(set(outputs)), "an output was stored twice"
    lost = set(acked) - set(outputs)
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged commits were lost in the failover"
    assert len(outputs) < INPUTS, "the replica had every commit: the failover lost nothing to test with"
    rerun = sorted(d.messages[0].value for d in again)
    assert not set(rerun) & set(acked), "resuming re-runs a step whose commit was acknowledged"
    assert sorted(rerun + outputs) == list(range(INPUTS)), "an input is neither committed nor redelivered"


@pytest.mark.anyio
async def test_a_frozen_replica_fails_replicated_commits_only(pair: tuple[RedisServer, RedisServer]) -> None:
    """With the replica frozen, a replicas=0 commit returns, a replicas=1 commit raises ReplicationError
    within replica_timeout (stored on the primary all the same), and commits succeed once it thaws."""
    primary, replica = pair
    plain = RedisPubSubConnection.from_url(primary.url, prefix="frozen")
    waiting = RedisPubSubConnection.from_url(primary.url, prefix="frozen", replicas=1, replica_timeout=0.5)
    try:
        with anyio.fail_after(30):
            first, second, third = await publish_inputs(waiting, "s", 3)
            replica.freeze()
            try:
                assert await plain.commit(first, [message("out", "plain")], owner="o")
                with anyio.fail_after(5), pytest.raises(ReplicationError) as caught:
                    await waiting.commit(second, [message("out", "waited")], owner="o")
            finally:
                replica.thaw()
            stored = [m.value for m in await plain.apeek("s") if m.topic == "out"]
            assert await waiting.commit(third, [message("out", "thawed")], owner="o")
    finally:
        await plain.aclose()
        await waiting.aclose()
    error = caught.value
    assert isinstance(error, ConnectionFailedError)
    assert (error.acknowledged, error.replicas) == (0, 1)
    text = str(error)
    assert "0 of 1 replica acknowledged within replica_timeout=0.5s" in text
    assert "committing for process 'p' of state id 's'" in text
    assert "stored on the primary" in text and "failover" in text and "invoke(None" in text
    assert stored == ["plain", "waited"], "the commit that raised is stored on the primary"


@pytest.mark.anyio
async def test_a_lagging_replica_loses_what_replicas_0_acknowledged() -> None:
    """The contrast: with the replica lagging (its link held back by a proxy), a replicas=0 commit is
    acknowledged and then lost by a failover, while a replicas=1 commit raises ReplicationError instead
    of being acknowledged."""
    async with behind_a_proxy() as (primary, replica, proxy):
        plain = RedisPubSubConnection.from_url(primary.url, prefix="lag")
        waiting = RedisPubSubConnection.from_url(primary.url, prefix="lag", replicas=1, replica_timeout=0.5)
        try:
            with anyio.fail_after(30):
                first, second = await publish_inputs(waiting, "s", 2)  # on the replica
                proxy.hold()
                acknowledged = await plain.commit(first, [message("out", "plain")], owner="o")
                with pytest.raises(ReplicationError):
                    await waiting.commit(second, [message("out", "waited")], owner="o")
        finally:
            await plain.aclose()
            await waiting.aclose()
        primary.kill()  # what the proxy held back is gone with it
        replica.promote()
        survivor = RedisPubSubConnection.from_url(replica.url, prefix="lag")
        try:
            with anyio.fail_after(10):
                log = [(m.topic, m.value) for m in await survivor.apeek("s")]
        finally:
            await survivor.aclose()
    assert proxy.held > 0, "the primary sent the replica nothing to hold back"
    assert acknowledged is not None and [m.value for m in acknowledged] == ["plain"]
    assert log == [("in", 0), ("in", 1)], "the acknowledged replicas=0 commit was lost, as documented"


@pytest.mark.anyio
async def test_a_run_fails_with_replication_error_and_resumes(pair: tuple[RedisServer, RedisServer]) -> None:
    """A run whose commit is not replicated in time fails with ReplicationError; once the replica is
    back, resuming carries on from what the primary stored without running that step again."""
    primary, replica = pair
    runs: list[int] = []

    def step(x: int) -> int:
        runs.append(x)
        replica.freeze()  # its input is replicated; its commit will not be
        return x + 1

    mid = Topic("mid")
    conn = RedisPubSubConnection.from_url(primary.url, prefix="run", replicas=1, replica_timeout=0.5)
    pubsub = PubSub(
        Topic.IN.subscribe() | step | mid.publish(), mid.subscribe() | Topic.OUT.publish(), connection=conn
    )
    config = {"state_id": "r"}
    try:
        with anyio.fail_after(30):
            try:
                with pytest.raises(ReplicationError, match="while committing for process"):
                    await pubsub.ainvoke(1, config)
            finally:
                replica.thaw()
            assert await pubsub.ainvoke(None, config) == [2]
            stored = [(m.topic, m.value) for m in await conn.apeek("r")]
    finally:
        await conn.aclose()
    assert runs == [1], "the step ran again although its input was stored as published"
    assert stored == [("__in__", 1), ("mid", 2), ("__out__", 2)]


@pytest.mark.anyio
@pytest.mark.parametrize("marker", [b"WAIT", b"committed-2"], ids=["wait-reply-lost", "commit-reply-lost"])
async def test_a_lost_reply_is_resent_and_waited_for(
    pair: tuple[RedisServer, RedisServer], marker: bytes
) -> None:
    """A commit whose connection drops after Redis ran it (its reply, or WAIT's, lost) is sent again
    on a fresh connection, waited for there, and stored and returned once."""
    primary, _ = pair
    proxy = CuttingProxy(primary.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        conn = RedisPubSubConnection.from_url(proxy.url, prefix="cut", replicas=1, replica_timeout=2.0)
        try:
            with anyio.fail_after(20):
                first, second = await publish_inputs(conn, "s", 2)
                assert await conn.commit(first, [message("out", "committed-1")], owner="o")
                proxy.arm(marker, "reply")
                stored = await conn.commit(second, [message("out", "committed-2")], owner="o")
                log = [m.value for m in await conn.apeek("s") if m.topic == "out"]
        finally:
            await conn.aclose()
            tg.cancel_scope.cancel()
    assert proxy.fired.is_set(), "the proxy never cut the connection"
    assert stored is not None and [m.value for m in stored] == ["committed-2"]
    assert log == ["committed-1", "committed-2"]


@pytest.mark.anyio
async def test_a_lost_reply_is_not_taken_as_replicated(pair: tuple[RedisServer, RedisServer]) -> None:
    """A commit whose reply is lost while the replica is frozen raises ReplicationError: the WAIT on the
    fresh connection it is sent again on covers the write of the connection that dropped."""
    primary, replica = pair
    proxy = CuttingProxy(primary.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        conn = RedisPubSubConnection.from_url(proxy.url, prefix="fence", replicas=1, replica_timeout=0.5)
        try:
            with anyio.fail_after(20):
                (delivery,) = await publish_inputs(conn, "s", 1)
                replica.freeze()
                proxy.arm(b"committed-1", "reply")
                try:
                    with pytest.raises(ReplicationError):
                        await conn.commit(delivery, [message("out", "committed-1")], owner="o")
                finally:
                    replica.thaw()
                log = [m.value for m in await conn.apeek("s") if m.topic == "out"]
        finally:
            await conn.aclose()
            tg.cancel_scope.cancel()
    assert proxy.fired.is_set(), "the proxy never cut the connection"
    assert log == ["committed-1"]


@pytest.mark.anyio
async def test_a_restricted_user_needs_wait(pair: tuple[RedisServer, RedisServer]) -> None:
    """With replicas=1, a Redis user with permflow's ACL rule plus '+wait' works; without it, writes
    fail with ReplicationError saying the user needs '+wait'."""
    primary, _ = pair
    rule = "~{myapp:* ~{myapp}:* resetchannels -@all "
    rule += "+@scripting +@stream +@hash +@set +@string +@keyspace -@dangerous"
    with primary.admin() as admin:
        admin.execute_command("ACL", "SETUSER", "plain", "on", ">pw", *rule.split())
        admin.execute_command("ACL", "SETUSER", "waits", "on", ">pw", *rule.split(), "+wait")
    url = f"redis://{{}}:pw@127.0.0.1:{primary.port}/0"
    refused = RedisPubSubConnection.from_url(url.format("plain"), prefix="myapp", replicas=1)
    allowed = RedisPubSubConnection.from_url(url.format("waits"), prefix="myapp", replicas=1)
    try:
        with anyio.fail_after(10):
            with pytest.raises(ReplicationError, match=r"WAIT was refused \(.*permission.*needs '\+wait'"):
                await refused.publish("a", [message("in", 1)])
            assert await allowed.publish("b", [message("in", 1)])
    finally:
        await refused.aclose()
        await allowed.aclose()


@pytest.mark.anyio
async def test_the_url_query_sets_replicas() -> None:
    """``?replicas=1&replica_timeout=0.2`` in a URL is applied (a server without replicas then fails
    a publish with ReplicationError) and not passed on to redis-py."""
    server = RedisServer()
    try:
        server.start()
        conn = RedisPubSubConnection.from_url(f"{server.url}?replicas=1&replica_timeout=0.2", prefix="url")
        assert "replicas=1" in repr(conn)
        try:
            with anyio.fail_after(10), pytest.raises(ReplicationError, match="0 of 1 replica") as caught:
                await conn.publish("s", [message("in", 1)])
            assert [m.value for m in await conn.apeek("s")] == [1]  # stored on the primary
        finally:
            await conn.aclose()
    finally:
        server.close()
    assert "publishing to state id 's'" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"replicas": -1}, "replicas must be an int of at least 0"),
        ({"replicas": 1.5}, "replicas must be an int"),
        ({"replicas": True}, "replicas must be an int"),
        ({"replicas": "1"}, "replicas must be an int"),
        ({"replicas": 1, "replica_timeout": 0}, "replica_timeout must be a positive"),
        ({"replicas": 1, "replica_timeout": -1.0}, "replica_timeout must be a positive"),
        ({"replicas": 1, "replica_timeout": math.nan}, "replica_timeout must be a positive"),
        ({"replicas": 1, "replica_timeout": math.inf}, "replica_timeout must be a positive"),
        ({"replicas": 1, "replica_timeout": "1"}, "replica_timeout must be a positive"),
        ({"replicas": 1, "replica_timeout": 5.0}, r"shorter than socket_timeout \(5.0s\)"),
        ({"replicas": 1, "replica_timeout": 2.0, "socket_timeout": 1.0}, "shorter than socket_timeout"),
    ],
)
def test_bad_replica_settings_are_refused(options: dict[str, Any], match: str) -> None:
    """Invalid ``replicas`` / ``replica_timeout`` values raise ConfigError naming the argument."""
    with pytest.raises(ConfigError, match=match):
        RedisPubSubConnection.from_url("redis://127.0.0.1:6379/0", **options)


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("replicas=one", "replicas in the Redis URL must be an int"),
        ("replica_timeout=soon", "must be a number"),
    ],
)
def test_bad_replica_settings_in_the_url_are_refused(query: str, match: str) -> None:
    """A URL's ``replicas`` / ``replica_timeout`` that are not numbers raise ConfigError."""
    with pytest.raises(ConfigError, match=match):
        RedisPubSubConnection.from_url(f"redis://127.0.0.1:6379/0?{query}")


def test_without_replicas_the_socket_timeout_is_free() -> None:
    """With replicas=0 (the default), a socket_timeout below replica_timeout is fine: nothing waits."""
    conn = RedisPubSubConnection.from_url("redis://127.0.0.1:6379/0", socket_timeout=0.5)
    assert "replicas" not in repr(conn)


def test_a_client_you_pass_in_is_checked_too() -> None:
    """``RedisPubSubConnection(client, replicas=...)`` validates like ``from_url``, against the
    client's own socket timeout."""
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5)
    with pytest.raises(ConfigError, match="replicas must be an int"):
        RedisPubSubConnection(client, replicas=-2)
    with pytest.raises(ConfigError, match="shorter than socket_timeout"):
        RedisPubSubConnection(client, replicas=1, replica_timeout=1.0)
    assert "replicas=2" in repr(RedisPubSubConnection(client, replicas=2, replica_timeout=0.1))


@pytest.fixture(scope="module")
def replicated() -> Iterator[RedisServer]:
    """A primary with one replica, shared by the conformance suite below (a prefix per test)."""
    primary = RedisServer()
    replica = RedisServer(replica_of=primary)
    try:
        primary.start()
        replica.start()
        yield primary
    finally:
        replica.close()
        primary.close()


class TestReplicatedRedisConnection(ConnectionSuite):
    """The conformance suite with replicas=1: every durable write waits for the replica."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def connection(self, replicated: RedisServer) -> AsyncIterator[PubSubConnection]:
        conn = RedisPubSubConnection.from_url(
            replicated.url, prefix=f"suite-{uuid.uuid4().hex[:8]}", lease=5.0, replicas=1
        )
        try:
            yield conn
        finally:
            await conn.aclose()

    @pytest.fixture
    async def lease_connection(self, replicated: RedisServer) -> AsyncIterator[PubSubConnection]:
        conn = RedisPubSubConnection.from_url(
            replicated.url, prefix=f"suite-{uuid.uuid4().hex[:8]}", lease=0.5, replicas=1
        )
        try:
            yield conn
        finally:
            await conn.aclose()
