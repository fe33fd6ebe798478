"""Shared fixtures: async backends, retry waits off, and a real Redis server.

Redis is found in this order: ``PERMFLOW_TEST_REDIS_URL``; a server on
127.0.0.1:6379; a throwaway ``redis-server`` started on a free port (if the
binary is on PATH). Under ``CI=true`` a missing Redis fails the tests that
need it; elsewhere they are skipped with the reason.

``store_url`` runs a test twice: on that server and on a real Redis Cluster of
three primaries that the session starts (``redis-server`` and ``redis-cli``
from PATH; under ``CI=true`` missing ones are a failure, never a skip).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from permflow._retry import set_retry_waits


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True, scope="session")
def _no_retry_waits() -> Iterator[None]:
    set_retry_waits(False)
    yield
    set_retry_waits(True)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server for this test session."""
    url = os.environ.get("PERMFLOW_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "no Redis: set PERMFLOW_TEST_REDIS_URL, run one on 127.0.0.1:6379, or install redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="permflow-redis-")
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _reachable("127.0.0.1", port):
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail(f"could not start redis-server on port {port}")
        time.sleep(0.05)  # waiting for an external server to listen, not synchronising tests
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A real Redis Cluster of three primaries for this test session."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        reason = "no Redis Cluster: install redis-server and redis-cli (the redis-server package has both)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from redis_servers import RedisClusterServers

    cluster = RedisClusterServers(masters=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of one Redis server, then of a Redis Cluster (``redis+cluster://``)."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test shares; its keys are removed afterwards."""
    import redis

    prefix = f"permflow-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{{{prefix}:*", count=1000))
        keys += client.scan_iter(match=f"{prefix}:cache:*", count=1000)  # cached step results
        keys += [f"{{{prefix}}}:{name}" for name in ("stops", "workers")]  # of workers
        if keys:
            client.delete(*keys)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    """A plain async redis client on the test server, to look at and tamper with keys."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every exchange with Redis from now on: the scripts each one carried."""
    from permflow.connections.redis._client import Bound

    trips: list[list[str]] = []
    original = Bound._write_read

    async def counted(self: Bound, calls: list[Any], *args: Any, **kwargs: Any) -> None:
        trips.append([name for name, _, _ in calls])
        await original(self, calls, *args, **kwargs)

    monkeypatch.setattr(Bound, "_write_read", counted)
    return trips


@pytest.fixture
async def redis_conn(redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    """A Redis connection on the test server under the test's prefix (lease 5 s)."""
    from permflow import RedisPubSubConnection

    conn = RedisPubSubConnection.from_url(redis_url, prefix=redis_prefix, lease=5.0)
    try:
        yield conn
    finally:
        await conn.aclose()
